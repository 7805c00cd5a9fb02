"""The Python package's speed goals, measured in one run, printed as same-run ratios.

1. Overhead of calling from Python over the same call from Rust (benches/python_overhead.rs,
   run as a process on the same bank file and queries): retrieval at B = 1 and B = 256 over
   100k keys (k1 = 100, k2 = 5, no gate), and `add` of 1,000 vectors to a new bank. Goal: <= 1.10.
2. `embed` of the 10,000 corpus sentences against sentence-transformers' `encode` (same model
   files, same threads, batch 32) and the CLI's own rate (`memrl embed`). Goals: >= 1.2x and
   within 5% of the CLI.
3. Retrieval over 1M keys from Python against FAISS IndexFlatIP (k = 100, same threads) at
   B = 1 and B = 256 (memrl runs the full two-phase retrieval, FAISS Phase A). Goal: >= 2x.
   `--key-dtypes f32,f16` adds f16 keys against FAISS's fp16 scalar quantizer.

Run by benches/peers/python.sh (which builds the peers' venv and the wheel into it); not part of
the tests or CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import memrl
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def median_time(
    reps: int, run: Callable[[np.ndarray], Any], take: Callable[[], np.ndarray]
) -> float:
    """Median seconds of ``run(take())`` (the batch taken outside the timed call)."""
    run(take())
    times = []
    for _ in range(reps):
        batch = take()
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rolling(queries: np.ndarray, b: int) -> Callable[[], np.ndarray]:
    state = {"i": 0}

    def take() -> np.ndarray:
        start = (state["i"] * b) % (len(queries) - b + 1)
        state["i"] += 1
        return queries[start : start + b]

    return take


def overhead(a: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    dim, n = 384, a.overhead_n
    with tempfile.TemporaryDirectory() as tmp:
        bank = memrl.Bank.in_memory(dim=dim, model_id="bench", dedup_sim=1.0)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            bank.add([""] * m, [""] * m, embeddings=unit(m, dim, 100 + start))
        path = Path(tmp) / "bank.safetensors"
        bank.save_as(path)
        bank.close()
        bank = memrl.Bank.open(path, read_only=True)
        queries = unit(4096, dim, 7)
        qfile = Path(tmp) / "queries.f32"
        queries.astype("<f4").tofile(qfile)
        opts: dict[str, Any] = {"k1": 100, "k2": 5, "delta": -1.0}
        exe = a.rust_overhead
        for round_ in range(1, a.rounds + 1):
            one = rolling(queries, 1)
            b256 = rolling(queries, 256)
            py = {
                "b1_s": median_time(a.reps, lambda q: bank.retrieve(q[0], **opts), one),
                "b1_rows_s": median_time(a.reps, lambda q: bank.retrieve(q, **opts), one),
                "b256_s": median_time(
                    max(3, a.reps // 8), lambda q: bank.retrieve(q, **opts), b256
                ),
            }
            adds = []
            rows = queries[:1000]
            intents, experiences = ["intent"] * 1000, ["experience"] * 1000
            for _ in range(max(3, a.reps // 4)):
                fresh = memrl.Bank.in_memory(dim=dim, model_id="bench")
                t0 = time.perf_counter()
                fresh.add(intents, experiences, embeddings=rows)
                adds.append(time.perf_counter() - t0)
                fresh.close()
            py["add_s"] = statistics.median(adds)
            rust = json.loads(
                subprocess.run(
                    [exe, str(path), str(qfile), str(a.reps)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            row = {
                "round": round_,
                "n": n,
                "retrieve_b1": (py["b1_s"], rust["retrieve_b1_s"]),
                "retrieve_b1_as_rows": (py["b1_rows_s"], rust["retrieve_b1_s"]),
                "retrieve_b256": (py["b256_s"], rust["retrieve_b256_s"]),
                "add_1000": (py["add_s"], rust["add_1000_s"]),
            }
            out.append({"overhead": row})
            for k, v in row.items():
                if isinstance(v, tuple):
                    print(
                        f"  round {round_} {k:>20}: python {v[0] * 1e3:8.3f} ms   rust "
                        f"{v[1] * 1e3:8.3f} ms   python/rust {v[0] / v[1]:.3f}",
                        flush=True,
                    )


def embedding(a: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    texts = [
        json.loads(line)["text"]
        for line in (REPO / "data" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    st = SentenceTransformer(str(a.model_dir), device="cpu")
    emb = memrl.Embedder("all-MiniLM-L6-v2")
    emb.embed(texts[:256])
    st.encode(texts[:256], batch_size=32, normalize_embeddings=True)
    for round_ in range(1, a.rounds + 1):
        t0 = time.perf_counter()
        ours = emb.embed(texts)
        memrl_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        st_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            cli = subprocess.run(
                [
                    a.cli,
                    "embed",
                    "--input",
                    str(REPO / "data" / "corpus.jsonl"),
                    "--field",
                    "text",
                    "--out",
                    str(Path(tmp) / "e.safetensors"),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        cli_rate = float(cli.strip().split(",")[-1].split()[0])
        diff = float(np.abs(ours - theirs).max())
        row = {
            "round": round_,
            "n": len(texts),
            "memrl_per_s": len(texts) / memrl_s,
            "st_per_s": len(texts) / st_s,
            "cli_per_s": cli_rate,
            "max_abs_diff": diff,
        }
        out.append({"embed": row})
        print(
            f"  round {round_} embed: memrl (Python) {row['memrl_per_s']:.1f}/s, "
            f"sentence-transformers {row['st_per_s']:.1f}/s, CLI {cli_rate:.1f}/s; "
            f"memrl/st {row['memrl_per_s'] / row['st_per_s']:.2f}x, "
            f"memrl/CLI {row['memrl_per_s'] / cli_rate:.3f}; max |diff| {diff:.1e}",
            flush=True,
        )


def search(a: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    import faiss

    faiss.omp_set_num_threads(a.threads)
    keys = unit(a.search_n, 384, 42)
    queries = unit(4096, 384, 7)
    for dtype in a.key_dtypes:
        search_keys(a, out, faiss, dtype, keys, queries)


def search_keys(
    a: argparse.Namespace,
    out: list[dict[str, Any]],
    faiss: Any,
    dtype: Literal["f32", "f16"],
    keys: np.ndarray,
    queries: np.ndarray,
) -> None:
    """One key storage on both sides: f32 keys against IndexFlatIP, f16 keys against FAISS's
    fp16 scalar quantizer (the same 2 bytes a component, inner product)."""
    n, dim = keys.shape
    if dtype == "f32":
        index = faiss.IndexFlatIP(dim)
        peer = "IndexFlatIP"
    else:
        index = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        index.train(keys[:1000])
        peer = "IndexScalarQuantizer fp16"
    index.add(keys)
    bank = memrl.Bank.in_memory(dim=dim, model_id="bench", dedup_sim=1.0, dtype=dtype)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        bank.add([""] * m, [""] * m, embeddings=keys[start : start + m])
    opts: dict[str, Any] = {"k1": 100, "k2": 5, "delta": -1.0}
    for round_ in range(1, a.rounds + 1):
        for b in (1, 256):
            reps = a.reps if b == 1 else max(3, a.reps // 8)
            take_m, take_f = rolling(queries, b), rolling(queries, b)
            ours = median_time(reps, lambda q: bank.retrieve(q, **opts), take_m)
            theirs = median_time(reps, lambda q: index.search(q, 100), take_f)
            row = {
                "round": round_,
                "n": n,
                "b": b,
                "keys": dtype,
                "memrl_qps": b / ours,
                "faiss_qps": b / theirs,
            }
            out.append({"search": row})
            print(
                f"  round {round_} search N={n} B={b} keys {dtype}: memrl {b / ours:.1f} q/s, "
                f"FAISS {peer} {b / theirs:.1f} q/s, memrl/FAISS {theirs / ours:.2f}x",
                flush=True,
            )
    bank.close()


def key_dtypes(value: str) -> list[Literal["f32", "f16"]]:
    dtypes: list[Literal["f32", "f16"]] = []
    for d in value.split(","):
        if d == "f32":
            dtypes.append("f32")
        elif d == "f16":
            dtypes.append("f16")
        else:
            raise argparse.ArgumentTypeError(f"{d!r}: f32 or f16")
    return dtypes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overhead-n", type=int, default=100_000)
    ap.add_argument("--search-n", type=int, default=1_000_000)
    ap.add_argument(
        "--key-dtypes",
        type=key_dtypes,
        default=["f32"],
        help="key storage to measure, comma-separated: f32 (against IndexFlatIP), f16 "
        "(against FAISS's fp16 scalar quantizer)",
    )
    ap.add_argument("--model-dir", type=Path, default=REPO / ".peers" / "model")
    ap.add_argument("--cli", default=str(REPO / "target" / "release" / "memrl"))
    ap.add_argument("--rust-overhead", required=True, help="the python_overhead bench binary")
    ap.add_argument("--only", choices=["overhead", "embed", "search"], action="append")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(a.threads))
    out: list[dict[str, Any]] = []
    parts = {"overhead": overhead, "embed": embedding, "search": search}
    for name in a.only or list(parts):
        print(f"== {name}", flush=True)
        parts[name](a, out)
    if a.json:
        a.json.write_text("\n".join(json.dumps(r) for r in out) + "\n")


if __name__ == "__main__":
    main()
