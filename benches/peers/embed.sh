#!/usr/bin/env bash
# Embedding throughput, memrl (f32 and int8) against sentence-transformers, ONNX Runtime (f32)
# and ONNX Runtime's dynamic int8 quantization (its defaults, and with per-channel weight
# scales), in one run on the same corpus, same model files and same thread count, taking turns
# so that machine noise hits all of them. Prints each peer's JSON line, then the ratios. Not
# part of `cargo test` or CI.
#
# usage: benches/peers/embed.sh [ROUNDS]   (run from the repo root, ../shared beside it)
# env:   PEERS_DIR (default .peers: venv and model made by ../shared/peers/setup.sh)
set -euo pipefail
ROUNDS=${1:-1}
PEERS_DIR=${PEERS_DIR:-.peers}
SHARED=$(cd ../shared && pwd)
CORPUS="$SHARED/data/corpus.jsonl"
bash "$SHARED/peers/setup.sh" "$PEERS_DIR/venv" "$PEERS_DIR/model" >&2
PY="$PEERS_DIR/venv/bin/python"
cargo bench --bench embed --no-run >&2
out=$(mktemp)
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  "$PY" "$SHARED/peers/bench_st.py" --model "$PEERS_DIR/model" --corpus "$CORPUS" --batch 32 --threads 2 | tee -a "$out"
  "$PY" "$SHARED/peers/bench_ort.py" --model "$PEERS_DIR/model" --corpus "$CORPUS" --batch 32 --threads 2 | tee -a "$out"
  for channel in "" --per-channel; do
    "$PY" benches/peers/bench_ort_int8.py --model "$PEERS_DIR/model" --corpus "$CORPUS" \
      --fixtures "$SHARED/fixtures/minilm_reference.jsonl" --batch 32 --threads 2 $channel 2>/dev/null | tee -a "$out"
  done
  RAYON_NUM_THREADS=2 cargo bench --bench embed 2>/dev/null | tail -1 | tee -a "$out"
  MEMRL_BENCH_PRECISION=int8 RAYON_NUM_THREADS=2 cargo bench --bench embed 2>/dev/null | tail -1 | tee -a "$out"
done
"$PY" - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
best = {}
for r in rows:
    best.setdefault(r["peer"], []).append(r["sent_per_s_best"])
rate = {p: max(v) for p, v in best.items()}
for p, v in rate.items():
    print(f"{p:>24}: {v:7.1f} sentences/s (best of {len(best[p])} rounds)")
for ours in ("memrl", "memrl-int8"):
    for p, v in rate.items():
        if not p.startswith("memrl") and ours in rate:
            print(f"{ours} / {p}: {rate[ours] / v:.2f}x")
PY
rm -f "$out"
