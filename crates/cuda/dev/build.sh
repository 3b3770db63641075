#!/usr/bin/env bash
# Build a sweep of this folder (NAME.cu: attn_sweep (default) or qgemv_sweep) with the
# project's pinned nvcc (scripts/setup-cuda.sh) into .gpu/NAME: sm_90 SASS, static cudart, so
# the GPU host needs only its driver. Usage: build.sh [NAME]; run there:
# .gpu/NAME [quick] | tee $OUT/sweep.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
NAME="${1:-attn_sweep}"
bash scripts/setup-cuda.sh >/dev/null
CUDA_HOME="$(echo "$ROOT"/.cuda-venv/lib/python3*/site-packages/nvidia/cu13)"
mkdir -p .gpu
"$CUDA_HOME/bin/nvcc" -std=c++17 -O3 -lineinfo -gencode arch=compute_90,code=sm_90 -Xptxas -v \
    -I crates/cuda/kernels "crates/cuda/dev/$NAME.cu" -o ".gpu/$NAME" -L "$CUDA_HOME/lib" -lpthread -Xcompiler -static-libstdc++,-static-libgcc \
    2> >(grep -E 'error|warning|spill' | grep -v ' 0 bytes spill' >&2 || true)
echo "built .gpu/$NAME"
