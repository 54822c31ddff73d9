#!/usr/bin/env bash
# Side-by-side throughput of one FlexP-SFL round: ours (`flexp-run bench`, CPU backend) against
# the PyTorch + transformers + peft reference (tools/torch_reference/flexp_round.py), same
# machine, same thread count, same sizes, runs interleaved (ours, torch-seq, torch-batched, ours,
# ...), then a markdown table: median tokens/s of the reps, min..max, and ours/torch.
#
# Usage: tools/compare_torch.sh [--model DIR] [--clients N] [--batch B] [--seq T] [--steps S]
#          [--rank R] [--split S1,S2,...] [--threads P] [--precision f32|bf16] [--reps K]
#          [--seed N] [--wait-idle SECONDS] [--no-build]
# Defaults: models/all-MiniLM-L6-v2, 16 clients, batch 8, seq 64, 2 steps, rank 8, split 2,3,4,
# 2 threads, f32, 3 reps. With --precision bf16 ours runs in bf16 and the torch rows are both
# f32 and bf16 autocast.
#
# The torch side needs the venv of tools/torch_reference/setup.sh (default
# tools/torch_reference/.venv); TORCH_PYTHON=/path/to/python picks another interpreter.
# --wait-idle SECONDS: before each run, wait up to SECONDS for a moment when other processes
# use less than 0.15 of a core (for a shared machine; the table's "other load" column says how
# busy the other processes kept the machine during each row's runs anyway).
# Dev-time only: nothing here is part of the Rust tests.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

model=models/all-MiniLM-L6-v2
clients=16
batch=8
seq=64
steps=2
rank=8
split=2,3,4
threads=2
precision=f32
reps=3
seed=0
build=1
wait_idle=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; }
need() { [ "$#" -ge 2 ] || { echo "compare_torch.sh: $1 needs a value" >&2; exit 2; }; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --model) need "$@"; model=$2; shift 2 ;;
    --clients) need "$@"; clients=$2; shift 2 ;;
    --batch) need "$@"; batch=$2; shift 2 ;;
    --seq) need "$@"; seq=$2; shift 2 ;;
    --steps) need "$@"; steps=$2; shift 2 ;;
    --rank) need "$@"; rank=$2; shift 2 ;;
    --split) need "$@"; split=$2; shift 2 ;;
    --threads) need "$@"; threads=$2; shift 2 ;;
    --precision) need "$@"; precision=$2; shift 2 ;;
    --reps) need "$@"; reps=$2; shift 2 ;;
    --seed) need "$@"; seed=$2; shift 2 ;;
    --wait-idle) need "$@"; wait_idle=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare_torch.sh: unknown argument $1" >&2; usage; exit 2 ;;
  esac
done
case "$precision" in f32|bf16) ;; *) echo "compare_torch.sh: --precision must be f32 or bf16" >&2; exit 2 ;; esac
case "$wait_idle" in ''|*[!0-9]*) echo "compare_torch.sh: --wait-idle takes whole seconds" >&2; exit 2 ;; esac
for v in clients batch seq steps rank threads reps; do
  case "${!v}" in ''|*[!0-9]*|0) echo "compare_torch.sh: --$v must be a positive integer" >&2; exit 2 ;; esac
done
[ -f "$model/config.json" ] || { echo "compare_torch.sh: no $model/config.json (tools/fetch_minilm.sh fetches MiniLM)" >&2; exit 2; }

py="${TORCH_PYTHON:-$repo_root/tools/torch_reference/.venv/bin/python}"
if ! "$py" -c 'import torch, transformers, peft' 2>/dev/null; then
  echo "compare_torch.sh: $py cannot import torch, transformers and peft;" >&2
  echo "  run tools/torch_reference/setup.sh (or set TORCH_PYTHON)" >&2
  exit 2
fi

if [ "$build" = 1 ]; then
  echo "== cargo build --release" >&2
  cargo build --release --bin flexp-run >&2
fi
ours_bin="$repo_root/target/release/flexp-run"
[ -x "$ours_bin" ] || { echo "compare_torch.sh: $ours_bin missing (drop --no-build)" >&2; exit 2; }

bench_help="$("$ours_bin" bench --help 2>&1 || true)"
ours_extra=()
if grep -q -- '--backend' <<<"$bench_help"; then ours_extra+=(--backend cpu); fi
if grep -q -- '--quiet' <<<"$bench_help"; then ours_extra+=(--quiet); fi
if grep -q -- '--precision' <<<"$bench_help"; then
  ours_extra+=(--precision "$precision")
elif [ "$precision" != f32 ]; then
  echo "compare_torch.sh: this flexp-run bench has no --precision" >&2; exit 2
fi

sizes=(--model "$model" --clients "$clients" --batch "$batch" --seq "$seq" --steps "$steps"
       --rank "$rank" --split "$split" --threads "$threads" --seed "$seed")

# the rows ("impl precision"), in the order they run within each rep
rows=("ours $precision")
if [ "$precision" = bf16 ]; then
  torch_rows=("torch-sequential f32" "torch-batched f32" "torch-sequential bf16" "torch-batched bf16")
else
  torch_rows=("torch-sequential f32" "torch-batched f32")
fi
rows+=("${torch_rows[@]}")

results="$(mktemp -t compare_torch.XXXXXX)"
errlog="$(mktemp -t compare_torch_err.XXXXXX)"
trap 'rm -f "$results" "$errlog"' EXIT

# Runs one command and appends "row<TAB>json<TAB>other" to $results, where other is how many
# cores other processes kept busy meanwhile: on a shared machine a busy neighbour makes a
# 2-thread run several times slower, so the table reports it.
run_py='
import json, os, resource, subprocess, sys
results, errlog, name = sys.argv[1:4]
cmd = sys.argv[4:]
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
b0, r0, t0 = busy(), resource.getrusage(resource.RUSAGE_CHILDREN), os.times().elapsed
with open(errlog, "w") as err:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
wall = max(os.times().elapsed - t0, 1e-9)
r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
mine = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
other = max(0.0, busy() - b0 - mine) / wall
if p.returncode != 0:
    sys.stderr.write("compare_torch.sh: %s failed (exit %d):\n%s" % (name, p.returncode, open(errlog).read()))
    sys.exit(1)
lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
if not lines:
    sys.stderr.write("compare_torch.sh: no JSON line from %s:\n%s" % (name, p.stdout))
    sys.exit(1)
d = json.loads(lines[-1])
with open(results, "a") as f:
    f.write("%s\t%s\t%.3f\n" % (name, lines[-1], other))
sys.stderr.write("   %-22s %9.1f tokens/s (%.2fs; other processes: %.2f cores)\n"
                 % (name, d["tokens_per_s"], d["seconds"], other))
'

wait_idle() {  # until other processes use < 0.15 core over 2 s, at most $wait_idle seconds
  [ "$wait_idle" -gt 0 ] || return 0
  python3 - "$wait_idle" <<'PY'
import os, sys, time
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
end = time.time() + float(sys.argv[1])
while True:
    b0 = busy(); time.sleep(2); load = (busy() - b0) / 2
    if load < 0.15 or time.time() > end:
        break
if load >= 0.15:
    sys.stderr.write("   (machine still busy: %.2f cores; running anyway)\n" % load)
PY
}

run_row() {  # $1 = row name ("ours f32", "torch-batched bf16", ...)
  local name=$1 impl prec
  wait_idle
  impl=${name% *}
  prec=${name##* }
  if [ "$impl" = ours ]; then
    python3 -c "$run_py" "$results" "$errlog" "$name" \
      "$ours_bin" bench "${sizes[@]}" "${ours_extra[@]}"
  else
    python3 -c "$run_py" "$results" "$errlog" "$name" \
      "$py" "$repo_root/tools/torch_reference/flexp_round.py" "${sizes[@]}" \
      --precision "$prec" --variant "${impl#torch-}"
  fi
}

for ((r = 1; r <= reps; r++)); do
  echo "== rep $r/$reps" >&2
  for name in "${rows[@]}"; do run_row "$name"; done
done

cpu="$( (grep -m1 'model name' /proc/cpuinfo 2>/dev/null || echo ': unknown') | sed 's/.*: //')"
torch_ver="$("$py" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")' 2>/dev/null)"
python3 - "$results" "$model" "$clients" "$batch" "$seq" "$steps" "$rank" "$split" \
  "$threads" "$reps" "$cpu" "$torch_ver" <<'PY'
import json, statistics, sys
(path, model, clients, batch, seq, steps, rank, split, threads, reps, cpu, torch_ver) = sys.argv[1:]
runs, others, order = {}, {}, []
for line in open(path):
    name, js, other = line.rstrip("\n").split("\t")
    if name not in runs:
        runs[name], others[name] = [], []
        order.append(name)
    runs[name].append(json.loads(js)["tokens_per_s"])
    others[name].append(float(other))
med = {n: statistics.median(v) for n, v in runs.items()}
ours = next(n for n in order if n.startswith("ours"))
tokens = int(clients) * int(steps) * int(batch) * int(seq)
print(f"FlexP-SFL round: `{model}`, {clients} clients, batch {batch}, seq {seq}, {steps} local "
      f"steps ({tokens} tokens), LoRA rank {rank} on q/v, split {split}, {threads} threads, "
      f"{reps} interleaved reps; {cpu} ({torch_ver})")
print()
print("| implementation | precision | tokens/s (median) | min..max | ours / this | other load |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for n in order:
    impl, prec = n.rsplit(" ", 1)
    label = "flexp (ours)" if impl == "ours" else impl
    if prec == "bf16" and impl != "ours":
        prec = "bf16 autocast"
    v = runs[n]
    ratio = "—" if n == ours else f"{med[ours] / med[n]:.2f}x"
    print(f"| {label} | {prec} | {med[n]:,.0f} | {min(v):,.0f}..{max(v):,.0f} | {ratio} "
          f"| {max(others[n]):.2f} |")
worst = max(max(o) for o in others.values())
print()
print("other load: the most cores other processes kept busy during one of the row's runs.")
if worst > 0.1:
    print(f"Warning: other processes kept up to {worst:.2f} cores busy during these runs; the "
          "numbers are perturbed, rerun on a quiet machine.")
PY
