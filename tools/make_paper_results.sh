#!/usr/bin/env bash
# Copies the tables of the paper-scale sweep (examples/sweep_paper.toml) into
# docs/results/paper/: sweep.md (means with 95% intervals, paired tests against FlexP-SFL) and,
# per setting, comparison.md / .svg / .csv. docs/results.md quotes them.
#
# usage: tools/make_paper_results.sh SWEEP_OUT   (the sweep's `out` folder, after
#        `flexp-run sweep examples/sweep_paper.toml` finished; the report is re-rendered first)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: tools/make_paper_results.sh SWEEP_OUT}
[ -f "$src/sweep.md" ] || { echo "error: $src/sweep.md not found (run the sweep first)" >&2; exit 1; }
dest=$root/docs/results/paper
mkdir -p "$dest"
# Run folders are named relative to the sweep's folder, not by this machine's absolute path.
abs=$(cd "$src" && pwd)
strip() { sed -e "s|$abs/||g" -e "s|$src/||g" "$1" > "$2"; }
strip "$src/sweep.md" "$dest/sweep.md"
for d in "$src"/partition-*/; do
  name=$(basename "$d")
  mkdir -p "$dest/$name"
  for f in comparison.md comparison.csv; do
    [ -f "$d/$f" ] && strip "$d/$f" "$dest/$name/$f"
  done
  [ -f "$d/comparison.svg" ] && cp "$d/comparison.svg" "$dest/$name/comparison.svg"
done
echo "copied the sweep's tables into $dest"
