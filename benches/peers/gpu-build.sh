#!/usr/bin/env bash
# Builds what benches/peers/gpu.sh runs on a GPU machine that has no Rust: the test binaries
# and the retrieval benchmark with `--features cuda`, linked against kernels/link-stubs.sh's
# stand-ins, stripped and packed into BIN_DIR/bins.tar.xz (the GPU tool carries 64 MiB at most).
#
# usage: benches/peers/gpu-build.sh [BIN_DIR]   (default .gpu, ignored by git)
set -euo pipefail
BIN=${1:-.gpu}
source .ci/cuda-toolchain.sh
STUBS=${CUDA_STUBS:-$HOME/.cache/memrl/cuda-stubs}
kernels/link-stubs.sh "$STUBS"
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/memrl/cuda-target}
export RUSTFLAGS="-L native=$STUBS"
mkdir -p "$BIN"
rm -f "$BIN"/test-* "$BIN"/bench-* "$BIN"/bins.tar.*
json=$(cargo test -p memrl --release --features cuda --no-run --message-format=json --lib \
  --test retrieval --test learning --test snapshot --test bad_input --test engine --test embed)
echo "$json" | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"] if m["target"]["kind"] != ["lib"] else "lib"
        shutil.copy(m["executable"], sys.argv[1] + "/test-" + name)
' "$BIN"
json=$(cargo bench -p memrl-bench --features cuda --no-run --message-format=json --bench retrieval)
exe=$(echo "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["bench"]:
        print(m["executable"])')
cp "$exe" "$BIN/bench-retrieval"
strip "$BIN"/test-* "$BIN"/bench-retrieval
# xz -9's 64 MiB window spans whole binaries, so the copies of candle's PTX that every binary
# embeds are stored once: ~400 MB of binaries pack into ~19 MB.
(cd "$BIN" && tar -c test-* bench-retrieval | xz -9 -T2 > bins.tar.xz && rm -f test-* bench-retrieval)
ls -la "$BIN"
