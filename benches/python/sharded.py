"""The cost of sharding, measured in one run on this machine's local Ray cluster.

1. Fan-out: retrieval over N keys (default 1M, d = 384, f32, no sharing) held by one in-process
   ``memrl.Bank`` against a ``memrl.ray`` sharded bank of 1 and of 2 shard actors, at B = 1 and
   B = 256 (k1 = 100, k2 = 5, no gate): median latency and queries/s of each, and the ratios.
2. Bulk embedding of the corpus (default all 10,000 sentences of data/corpus.jsonl) with
   ``memrl.ray.embed_dataset`` on 1 and 2 workers against ``memrl embed`` (the CLI), same run.

usage: python benches/python/sharded.py [--keys 1000000] [--sentences 10000] [--reps 30]
       (needs memrl[ray] and the release CLI: MEMRL_BIN or target/release/memrl).
Not part of the tests or CI. Prints one JSON line per figure, then a table.
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
from typing import Any

import memrl
import memrl.ray
import numpy as np
import ray

REPO = Path(__file__).resolve().parents[2]
OPTS: dict[str, Any] = {"k1": 100, "k2": 5, "delta": -1.0}


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(reps: int, run: Callable[[], Any]) -> float:
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load(bank: Any, n: int, dim: int, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        bank.add([""] * m, [""] * m, embeddings=unit(m, dim, 1000 + start))
    return time.perf_counter() - t0


def fan_out(a: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    dim, n = 384, a.keys
    queries = unit(512, dim, 7)
    rows: list[dict[str, Any]] = []
    systems: list[tuple[str, Any]] = [
        ("one bank (in process)", memrl.Bank.in_memory(dim=dim, model_id="bench", dedup_sim=1.0))
    ]
    for shards in (1, 2):
        systems.append(
            (
                f"{shards} shard actor{'s' if shards > 1 else ''}",
                memrl.ray.sharded_bank(
                    tmp / f"s{shards}",
                    shards,
                    dim=dim,
                    model_id="bench",
                    dedup_sim=1.0,
                    sync="never",
                ),
            )
        )
    for name, bank in systems:
        seconds = load(bank, n, dim, a.load_batch)
        for b in (1, 256):
            i = {"i": 0}

            def run(bank: Any = bank, b: int = b, i: dict[str, int] = i) -> None:
                start = (i["i"] * b) % (len(queries) - b + 1)
                i["i"] += 1
                bank.retrieve(queries[start : start + b], **OPTS)

            reps = a.reps if b == 1 else max(3, a.reps // 6)
            s = timed(reps, run)
            row = {
                "system": name,
                "keys": n,
                "B": b,
                "median_ms": s * 1e3,
                "queries_s": b / s,
                "load_s": seconds,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        bank.close()
    return rows


def embedding(a: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    src = tmp / "corpus.jsonl"
    with open(REPO / "data" / "corpus.jsonl", encoding="utf-8") as f:
        src.write_text("".join(next(f) for _ in range(a.sentences)), encoding="utf-8")
    exe = os.environ.get("MEMRL_BIN") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "memrl"
    )
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    subprocess.run(
        [exe, "embed", "--input", str(src), "--out", str(tmp / "cli.st"), "--quiet"], check=True
    )
    s = time.perf_counter() - t0
    rows.append(
        {
            "system": "memrl embed (CLI)",
            "sentences": a.sentences,
            "seconds": s,
            "sentences_s": a.sentences / s,
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    for workers in (1, 2):
        ds = ray.data.read_json(str(src))
        t0 = time.perf_counter()
        # The workers share all but one CPU: the read tasks need the last one.
        cpus = os.cpu_count() or 2
        memrl.ray.embed_dataset(
            ds,
            "text",
            tmp / f"ray{workers}.st",
            workers=workers,
            num_cpus=max(cpus - 1, 1) / workers,
        )
        s = time.perf_counter() - t0
        rows.append(
            {
                "system": f"Ray Data, {workers} worker{'s' if workers > 1 else ''}",
                "sentences": a.sentences,
                "seconds": s,
                "sentences_s": a.sentences / s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--load-batch", type=int, default=20_000)
    p.add_argument("--sentences", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--only", choices=["fanout", "embed"])
    a = p.parse_args()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        fan = fan_out(a, tmp) if a.only != "embed" else []
        emb = embedding(a, tmp) if a.only != "fanout" else []
    base = {r["B"]: r for r in fan if r["system"].startswith("one bank")}
    print("\n| system | B | median latency | queries/s | vs one bank |\n|---|---|---|---|---|")
    for r in fan:
        ratio = r["queries_s"] / base[r["B"]]["queries_s"]
        print(
            f"| {r['system']} | {r['B']} | {r['median_ms']:.2f} ms | {r['queries_s']:.1f} "
            f"| {ratio:.2f}x |"
        )
    if emb:
        cli = emb[0]["sentences_s"]
        print("\n| system | sentences/s | vs memrl embed |\n|---|---|---|")
        for r in emb:
            print(f"| {r['system']} | {r['sentences_s']:.1f} | {r['sentences_s'] / cli:.2f}x |")


if __name__ == "__main__":
    main()
