#!/usr/bin/env bash
# The Python package's tests: makes a virtual environment (.venv-python, reused when present),
# installs ./python into it as a user would (`pip install ./python`, which builds the Rust
# extension with maturin) and Flower, and runs pytest on python/tests (the package, and the Flower
# app of examples/flower on Flower's simulation engine and as a SuperLink + SuperNodes deployment). Needs the assets of the README's
# test command (MiniLM, SmolLM2) and a flexp-run binary (`cargo build` or `cargo test` first;
# or FLEXP_RUN=path).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv-python"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "./python[test]"
# The Flower app's tests (python/tests/test_flower.py) run Flower itself, pinned as the app pins it.
"$venv/bin/python" -m pip install --quiet "flwr[simulation]==1.42.0"
[ -n "${FLEXP_RUN:-}" ] || [ -x target/debug/flexp-run ] || cargo build --quiet --bin flexp-run
# From the repository root, so the source folder python/flexp does not shadow the installed
# package (which holds the compiled extension).
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider
