#!/usr/bin/env bash
# The Python package's speed goals in one run (benches/python/bench.py): the binding's overhead
# over the same calls from Rust, `embed` against sentence-transformers and the CLI, retrieval
# over 1M keys against FAISS IndexFlatIP, all with 2 threads, taking turns. Not part of the
# tests or CI.
#
# usage: benches/peers/python.sh [ROUNDS]   (from the repo root, ../shared beside it)
# env:   PEERS_DIR (default .peers: the venv and model made by ../shared/peers/setup.sh; the
#        memrl wheel is installed into that venv)
set -euo pipefail
ROUNDS=${1:-2}
PEERS_DIR=${PEERS_DIR:-.peers}
SHARED=$(cd ../shared && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bash "$SHARED/peers/setup.sh" "$PEERS_DIR/venv" "$PEERS_DIR/model" >&2
PY="$PEERS_DIR/venv/bin/python"
cargo build --release >&2
"$PY" -m pip install --quiet ./python >&2
rust=$(cargo bench -p memrl-bench --bench python_overhead --no-run --message-format json 2>/dev/null \
  | "$PY" -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "python_overhead" and m.get("executable")][-1])')
RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 \
  "$PY" benches/python/bench.py --rounds "$ROUNDS" --threads 2 --rust-overhead "$rust" \
  --cli "$CARGO_TARGET_DIR/release/memrl" --model-dir "$PEERS_DIR/model"
