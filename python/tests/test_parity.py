"""The Python path gives sentence-transformers' vectors for all-MiniLM-L6-v2, to 1e-5, on the
64 reference texts shipped in tests/fixtures (the same fixture the Rust tests use)."""

from __future__ import annotations

import json

import memrl
import numpy as np
from conftest import REPO


def reference() -> tuple[list[str], np.ndarray]:
    path = REPO / "tests" / "fixtures" / "minilm_reference.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r["text"] for r in rows], np.array([r["embedding"] for r in rows], np.float32)


def test_embedder_matches_sentence_transformers(embedder: memrl.Embedder) -> None:
    texts, expected = reference()
    assert len(texts) == 64
    got = embedder.embed(texts)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert got.flags["C_CONTIGUOUS"]
    assert float(np.abs(got - expected).max()) < 1e-5
    # One at a time (through the bank's queue) gives the same vectors as the batch.
    bank = memrl.Bank.in_memory(embedder=embedder)
    alone = np.stack([bank.embed(t) for t in texts[:8]])
    assert float(np.abs(alone - expected[:8]).max()) < 1e-5
    assert float(np.abs(bank.embed(texts) - expected).max()) < 1e-5


def test_int8_stays_within_its_bound_of_sentence_transformers(embedder: memrl.Embedder) -> None:
    texts, expected = reference()
    int8 = memrl.Embedder("all-MiniLM-L6-v2", precision="int8")
    assert (int8.precision, embedder.precision) == ("int8", "f32")
    got = int8.embed(texts)
    cosines = np.sum(got * expected, axis=1)  # both unit vectors
    assert float(cosines.min()) >= 0.995, float(cosines.min())
    bank = memrl.Bank.in_memory(model="all-MiniLM-L6-v2", precision="int8")
    assert bank.embedder is not None and bank.embedder.precision == "int8"
    assert float(np.abs(bank.embed(texts[:4]) - got[:4]).max()) == 0.0


def test_a_precision_that_cannot_apply_is_refused() -> None:
    import pytest

    with pytest.raises(memrl.InvalidInputError, match="int4"):
        memrl.Embedder("all-MiniLM-L6-v2", precision="int4")
    with pytest.raises(memrl.InvalidInputError, match="precision"):
        memrl.Bank.in_memory(dim=8, model_id="toy", precision="int8")
