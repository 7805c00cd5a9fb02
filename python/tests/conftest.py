"""Shared fixtures: the real embedding model (loaded once), small vector banks, and a way to
check that a failed call left a bank exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import memrl
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def embedder() -> memrl.Embedder:
    """all-MiniLM-L6-v2, found in the local caches (CI pulls it first) or fetched."""
    return memrl.Embedder("all-MiniLM-L6-v2")


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors, float32, C-contiguous."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@pytest.fixture
def toy() -> Iterator[memrl.Bank]:
    """A vector-only bank in memory: 8 dimensions, 20 memories, sharing off."""
    bank = memrl.Bank.in_memory(dim=8, model_id="toy", dedup_sim=1.0)
    vectors = unit(20, 8, seed=1)
    bank.add(
        [f"intent {i}" for i in range(20)],
        [f"experience {i}" for i in range(20)],
        embeddings=vectors,
        success=[i % 2 == 0 for i in range(20)],
        metadata=[{"i": i} for i in range(20)],
    )
    yield bank
    bank.close()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[memrl.Bank]:
    """A durable vector-only bank (8 dimensions) with 10 memories."""
    bank = memrl.Bank.open(tmp_path / "bank.safetensors", dim=8, model_id="toy", dedup_sim=1.0)
    bank.add([f"i{i}" for i in range(10)], [f"e{i}" for i in range(10)], embeddings=unit(10, 8, 2))
    yield bank
    bank.close()


def state(bank: memrl.Bank) -> dict[str, Any]:
    """Everything observable about a bank, to compare before and after a call."""
    return {
        "memories": [m.to_dict() for m in bank.memories()],
        "intents": bank.num_intents,
        "retrieval": bank.retrieval_config,
        "learning": bank.learning_config,
        "next_id": bank.next_id,
        "log_seq": bank.log_seq,
        "keys": [bank.intent_key(m.id).tolist() for m in bank.memories()],
    }
