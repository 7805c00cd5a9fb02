"""Index the BIG-bench corpus (data/corpus.jsonl) into a bank in bulk, with a progress bar.

Each line becomes one memory (intent: the sentence, experience: its BIG-bench task). The load is
one bulk write: batches are embedded and added as the progress bar advances, and the bank is
written as one snapshot at the end, all or nothing.

    python examples/python/bulk_index.py --bank corpus.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import memrl
from tqdm import tqdm

if TYPE_CHECKING:
    from memrl._memrl import Batch

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.jsonl"


def batches(lines: list[dict[str, str]], size: int) -> Iterator[Batch]:
    for start in range(0, len(lines), size):
        chunk = lines[start : start + size]
        yield {"intents": [d["text"] for d in chunk], "experiences": [d["source"] for d in chunk]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bank", type=Path, default=Path("corpus.safetensors"))
    ap.add_argument("--limit", type=int, default=0, help="first N lines only (0 = all)")
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()

    lines = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    if a.limit:
        lines = lines[: a.limit]
    t0 = time.perf_counter()
    with memrl.Bank.open(a.bank, model="all-MiniLM-L6-v2") as bank:
        progress = tqdm(batches(lines, a.batch), total=-(-len(lines) // a.batch), unit="batch")
        ids = bank.bulk(progress)
        seconds = time.perf_counter() - t0
        print(
            f"indexed {len(ids)} memories under {bank.num_intents} intent keys "
            f"in {seconds:.1f} s ({len(ids) / seconds:.0f}/s) -> {bank.path}"
        )
        c = bank.calibrate()
        print(f"calibrated delta {c.delta:.4f} (from {c.pairs} pairs)")


if __name__ == "__main__":
    main()
