#!/usr/bin/env bash
# Runs the experiment matrix behind docs/results/short.md on the real MiniLM checkpoint and Rotten
# Tomatoes: every algorithm x {dirichlet:0.5, column:movie_name} x 3 seeds, plus the FlexP-SFL
# ablation (align none / kl / proj, server_agg mean / proj, vanilla / U-shaped) on dirichlet:0.5.
# Runs that already have a report.json are skipped, so the script can be re-run after a stop.
# Then renders docs/results/short.md with tools/make_results.sh.
#
# usage: tools/run_results.sh [RUNS_DIR] [JOBS]   (defaults: runs/results, 2 parallel jobs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-runs/results}
jobs=${2:-2}
bash tools/fetch_minilm.sh >/dev/null
bash tools/fetch_rotten_tomatoes.sh >/dev/null
cargo build --release --quiet
bin=target/release/flexp-run

# The protocol: small enough for a 2-core machine, the same for every algorithm.
common=(--config examples/rotten_tomatoes.toml --set rounds=6 --set local_steps=3 --set eval_every=3 --set data.max_examples=2000
        --set eval.global_max=100 --set clients=10 --set batch_size=8 --set seq_len=64)

list=$(mktemp)
for seed in 0 1 2; do
  for part in dirichlet:0.5 column:movie_name; do
    tag=${part//:/-}
    for algo in flexp-sfl fedbip fedbip-l local fedavg sfl-v1 sfl-v2 pfedme ditto; do
      echo "$runs/$tag/$algo-s$seed|--set algorithm=\"$algo\" --set partition=\"$part\" --set seed=$seed" >> "$list"
    done
  done
  for v in "align-none|--set align=\"none\"" "align-kl|--set align=\"kl\"" \
           "agg-proj|--set server_agg=\"proj\"" "u-shaped|--set u_tail=1"; do
    echo "$runs/ablation/${v%%|*}-s$seed|--set algorithm=\"flexp-sfl\" --set partition=\"dirichlet:0.5\" --set seed=$seed ${v#*|}" >> "$list"
  done
done

run_one() {
  local out=${1%%|*} extra=${1#*|}
  [ -f "$out/report.json" ] && return 0
  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  local -a x
  read -ra x <<< "$extra"
  if "$bin" --quiet --threads 1 train "${common[@]}" "${x[@]}" --set "out=\"$out\"" > "$out.log" 2>&1; then
    echo "done: $out"
  else
    echo "FAILED: $out (see $out.log)"
  fi
}
while IFS= read -r line; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run_one "$line" &
done < "$list"
wait
rm -f "$list"
bash tools/make_results.sh "$runs"
