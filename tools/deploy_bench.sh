#!/usr/bin/env bash
# What the network path costs: the same FlexP-SFL run as one simulated process (`train`) and as a
# loopback deployment (`serve` + N `client` processes over mutual TLS), with f32 and with bf16
# frames, timed end to end (model loading included, every process's). Prints a markdown table
# for docs/performance.md.
#
#   bash tools/deploy_bench.sh [CLIENTS] [ROUNDS]
#
# Needs models/all-MiniLM-L6-v2 (bash tools/fetch_minilm.sh) and a release build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
clients=${1:-8}
rounds=${2:-3}
bin=target/release/flexp-run
[ -x "$bin" ] || cargo build --release --bin flexp-run >/dev/null
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$work/data.csv" <<'PY'
import csv, sys
words = {"pos": ["great", "wonderful", "brilliant", "moving"], "neg": ["awful", "boring", "terrible", "dull"]}
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["review", "label"])
    for i in range(960):
        label = "pos" if i % 2 == 0 else "neg"
        ws = words[label]
        w.writerow([f"a {ws[i % 4]} film, truly {ws[(i // 2) % 4]}, scene {i}", label])
PY

sets=(--set "model=\"$root/models/all-MiniLM-L6-v2\"" --set "data.path=\"$work/data.csv\""
      --set 'data.text_column="review"' --set 'data.label_column="label"' --set 'partition="iid"'
      --set "clients=$clients" --set "rounds=$rounds" --set local_steps=2 --set batch_size=8
      --set seq_len=32 --set lora.rank=8 --set 'split=[2]' --set eval_every=100
      --set eval.global_max=32 --set checkpoint_every=0)

now() { date +%s.%N; }
t0=$(now)
"$bin" --quiet train "${sets[@]}" --set "out=\"$work/sim\"" >/dev/null
t1=$(now)
sim=$(python3 -c "print(f'{$t1 - $t0:.1f}')")

"$bin" --quiet certs --clients "$clients" --out "$work/tls"
"$bin" --quiet partition "${sets[@]}" --out "$work/parts"

deploy() {  # $1 = wire element type
  local port out pids=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out="$work/run-$1"
  local s0 s1
  s0=$(now)
  "$bin" --quiet serve "${sets[@]}" --listen "127.0.0.1:$port" --tls "$work/tls" --out "$out" \
    --wire "$1" --join-timeout 120 >/dev/null 2>"$work/server-$1.log" &
  local server=$!
  for ((k = 0; k < clients; k++)); do
    "$bin" --quiet client --connect "127.0.0.1:$port" --tls "$work/tls" --id "$k" --wire "$1" \
      --data "$work/parts/client-$k.csv" --timeout 300 >/dev/null 2>"$work/client-$k-$1.log" &
    pids+=($!)
  done
  wait "$server"
  for p in "${pids[@]}"; do wait "$p"; done
  s1=$(now)
  python3 - "$out/report.json" "$(python3 -c "print(f'{$s1 - $s0:.1f}')")" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["clients"]
up = sum(x["bytes_received"] for x in c) / 1e6
down = sum(x["bytes_sent"] for x in c) / 1e6
lat = [x["step_latency_s_mean"] for x in c if x["step_latency_s_mean"] is not None]
print(f"| deployment, {sys.argv[3]} frames | {sys.argv[2]} | {up:.1f} | {down:.1f} | {1000 * sum(lat) / len(lat):.0f} |")
PY
}

echo "| run ($clients clients, $rounds rounds) | wall seconds | MB up | MB down | mean step latency (ms) |"
echo "|---|---:|---:|---:|---:|"
echo "| simulation (\`train\`) | $sim | - | - | - |"
deploy f32
deploy bf16
