"""One bank, many Python threads: no lost update, the same answers as serial calls, and the GIL
released while memrl works (another thread keeps running during a long call)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import memrl
import pytest
from conftest import REPO, unit


def test_many_threads_one_bank_no_lost_update(tmp_path: Path) -> None:
    bank = memrl.Bank.open(
        tmp_path / "b.safetensors", dim=16, model_id="toy", dedup_sim=1.0, sync="never"
    )
    threads, adds, rounds = 8, 25, 6
    vectors = unit(threads * adds, 16, seed=11)

    def worker(t: int) -> list[int]:
        mine = [
            bank.add(f"t{t} m{i}", f"e{t}.{i}", embeddings=vectors[t * adds + i])
            for i in range(adds)
        ]
        for _ in range(rounds):
            bank.feedback(memory_ids=mine, reward=float(t))
            bank.retrieve(vectors[t * adds], k2=3, delta=-1.0)
        return mine

    with ThreadPoolExecutor(threads) as pool:
        owned = list(pool.map(worker, range(threads)))
    ids = [i for mine in owned for i in mine]
    assert len(bank) == threads * adds and sorted(ids) == list(range(threads * adds))
    for t, mine in enumerate(owned):
        q = 0.0
        for _ in range(rounds):
            q += 0.3 * (t - q)
        for i in mine:
            m = bank[i]
            assert m.visits == rounds and math.isclose(m.q, q, rel_tol=1e-5), (t, m)
    # The log holds every write: a reopened bank is the same.
    before = [m.to_dict() for m in bank.memories()]
    bank.close()
    again = memrl.Bank.open(tmp_path / "b.safetensors", read_only=True)
    assert [m.to_dict() for m in again.memories()] == before


def test_concurrent_single_retrievals_equal_serial_ones() -> None:
    bank = memrl.Bank.in_memory(dim=32, model_id="toy", batching={"max_batch": 8})
    bank.add(
        [str(i) for i in range(500)], [f"e{i}" for i in range(500)], embeddings=unit(500, 32, 12)
    )
    queries = unit(128, 32, 13)
    serial = [bank.retrieve(queries[i : i + 1], k2=4, delta=-1.0)[0] for i in range(128)]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda q: bank.retrieve(q, k2=4, delta=-1.0), queries))
    assert [[h.to_dict() for h in r.hits] for r in concurrent] == [
        [h.to_dict() for h in r.hits] for r in serial
    ]
    # Every retrieval id is distinct and can be reported.
    assert len({r.id for r in concurrent}) == 128
    bank.feedback_many([(r.id, 1.0) for r in concurrent])


def ticks_during(call: Callable[[], Any]) -> tuple[int, float]:
    """Runs ``call`` on a thread while this one counts loop iterations; returns the iterations
    counted strictly inside the call and how long the call took."""
    window: dict[str, float] = {}

    def run() -> None:
        window["start"] = time.perf_counter()
        call()
        window["end"] = time.perf_counter()

    thread = threading.Thread(target=run)
    stamps: list[float] = []
    thread.start()
    while thread.is_alive():
        stamps.append(time.perf_counter())
        for _ in range(200):
            pass
    thread.join()
    start, end = window["start"], window["end"]
    margin = 0.02 * (end - start)
    inside = sum(1 for s in stamps if start + margin < s < end - margin)
    return inside, end - start


def corpus(n: int) -> list[str]:
    with open(REPO / "data" / "corpus.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f, strict=False)]


@pytest.fixture(scope="module")
def big() -> memrl.Bank:
    bank = memrl.Bank.in_memory(dim=384, model_id="toy", dedup_sim=1.0)
    bank.add([""] * 40_000, [""] * 40_000, embeddings=unit(40_000, 384, 14))
    return bank


LONG_CALLS: dict[str, Callable[[memrl.Bank, memrl.Embedder], Any]] = {
    "retrieve a batch": lambda b, e: [
        b.retrieve(unit(256, 384, 15), k1=50, delta=-1.0) for _ in range(3)
    ],
    "calibrate": lambda b, e: b.calibrate(max_pairs=3_000_000, seed=1),
    "add a batch": lambda b, e: memrl.Bank.in_memory(dim=384, model_id="t").add(
        [""] * 3000, [""] * 3000, embeddings=unit(3000, 384, 16)
    ),
    "embed": lambda b, e: e.embed(corpus(300)),
}


@pytest.mark.parametrize("name", list(LONG_CALLS))
def test_another_thread_runs_during_a_long_call(
    name: str, big: memrl.Bank, embedder: memrl.Embedder
) -> None:
    inside, seconds = ticks_during(lambda: LONG_CALLS[name](big, embedder))
    # With the GIL held for the whole call, the counting thread would not run at all inside it.
    assert seconds > 0.05, f"{name} took {seconds:.3f} s: too short to tell"
    assert inside >= 20, f"{name}: {inside} iterations in {seconds:.2f} s"
