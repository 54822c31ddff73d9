#!/usr/bin/env bash
# Create the venv for the PyTorch reference of tools/compare_torch.sh (flexp_round.py).
# Dev-time only: the Rust build and tests never need it.
#
# Usage: tools/torch_reference/setup.sh [VENV_DIR]   (default: tools/torch_reference/.venv)
# PYTHON=python3.X picks the interpreter the venv is made from (default python3).
#
# torch comes from the PyTorch CPU wheel index when it can be reached (a ~200 MB CPU-only
# build); otherwise from PyPI, whose Linux torch wheel is the CUDA build and pulls the nvidia-*
# runtime packages (several GB), which runs on the CPU just the same.
set -euo pipefail

usage() { echo "usage: $0 [VENV_DIR]   (default: tools/torch_reference/.venv)" >&2; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [ "$#" -gt 1 ]; then usage; exit 2; fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

TORCH_VERSION=2.15.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --upgrade pip

if "${pip[@]}" install --timeout 20 --retries 1 --index-url "$CPU_INDEX" "torch==$TORCH_VERSION"; then
  echo "torch $TORCH_VERSION: CPU build from $CPU_INDEX" >&2
else
  echo "torch $TORCH_VERSION: the CPU wheel index is not reachable; installing PyPI's build" >&2
  "${pip[@]}" install "torch==$TORCH_VERSION"
fi

# Versions flexp_round.py was written and measured with (see README.md).
"${pip[@]}" install \
  "torch==$TORCH_VERSION" \
  "transformers==5.23.0" \
  "peft==0.21.2" \
  "accelerate==1.15.0" \
  "safetensors==0.8.0" \
  "numpy==2.4.6" \
  "gguf==0.19.0"

"$venv/bin/python" -c 'import torch, transformers, peft, safetensors, numpy, gguf; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'
echo "torch reference env ready: $venv"
echo "  $venv/bin/python $here/flexp_round.py --model models/all-MiniLM-L6-v2 --clients 16 --batch 8 --seq 64 --steps 2 --rank 8 --split 2,3,4 --threads 2"
echo "  tools/compare_torch.sh    # ours vs this, side by side"
