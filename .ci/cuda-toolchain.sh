#!/usr/bin/env bash
# A CUDA 13.0 compiler from PyPI, for building with `--features cuda` on a machine without a
# CUDA toolkit (CI, this repo's build machine). Pinned to CUDA 13.0 because the GPU machines'
# driver (580) runs CUDA 13.0: PTX from a newer nvcc is refused by an older driver.
#
# usage: source .ci/cuda-toolchain.sh [VENV]   (default $HOME/.cache/memrl/cuda-13.0)
# then:  cargo build --features cuda            (CUDA_COMPUTE_CAP defaults to 90: H100/H200)
# Sourced, so it leaves the caller's shell options alone and returns non-zero on failure.
CUDA_VENV=${1:-$HOME/.cache/memrl/cuda-13.0}
if [ ! -x "$CUDA_VENV/nvidia/cu13/bin/nvcc" ]; then
  mkdir -p "$CUDA_VENV"
  # --target: plain files, no interpreter needed at build time; nvcc finds its headers and
  # cicc relative to its own folder (nvidia/cu13/{include,nvvm}).
  python3 -m pip install -q --no-deps --target "$CUDA_VENV" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 || return 1
fi
export CUDA_ROOT="$CUDA_VENV/nvidia/cu13"
export CUDA_PATH="$CUDA_ROOT"
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -2 || return 1
