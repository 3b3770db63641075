#!/usr/bin/env bash
# Install the pinned CUDA 13.0 compiler (nvcc + nvvm + headers) into the project-local
# python venv .cuda-venv, so `cargo build --features cuda` can compile crates/cuda/kernels/*.cu.
#
# Why pinned: a 13.0 driver (the GPU hosts run 580.x) rejects PTX from newer nvcc, and the
# unpinned 13.x wheels pull 13.5 parts. Why a venv: CI and fresh machines have no CUDA
# toolkit; the wheels are ~100 MB and need no root. Nothing CUDA is needed at link time
# (cudarc loads libcuda/libcublas at run time), so nvcc is the only build-time tool.
#
# Idempotent: re-running with everything in place only prints where nvcc is.
# Usage: bash scripts/setup-cuda.sh        (from anywhere inside the repository)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cuda-venv"
PYTHON="${PYTHON:-python3}"

PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)

find_nvcc() {
    local c
    for c in "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
        if [[ -x "$c" ]]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

installed_pins_match() {
    [[ -x "$VENV/bin/pip" ]] || return 1
    local frozen
    frozen="$("$VENV/bin/pip" freeze 2>/dev/null)" || return 1
    local p
    for p in "${PINS[@]}"; do
        grep -qix "$p" <<<"$frozen" || return 1
    done
}

if ! installed_pins_match || ! find_nvcc >/dev/null; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "setup-cuda: creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    echo "setup-cuda: installing ${PINS[*]}"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
fi

NVCC="$(find_nvcc)" || {
    echo "setup-cuda: nvcc not found under $VENV after install" >&2
    exit 1
}
CUDA_HOME="$(dirname "$(dirname "$NVCC")")"

# The wheels ship nvcc without execute bits on some pip versions; fix them once.
chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/* 2>/dev/null || true

"$NVCC" --version | tail -n 2
echo "setup-cuda: nvcc at $NVCC"
echo "setup-cuda: crates/cuda/build.rs finds it there; to use it by hand:"
echo "    export CUDA_HOME=$CUDA_HOME PATH=$CUDA_HOME/bin:\$PATH"
