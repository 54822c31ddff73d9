#!/usr/bin/env bash
# What the network path costs: the same FlexP-SFL run as one simulated process (`train`) and as a
# loopback deployment (`serve` + N `client` processes over mutual TLS), with f32 and with bf16
# frames. "End to end" counts every process from start to exit (model loading included);
# "training" is the run's own wall clock (report.json's wall_seconds: from the first round,
# once every client has joined, to the report). Prints a markdown table for docs/performance.md.
#
#   bash tools/deploy_bench.sh [CLIENTS] [ROUNDS]     (REPEATS=3 by default)
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
repeats=${REPEATS:-3}
results="$work/results.tsv"   # kind  end-to-end-s  training-s  MB-up  MB-down  lat-mean-ms  lat-p95-ms

"$bin" --quiet certs --clients "$clients" --out "$work/tls"
"$bin" --quiet partition "${sets[@]}" --out "$work/parts"

simulate() {
  local t0 t1 out="$work/sim-$1"
  t0=$(now)
  "$bin" --quiet train "${sets[@]}" --set "out=\"$out\"" >/dev/null 2>"$work/sim.log"
  t1=$(now)
  python3 - "$out/report.json" "$t0" "$t1" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"simulation\t{float(sys.argv[3]) - float(sys.argv[2]):.2f}\t{r['summary']['wall_seconds']:.2f}\t-\t-\t-\t-")
PY
}

deploy() {  # $1 = wire element type, $2 = repeat
  local port out pids=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  out="$work/run-$1-$2"
  local s0 s1
  s0=$(now)
  "$bin" --quiet serve "${sets[@]}" --listen "127.0.0.1:$port" --tls "$work/tls" --out "$out" \
    --wire "$1" --join-timeout 120 >/dev/null 2>"$work/server-$1.log" &
  local server=$!
  for ((k = 0; k < clients; k++)); do
    "$bin" --quiet --threads 1 client --connect "127.0.0.1:$port" --tls "$work/tls" --id "$k" --wire "$1" \
      --data "$work/parts/client-$k.csv" --global-test "$work/parts/global_test.csv" \
      --timeout 300 >/dev/null 2>"$work/client-$k-$1.log" &
    pids+=($!)
  done
  wait "$server"
  for p in "${pids[@]}"; do wait "$p"; done
  s1=$(now)
  python3 - "$out/report.json" "$s0" "$s1" "$1" >>"$results" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["clients"]
up = sum(x["wire_bytes_up"] for x in c) / 1e6
down = sum(x["wire_bytes_down"] for x in c) / 1e6
mean = sum(x["step_latency_s_mean"] for x in c) / len(c)
p95 = max(x["step_latency_s_p95"] for x in c)
wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"deployment, {sys.argv[4]} frames\t{wall:.2f}\t{r['summary']['wall_seconds']:.2f}\t{up:.1f}\t{down:.1f}\t{1000 * mean:.0f}\t{1000 * p95:.0f}")
PY
}

# Interleaved, in a rotating order, so drift in the machine's state (and whatever the run
# before leaves behind) spreads over all three kinds.
for ((i = 0; i < repeats; i++)); do
  case $((i % 3)) in
    0) simulate "$i"; deploy f32 "$i"; deploy bf16 "$i" ;;
    1) deploy f32 "$i"; deploy bf16 "$i"; simulate "$i" ;;
    2) deploy bf16 "$i"; simulate "$i"; deploy f32 "$i" ;;
  esac
done

python3 - "$results" "$clients" "$rounds" "$repeats" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    k, *v = line.rstrip("\n").split("\t")
    rows.setdefault(k, []).append(v)
print(f"| {sys.argv[2]} clients, {sys.argv[3]} rounds (median of {sys.argv[4]}; min-max) | end to end s | training s | MB up | MB down | step latency mean ms | p95 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
base = None
order = ["simulation", "deployment, f32 frames", "deployment, bf16 frames"]
for k, vs in sorted(rows.items(), key=lambda kv: order.index(kv[0])):
    cols = []
    for j in range(6):
        xs = [v[j] for v in vs]
        if xs[0] == "-":
            cols.append("-")
            continue
        f = [float(x) for x in xs]
        m = statistics.median(f)
        cols.append(f"{m:g} ({min(f):g}-{max(f):g})" if j < 2 else f"{m:g}")
    train = statistics.median(float(v[1]) for v in vs)
    if base is None:
        base = train
        rel = ""
    else:
        rel = f" ({100 * (train / base - 1):+.0f}%)"
    cols[1] += rel
    print(f"| {k} | " + " | ".join(cols) + " |")
PY
