#!/usr/bin/env bash
# The GPU check, in two halves, for the day a GPU machine is lent (it may have no Rust toolchain
# and no NVRTC 12, so everything it runs is built here and carried):
#
#   bash tools/gpu_check.sh prepare   # here: builds, strips and collects into .gpu-check/ (< 60 MiB)
#   bash tools/gpu_check.sh run       # there: runs what prepare collected
#
# `run` executes every CUDA test binary on the real GPU (FLEXP_CUDA_TESTS=gpu: the tests that
# compare the CUDA backend with the CPU backend, and the tensor-core probes with the PTX ISA's
# fragment tables, now check the hardware), the kernel benchmark (achieved TFLOP/s and GB/s next
# to each kernel's roofline bound) and the training round on MiniLM-shaped random weights at 1,
# 16 and 64 clients against PyTorch + peft on the same GPU (tools/torch_reference/flexp_round.py,
# sequential and batched), then writes gpu_check.json and gpu_check.md into $OUT (or
# ./gpu-check-out), and the round on a ~1B Llama-shaped decoder (flexp only: the torch reference
# is BERT only) with its model FLOP utilisation. Kernels
# come precompiled to PTX for compute_80 and compute_90 (FLEXP_PTX_DIR), so no NVRTC is needed.
# Budget: about 6 minutes on an H100; each step has its own timeout.
#
# With the `device` tool: run(command="bash tools/gpu_check.sh run", carry=[".gpu-check"],
# timeout_s=540), after `bash tools/gpu_check.sh prepare` here.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
pack=.gpu-check
# The test binaries that take their backend from CudaBackend::for_tests().
tests=(cuda_tensor_core_isa cuda_dense bf16 cuda_lora cuda_lora_sgmv cuda_attention cuda_attn_flash cuda_align cuda_round cuda_gguf)

prepare() {
  set -e
  bash tools/fetch_cuda_tools.sh >/dev/null
  rm -rf "$pack"
  mkdir -p "$pack/bin" "$pack/ptx"
  # Test and bench executables as cargo reports them (its JSON messages), stripped into the pack.
  collect() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["bench"]):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
      strip --strip-debug -o "$pack/bin/$name" "$exe"
    done
  }
  local args=()
  for t in "${tests[@]}"; do args+=(--test "$t"); done
  # The tests in the test profile (optimised, as CI runs them); the kernel bench in release.
  cargo test --no-run --message-format=json "${args[@]}" 2>/dev/null | collect
  cargo build --release --bench cuda_kernels --bin flexp-run --message-format=json 2>/dev/null | collect
  strip --strip-debug -o "$pack/bin/flexp-run" target/release/flexp-run
  for arch in compute_80 compute_90; do
    "$pack/bin/flexp-run" ptx --arch "$arch" --out "$pack/ptx" >/dev/null
  done
  for t in "${tests[@]}" cuda_kernels flexp-run; do
    [ -x "$pack/bin/$t" ] || { echo "error: $t was not built" >&2; exit 1; }
  done
  local bytes
  bytes=$(du -sb "$pack" | cut -f1)
  if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
    echo "error: $pack holds $bytes bytes; the device tool carries 64 MiB with the tree" >&2
    exit 1
  fi
  echo "prepared $pack: $(ls "$pack/bin" | wc -l) binaries, $(ls "$pack/ptx" | wc -l) PTX files, $((bytes / 1024 / 1024)) MiB"
}

run_check() {
  local out=${OUT:-$root/gpu-check-out}
  mkdir -p "$out"
  [ -d "$pack/bin" ] || { echo "error: no $pack; run 'bash tools/gpu_check.sh prepare' first" >&2; exit 1; }
  export FLEXP_CUDA_TESTS=gpu FLEXP_PTX_DIR="$root/$pack/ptx" FLEXP_REPO_ROOT="$root"
  local device
  device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  echo "device: ${device:-unknown}"
  local rows=() json_tests=()
  for t in "${tests[@]}"; do
    local start end rc
    start=$(date +%s.%N)
    timeout 150 "$pack/bin/$t" --test-threads=4 >"$out/$t.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    local secs summary
    secs=$(python3 -c "print(f'{$end - $start:.1f}')")
    summary=$(grep -E '^test result' "$out/$t.log" | tail -1)
    echo "$t: rc=$rc ${secs}s $summary"
    rows+=("| $t | $([ $rc -eq 0 ] && echo pass || echo "FAIL ($rc)") | $secs | ${summary#test result: } |")
    json_tests+=("{\"test\": \"$t\", \"rc\": $rc, \"seconds\": $secs}")
  done
  timeout 180 "$pack/bin/cuda_kernels" >"$out/cuda_kernels.log" 2>&1
  echo "cuda_kernels: rc=$?"
  # A MiniLM-shaped BERT with random weights (the real checkpoint is too large to carry), written
  # by the machine's own transformers; timings do not depend on the weights' values.
  local model=/tmp/flexp-minilm-random
  python3 - "$model" >"$out/model.log" 2>&1 <<'PY'
import sys
from transformers import BertConfig, BertModel
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512)
BertModel(cfg, add_pooling_layer=False).save_pretrained(sys.argv[1])
PY
  # The training round at 1, 16 and 64 clients: flexp (f32; bf16 on the tensor cores) against
  # PyTorch + peft on the same GPU, clients one after another and server side batched
  # (tools/torch_reference/flexp_round.py), the same sizes and random data as `flexp-run bench`.
  local rounds=() cmp_rows=()
  tps() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))' 2>/dev/null || echo failed; }
  for c in 1 16 64; do
    local f32 bf16 tseq tseqb tbat
    f32=$(timeout 120 "$pack/bin/flexp-run" bench --backend cuda --model "$model" --clients $c --quiet 2>>"$out/round.log" | tail -1)
    bf16=$(timeout 120 "$pack/bin/flexp-run" bench --backend cuda --model "$model" --clients $c --precision bf16 --quiet 2>>"$out/round.log" | tail -1)
    local targs="--model $model --clients $c --batch 8 --seq 64 --steps 2 --rank 8 --split 2,3,4 --threads 8 --device cuda"
    tseq=$(timeout 150 python3 tools/torch_reference/flexp_round.py $targs 2>>"$out/torch.log" | tail -1)
    tseqb=$(timeout 150 python3 tools/torch_reference/flexp_round.py $targs --precision bf16 2>>"$out/torch.log" | tail -1)
    tbat=$(timeout 150 python3 tools/torch_reference/flexp_round.py $targs --precision bf16 --variant batched 2>>"$out/torch.log" | tail -1)
    rounds+=("${f32:-null}" "${bf16:-null}" "${tseq:-null}" "${tseqb:-null}" "${tbat:-null}")
    cmp_rows+=("| $c | $(echo "$f32" | tps) | $(echo "$bf16" | tps) | $(echo "$tseq" | tps) | $(echo "$tseqb" | tps) | $(echo "$tbat" | tps) |")
    echo "round, $c clients: ${cmp_rows[-1]}"
  done
  # A ~1B Llama-shaped decoder (20 blocks of hidden 2048, GQA 32/8 heads of 64; random weights,
  # bf16 file; tried on a small twin with the CPU and the emulator) at 16 clients: flexp alone
  # (the torch reference is BERT only), with model FLOP utilisation = tokens/s x 4 x block
  # parameters (forward plus the input gradient; the frozen base has no weight gradient) over
  # 989 TFLOP/s.
  local llama=/tmp/flexp-llama-1b params llama_rows=()
  params=$(python3 - "$llama" 2>>"$out/model.log" <<'PY'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512,
                  tie_word_embeddings=False)
m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(sys.argv[1])
# The blocks' parameters: the products a token runs through (embedding lookups are not FLOPs,
# and the classifier replaces the LM head).
print(sum(p.numel() for p in m.model.layers.parameters()))
PY
)
  for prec in f32 bf16; do
    local line
    line=$(timeout 240 "$pack/bin/flexp-run" bench --backend cuda --model "$llama" --clients 16 --precision $prec --quiet 2>>"$out/round.log" | tail -1)
    local t mfu
    t=$(echo "$line" | tps)
    mfu=$(python3 -c "print(f'{100 * $t * 4 * ${params:-0} / 989e12:.1f}%')" 2>/dev/null || echo "-")
    llama_rows+=("| $prec | $t | $mfu |")
    rounds+=("${line:-null}")
    echo "llama 1b, 16 clients, $prec: $t tokens/s, MFU $mfu"
  done
  {
    echo "# GPU check, $(date -u +%Y-%m-%d) on ${device:-unknown}"
    echo
    echo "| test binary | result | seconds | counts |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo '## Kernels (cuda_kernels)'
    echo
    echo '```'
    cat "$out/cuda_kernels.log"
    echo '```'
    echo
    echo '## Training round, tokens/s (MiniLM shape, random weights; batch 8, seq 64, 2 steps, rank 8, cuts 2,3,4)'
    echo
    echo '| clients | flexp f32 | flexp bf16 (tensor cores) | torch+peft sequential f32 | torch+peft sequential bf16 autocast | torch+peft batched bf16 autocast |'
    echo '|---:|---:|---:|---:|---:|---:|'
    printf '%s\n' "${cmp_rows[@]}"
    echo
    echo "## ~1B Llama-shaped decoder (${params:-?} block parameters, random weights), 16 clients"
    echo
    echo '| precision | tokens/s | model FLOP utilisation |'
    echo '|---|---:|---:|'
    printf '%s\n' "${llama_rows[@]}"
  } >"$out/gpu_check.md"
  {
    echo "{\"device\": \"${device:-unknown}\", \"tests\": [$(IFS=,; echo "${json_tests[*]}")],"
    echo " \"rounds\": [$(IFS=,; echo "${rounds[*]}")]}"
  } >"$out/gpu_check.json"
  # Logs beyond the summary stay under $OUT only as far as the device tool brings files back.
  tar -czf "$out/logs.tar.gz" -C "$out" $(cd "$out" && ls *.log) 2>/dev/null
  rm -f "$out"/*.log
  echo "wrote $out/gpu_check.md and $out/gpu_check.json"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run_check ;;
  *) echo "usage: bash tools/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
