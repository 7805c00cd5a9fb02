#!/usr/bin/env bash
# Link-time stand-ins for the CUDA driver and math libraries, so `--features cuda` binaries can
# be linked on a machine without a GPU driver (this build machine), then run on a GPU machine,
# where the real libraries are loaded by soname. A stub defines every function cudarc declares
# (read from cudarc's sources) as an empty symbol; it is never loaded at run time. This is what
# the CUDA toolkit's own lib/stubs/libcuda.so is for.
#
# usage: source .ci/cuda-toolchain.sh; kernels/link-stubs.sh OUT_DIR
#        then build with RUSTFLAGS="-L native=OUT_DIR"
set -euo pipefail
OUT=${1:?usage: kernels/link-stubs.sh OUT_DIR}
# The cudarc that Cargo.lock pins, fetched if this machine has not built with CUDA before.
cargo fetch --quiet
CUDARC_VERSION=$(awk '/^name = "cudarc"/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$CUDARC_VERSION" | head -1)
mkdir -p "$OUT"
# library   soname               cudarc sys module
while read -r lib soname module; do
  names=$(grep -ho "pub unsafe fn [A-Za-z_][A-Za-z0-9_]*" "$CUDARC"/src/"$module"/sys/*.rs \
          | awk '{print $4}' | sort -u)
  {
    for n in $names; do echo "void $n(void) {}"; done
  } > "$OUT/$lib.c"
  cc -shared -fPIC -o "$OUT/lib$lib.so" -Wl,-soname,"$soname" "$OUT/$lib.c"
  rm "$OUT/$lib.c"
  echo "stub lib$lib.so ($soname): $(echo "$names" | wc -w) functions"
done <<'LIBS'
cuda      libcuda.so.1        driver
cublas    libcublas.so.13     cublas
cublasLt  libcublasLt.so.13   cublaslt
curand    libcurand.so.10     curand
nvrtc     libnvrtc.so.13      nvrtc
LIBS
# candle-kernels' static MoE library calls the CUDA runtime: link the real libcudart.so.13 that
# .ci/cuda-toolchain.sh installs (only its soname ends up in the binary).
if [ -n "${CUDA_ROOT:-}" ] && [ -e "$CUDA_ROOT/lib/libcudart.so.13" ]; then
  ln -sf "$CUDA_ROOT/lib/libcudart.so.13" "$OUT/libcudart.so"
else
  echo "no libcudart.so.13 under \$CUDA_ROOT: source .ci/cuda-toolchain.sh first" >&2
  exit 1
fi
