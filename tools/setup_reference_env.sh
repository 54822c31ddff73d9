#!/usr/bin/env bash
# Create the dev-time Python environment used to (re)generate the reference
# fixtures under tests/fixtures/. The Rust tests never need it.
#
# Usage: tools/setup_reference_env.sh [VENV_DIR]   (default: <repo>/.venv-ref)
set -euo pipefail

usage() { echo "usage: $0 [VENV_DIR]   (default: <repo root>/.venv-ref)" >&2; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [ "$#" -gt 1 ]; then usage; exit 2; fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-ref}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
# Versions the committed fixtures were generated with (see tools/README.md).
"$venv/bin/python" -m pip install \
  "torch==2.15.0" \
  "transformers==5.23.0" \
  "sentence-transformers==6.2.0" \
  "safetensors==0.8.0" \
  "numpy==2.4.6" \
  "tokenizers==0.23.3" \
  "huggingface_hub==2.4.0"

"$venv/bin/python" -c 'import torch, transformers, sentence_transformers, safetensors, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", sentence_transformers.__version__)'
echo "reference env ready: $venv"
echo "  $venv/bin/python tools/gen_fixtures.py"
echo "  HF_HUB_OFFLINE=1 $venv/bin/python tools/gen_minilm_reference.py MODEL_DIR"
