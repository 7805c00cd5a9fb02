#!/usr/bin/env bash
# Retrieval, memrl against FAISS IndexFlatIP and numpy matmul + argpartition, in one run on the
# same shapes (random unit vectors, d = 384, k = 100, 2 threads each), taking turns so that
# machine noise hits all of them. memrl runs full two-phase retrieval (k1 = 100, k2 = 5); the
# peers run Phase A alone. Prints every figure, then memrl's speed over each peer's per round.
# Not part of `cargo test` or CI.
#
# usage: benches/peers/search.sh [ROUNDS] [N]   (run from the repo root, ../shared beside it)
# env:   PEERS_DIR (default .peers: the venv made by ../shared/peers/setup.sh)
set -euo pipefail
ROUNDS=${1:-2}
N=${2:-1000000}
PEERS_DIR=${PEERS_DIR:-.peers}
SHARED=$(cd ../shared && pwd)
bash "$SHARED/peers/setup.sh" "$PEERS_DIR/venv" "$PEERS_DIR/model" >&2
PY="$PEERS_DIR/venv/bin/python"
cargo build --release >&2
out=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 "$PY" "$SHARED/peers/bench_search.py" \
    --n "$N" --b 1 32 256 --k 100 --threads 2 | tee "$out/peers-$round.jsonl"
  RAYON_NUM_THREADS=2 target/release/memrl bench --n "$N" --b 1,32,256 --dtype f32,f16 --k1 100 \
    --callers 0 --retrieval-only --json "$out/memrl-$round.json" >&2
done
"$PY" - "$out" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'round':>5} {'N':>8} {'B':>4} {'memrl f32 q/s':>14} {'memrl f16 q/s':>14} {'FAISS q/s':>10} {'numpy q/s':>10} {'f32/FAISS':>10} {'f16/FAISS':>10} {'f32/numpy':>10} {'f32 roofline':>12} {'f16 roofline':>12}")
for r in range(1, rounds + 1):
    ours = json.load(open(f"{out}/memrl-{r}.json"))
    cases = {(c["dtype"], c["n"], c["b"]): c for c in ours["retrieval"]}
    for line in open(f"{out}/peers-{r}.jsonl"):
        p = json.loads(line)
        f32, f16 = cases[("f32", p["n"], p["b"])], cases[("f16", p["n"], p["b"])]
        print(f"{r:>5} {p['n']:>8} {p['b']:>4} {f32['queries_per_s']:>14.1f} {f16['queries_per_s']:>14.1f} "
              f"{p['faiss_qps']:>10.1f} {p['numpy_qps']:>10.1f} {f32['queries_per_s'] / p['faiss_qps']:>9.2f}x "
              f"{f16['queries_per_s'] / p['faiss_qps']:>9.2f}x {f32['queries_per_s'] / p['numpy_qps']:>9.2f}x "
              f"{f32['roofline_fraction']:>12.2f} {f16['roofline_fraction']:>12.2f}")
    c = ours["ceilings"]
    print(f"      ceilings in round {r}: read {c['read_bytes_per_s'] / 1e9:.1f} GB/s, f32 matrix product {c['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s")
PY
rm -rf "$out"
