#!/usr/bin/env bash
# GPU verification, run ON the GPU machine (CUDA driver, PyTorch; no Rust): the CUDA test suites
# and the retrieval benchmark, built elsewhere by benches/peers/gpu-build.sh, then PyTorch on the
# same shapes in the same run. Everything printed is also written to $OUT/gpu.log when OUT is set.
#
# usage: bash benches/peers/gpu.sh [BIN_DIR]   (default .gpu; GPU_TESTS_ONLY=1 skips the benchmarks)
set -uo pipefail
BIN=${1:-.gpu}
LOG=${OUT:-/tmp}/gpu.log
exec > >(tee "$LOG") 2>&1
python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$BIN/bins.tar.xz" "$BIN"
# cuBLAS, cuRAND and NVRTC of CUDA 13 come with PyTorch's wheels; the driver is the system's.
LIBS=$(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', 'cu13', 'lib'))")
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
export MEMRL_TEST_DEVICE=cuda RUST_BACKTRACE=1

echo "== kernel tests (CUDA top-k against the CPU op)"
timeout 120 "$BIN"/test-lib kernels:: --test-threads 1
for t in retrieval learning snapshot bad_input engine embed; do
  echo "== tests/$t.rs on cuda"
  timeout 120 "$BIN/test-$t" --test-threads 4 > "${OUT:-/tmp}/test-$t.log" 2>&1
  echo "exit $?"; grep -E "^test result|panicked|FAILED" "${OUT:-/tmp}/test-$t.log" | head -8
done

if [ "${GPU_PROFILE:-0}" = 1 ]; then
  echo "== Nsight Compute: per-kernel time of retrieval at N = 1M f16, B = 256 (first calls)"
  MEMRL_BENCH_DEVICE=cuda MEMRL_BENCH_DTYPE=f16 MEMRL_BENCH_N=1000000 MEMRL_BENCH_K1=100 \
    MEMRL_BENCH_BATCHES=256 timeout 240 ncu --clock-control none --section SpeedOfLight \
    --kernel-name regex:"memrl|gemm|xmma|cutlass|nvjet" -c 24 --print-summary per-kernel \
    "$BIN"/bench-retrieval > "${OUT:-/tmp}/ncu.txt" 2>&1
  echo "ncu exit $?"
  grep -E "memrl|gemm|xmma|cutlass|nvjet|Duration|SM Frequency" "${OUT:-/tmp}/ncu.txt" | head -80
fi
if [ "${GPU_TESTS_ONLY:-0}" = 1 ]; then exit 0; fi
echo "== retrieval benchmark: memrl, then torch, same shapes (d = 384, k1 = 100)"
for set in ${GPU_BENCH_SETS:-f16:1000000 f16:10000000 f32:1000000 f32:10000000}; do
  MEMRL_BENCH_DEVICE=cuda MEMRL_BENCH_DTYPE=${set%%:*} MEMRL_BENCH_N=${set##*:} MEMRL_BENCH_K1=100 \
    timeout 120 "$BIN"/bench-retrieval
done
python3 benches/peers/gpu_torch.py --n 1000000,10000000 --batches 1,32,256 --dtypes f16,f32 --k 100
echo "== embedding models on this machine (for an embedding comparison; none are carried)"
find / -maxdepth 7 -type d -iname "*MiniLM*" 2>/dev/null | head -3
