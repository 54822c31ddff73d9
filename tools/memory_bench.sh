#!/usr/bin/env bash
# Peak RSS of `flexp-run train` against the number of simulated clients, and the per-client
# slope next to what it should be: each client's personal LoRA adapters plus two AdamW moments
# (3 x 4 bytes per parameter) for its planned blocks. Only 10 clients train per round
# (client_fraction = 10/N), so activation memory stays the same and the slope is per-client
# state alone.
#
# usage: tools/memory_bench.sh [N ...]        (default: 10 100 1000; needs the MiniLM checkpoint
#        and the Rotten Tomatoes data: tools/fetch_minilm.sh, tools/fetch_rotten_tomatoes.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10 100 1000)
cargo build --release --quiet
bin=target/release/flexp-run
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '| clients | peak RSS (MB) | wall (s) | adapter + AdamW bytes per client (MB) |\n|---:|---:|---:|---:|\n'
prev_n=""; prev_rss=""; first_n=""; first_rss=""; last_state=""
for n in "${counts[@]}"; do
  frac=$(python3 -c "print(min(1.0, 10/$n))")
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$tmp/rss" "$bin" --quiet --backend cpu train --config examples/rotten_tomatoes.toml \
    --set clients="$n" --set client_fraction="$frac" --set rounds=1 --set local_steps=1 \
    --set data.max_examples=0 --set eval.global_max=5 --set partition='"iid"' \
    --set checkpoint_every=0 --set out="\"$tmp/run$n\"" > "$tmp/log$n" 2>&1
  end=$(date +%s.%N)
  rss_kb=$(tail -n 1 "$tmp/rss")
  # Expected per-client state from the plan: sum over clients of 12 bytes x adapter params of
  # its blocks (rank-r LoRA on every target of a block), divided by the number of clients.
  state=$(python3 - "$tmp/run$n" models/all-MiniLM-L6-v2/config.json <<'PY'
import json, sys, pathlib, tomllib
run = pathlib.Path(sys.argv[1])
splits = json.loads((run / "plan.json").read_text())["splits"]
cfg = tomllib.loads((run / "config.toml").read_text())
mc = json.loads(pathlib.Path(sys.argv[2]).read_text())
r = int(cfg.get("lora", {}).get("rank", 8))
d, ff = mc["hidden_size"], mc["intermediate_size"]
targets = cfg.get("lora", {}).get("targets") or ["q", "k", "v", "o", "up", "down"]
shape = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, ff), "down": (ff, d)}
per_block = sum(r * (a + b) for t, (a, b) in shape.items() if t in targets)
# adapters + AdamW m and v, f32
print(f"{12 * per_block * sum(splits) / len(splits) / 1e6:.2f}")
PY
)
  printf '| %d | %.0f | %.1f | %s |\n' "$n" "$(echo "$rss_kb/1024" | bc -l)" "$(echo "$end-$start" | bc -l)" "$state"
  if [ -z "$first_n" ]; then first_n=$n; first_rss=$rss_kb; fi
  prev_n=$n; prev_rss=$rss_kb; last_state=$state
done
if [ "$prev_n" != "$first_n" ]; then
  slope=$(echo "($prev_rss - $first_rss) / 1024 / ($prev_n - $first_n)" | bc -l)
  printf '\nmeasured slope: %.2f MB per client; expected adapter + AdamW state: %s MB per client\n' "$slope" "$last_state"
fi
