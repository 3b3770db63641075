#!/usr/bin/env bash
# Build the sweeps of this folder (attn_sweep.cu, gemv_sweep.cu, qgemv_sweep.cu) with the
# project's pinned nvcc (scripts/setup-cuda.sh) into .gpu/: sm_90 SASS, static cudart, so
# the GPU host needs only its driver. Run there: .gpu/NAME [quick] | tee $OUT/sweep.txt.
# Usage: build.sh [attn_sweep|gemv_sweep|qgemv_sweep ...]   (default: all three)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
bash scripts/setup-cuda.sh >/dev/null
CUDA_HOME="$(echo "$ROOT"/.cuda-venv/lib/python3*/site-packages/nvidia/cu13)"
mkdir -p .gpu
for sweep in ${@:-attn_sweep gemv_sweep qgemv_sweep}; do
    "$CUDA_HOME/bin/nvcc" -std=c++17 -O3 -lineinfo -gencode arch=compute_90,code=sm_90 -Xptxas -v \
        -I crates/cuda/kernels "crates/cuda/dev/$sweep.cu" -o ".gpu/$sweep" -L "$CUDA_HOME/lib" -lpthread -Xcompiler -static-libstdc++,-static-libgcc \
        2> >(grep -E 'error|warning|spill' | grep -v ' 0 bytes spill' >&2 || true)
    echo "built .gpu/$sweep"
done
