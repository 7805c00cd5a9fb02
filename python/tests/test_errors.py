"""Every bad input: the exception class, a message naming the problem, and a bank left exactly
as it was (memories, keys, configs, counters)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import memrl
import numpy as np
import pytest
from conftest import state, unit

BAD_CALLS: list[tuple[str, Callable[[memrl.Bank], Any], type[BaseException], str]] = [
    # wrong dimension
    (
        "query of dim 7",
        lambda b: b.retrieve(np.ones(7, np.float32)),
        memrl.InvalidInputError,
        "expected dimension 8, got 7",
    ),
    (
        "queries of dim 16",
        lambda b: b.retrieve(np.ones((2, 16), np.float32)),
        memrl.InvalidInputError,
        "expected dimension 8, got 16",
    ),
    (
        "3-d queries",
        lambda b: b.retrieve(np.ones((2, 2, 8), np.float32)),
        memrl.InvalidInputError,
        "shape",
    ),
    (
        "embedding of dim 3",
        lambda b: b.add("i", "e", embeddings=[1.0, 2.0, 3.0]),
        memrl.InvalidInputError,
        "expected dimension 8, got 3",
    ),
    (
        "two embeddings for three memories",
        lambda b: b.add(["a", "b", "c"], ["x", "y", "z"], embeddings=unit(2, 8, 1)),
        memrl.InvalidInputError,
        "embeddings",
    ),
    # NaN and infinity
    (
        "NaN query",
        lambda b: b.retrieve(np.full(8, np.nan, np.float32)),
        memrl.InvalidInputError,
        "NaN",
    ),
    (
        "infinite embedding",
        lambda b: b.add("i", "e", embeddings=[math.inf] + [0.0] * 7),
        memrl.InvalidInputError,
        "inf",
    ),
    (
        "zero embedding",
        lambda b: b.add("i", "e", embeddings=np.zeros(8)),
        memrl.InvalidInputError,
        "zero",
    ),
    (
        "float64 overflowing float32",
        lambda b: b.add("i", "e", embeddings=[1e300] + [0.0] * 7),
        memrl.InvalidInputError,
        "inf",
    ),
    (
        "NaN reward",
        lambda b: b.feedback(memory_ids=[0], reward=math.nan),
        memrl.InvalidInputError,
        "reward",
    ),
    (
        "NaN in one of a batch",
        lambda b: b.add(
            ["a", "b"], ["x", "y"], embeddings=np.vstack([unit(1, 8, 1), np.full((1, 8), np.nan)])
        ),
        memrl.InvalidInputError,
        "#1",
    ),
    # wrong dtype or type
    (
        "strings as a query array",
        lambda b: b.retrieve(np.array([["a"] * 8])),
        memrl.InvalidInputError,
        "float32",
    ),
    (
        "complex query",
        lambda b: b.retrieve(np.ones(8, np.complex64)),
        memrl.InvalidInputError,
        "complex",
    ),
    (
        "ragged lists",
        lambda b: b.retrieve([[1.0] * 8, [1.0] * 7]),
        memrl.InvalidInputError,
        "float32",
    ),
    ("a dict as queries", lambda b: b.retrieve({"q": 1}), memrl.InvalidInputError, "float32"),
    ("mixed texts", lambda b: b.retrieve(["a", 1]), TypeError, "queries[1]"),
    ("k1 as a str", lambda b: b.retrieve(unit(1, 8, 1)[0], k1="10"), TypeError, "k1"),
    (
        "success as an int",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], success=1),
        TypeError,
        "success",
    ),
    (
        "metadata not a dict",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], metadata=[1]),
        TypeError,
        "metadata",
    ),
    (
        "metadata with a set",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], metadata={"s": {1}}),
        memrl.InvalidInputError,
        "metadata[0].s",
    ),
    (
        "metadata with NaN",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], metadata={"x": [math.nan]}),
        memrl.InvalidInputError,
        "metadata[0].x[0]",
    ),
    (
        "metadata with an int key",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], metadata={1: "x"}),
        memrl.InvalidInputError,
        "not a str",
    ),
    (
        "two experiences for one intent",
        lambda b: b.add(["a"], ["x", "y"]),
        memrl.InvalidInputError,
        "experiences",
    ),
    # unknown ids
    ("remove an unknown id", lambda b: b.remove(99), memrl.NotFoundError, "99"),
    ("index an unknown id", lambda b: b[99], memrl.NotFoundError, "99"),
    ("intent key of an unknown id", lambda b: b.intent_key(99), memrl.NotFoundError, "99"),
    (
        "feedback for an unknown memory",
        lambda b: b.feedback(memory_ids=[0, 99], reward=1.0),
        memrl.NotFoundError,
        "99",
    ),
    (
        "feedback for an unknown retrieval",
        lambda b: b.feedback(12345, reward=1.0),
        memrl.NotFoundError,
        "12345",
    ),
    (
        "outcomes with an unknown id",
        lambda b: b.apply_outcomes([([0], 1.0), ([99], 1.0)]),
        memrl.NotFoundError,
        "99",
    ),
    ("a negative id", lambda b: b.remove(-1), memrl.InvalidInputError, "id"),
    (
        "a duplicate id",
        lambda b: b.add("i", "e", embeddings=unit(1, 8, 1)[0], ids=3),
        memrl.ConflictError,
        "duplicate",
    ),
    (
        "duplicate ids in a batch",
        lambda b: b.add(["a", "b"], ["x", "y"], embeddings=unit(2, 8, 1), ids=[50, 50]),
        memrl.ConflictError,
        "duplicate",
    ),
    (
        "text without an embedder",
        lambda b: b.retrieve("hello"),
        memrl.InvalidInputError,
        "embedder",
    ),
    (
        "feedback with neither retrieval nor ids",
        lambda b: b.feedback(reward=1.0),
        memrl.InvalidInputError,
        "exactly one",
    ),
    # bad config values
    ("k1 = 0", lambda b: b.retrieve(unit(1, 8, 1)[0], k1=0), memrl.InvalidInputError, "k1"),
    ("k2 = -3", lambda b: b.retrieve(unit(1, 8, 1)[0], k2=-3), memrl.InvalidInputError, "k2"),
    (
        "lambda_ = 2",
        lambda b: b.retrieve(unit(1, 8, 1)[0], lambda_=2.0),
        memrl.InvalidInputError,
        "lambda",
    ),
    (
        "epsilon = -0.1",
        lambda b: b.set_retrieval_config(epsilon=-0.1),
        memrl.InvalidInputError,
        "epsilon",
    ),
    (
        "delta = NaN",
        lambda b: b.set_retrieval_config(delta=math.nan),
        memrl.InvalidInputError,
        "delta",
    ),
    ("z_clip = 0", lambda b: b.set_retrieval_config(z_clip=0.0), memrl.InvalidInputError, "z_clip"),
    (
        "zsim std = 0",
        lambda b: b.retrieve(unit(1, 8, 1)[0], zsim=(0.1, 0.0)),
        memrl.InvalidInputError,
        "zsim.std",
    ),
    (
        "zsim = 'global'",
        lambda b: b.retrieve(unit(1, 8, 1)[0], zsim="global"),
        memrl.InvalidInputError,
        "zsim",
    ),
    (
        "q_min = NaN",
        lambda b: b.set_retrieval_config(q_min=math.nan),
        memrl.InvalidInputError,
        "q_min",
    ),
    ("seed = -1", lambda b: b.retrieve(unit(1, 8, 1)[0], seed=-1), memrl.InvalidInputError, "seed"),
    ("an unknown option", lambda b: b.retrieve(unit(1, 8, 1)[0], k3=1), TypeError, "k3"),
    (
        "lambda without the underscore",
        lambda b: b.retrieve(unit(1, 8, 1)[0], **{"lambda": 0.1}),
        TypeError,
        "lambda_",
    ),
    ("alpha = 0", lambda b: b.set_learning_config(alpha=0.0), memrl.InvalidInputError, "alpha"),
    ("alpha = 1.5", lambda b: b.set_learning_config(alpha=1.5), memrl.InvalidInputError, "alpha"),
    (
        "q_init = inf",
        lambda b: b.set_learning_config(q_init=math.inf),
        memrl.InvalidInputError,
        "q_init",
    ),
    (
        "reward range reversed",
        lambda b: b.set_learning_config(reward_range=(1.0, -1.0)),
        memrl.InvalidInputError,
        "reward_range",
    ),
    (
        "out_of_range without a range",
        lambda b: b.set_learning_config(out_of_range="clamp"),
        memrl.InvalidInputError,
        "out_of_range",
    ),
    (
        "out_of_range = 'wrap'",
        lambda b: b.set_learning_config(reward_range=(0, 1), out_of_range="wrap"),
        memrl.InvalidInputError,
        "out_of_range",
    ),
    ("stats with 0 bins", lambda b: b.stats(bins=0), memrl.InvalidInputError, "bins"),
    (
        "calibrate with 0 pairs",
        lambda b: b.calibrate(max_pairs=0),
        memrl.InvalidInputError,
        "max_pairs",
    ),
    (
        "bulk with an unknown key",
        lambda b: b.bulk([{"intents": ["a"], "experiences": ["b"], "vectors": [[0.0] * 8]}]),
        TypeError,
        "vectors",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "words"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_is_refused_and_changes_nothing(
    durable: memrl.Bank,
    name: str,
    call: Callable[[memrl.Bank], Any],
    error: type[BaseException],
    words: str,
) -> None:
    before = state(durable)
    with pytest.raises(error) as raised:
        call(durable)
    assert words in str(raised.value), str(raised.value)
    assert state(durable) == before


def test_a_failing_bulk_load_is_undone(durable: memrl.Bank) -> None:
    before = state(durable)

    def batches():
        yield {"intents": ["a"], "experiences": ["x"], "embeddings": unit(1, 8, 3)}
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        durable.bulk(batches())
    assert state(durable) == before
    with pytest.raises(memrl.InvalidInputError):
        durable.bulk(
            [
                {"intents": ["a"], "experiences": ["x"], "embeddings": unit(1, 8, 3)},
                {"intents": ["b"], "experiences": ["y"], "embeddings": [[np.nan] * 8]},
            ]
        )
    assert state(durable) == before


def test_feedback_is_applied_once(durable: memrl.Bank) -> None:
    r = durable.retrieve(unit(1, 8, 3)[0], delta=-1.0)
    durable.feedback(r.id, reward=1.0)
    after = state(durable)
    with pytest.raises(memrl.NotFoundError, match="already reported"):
        durable.feedback(r.id, reward=1.0)
    assert state(durable) == after


def test_a_corrupt_bank_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    with memrl.Bank.open(path, dim=8, model_id="toy") as bank:
        bank.add(["a", "b"], ["x", "y"], embeddings=unit(2, 8, 1))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for read_only in (False, True):
        with pytest.raises(memrl.CorruptError, match="snapshot"):
            memrl.Bank.open(path, read_only=read_only)
    assert path.read_bytes() == bytes(data)
    path.write_bytes(b"not a bank at all")
    with pytest.raises(memrl.CorruptError):
        memrl.Bank.peek_config(path)


def test_a_bank_open_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    first = memrl.Bank.open(path, dim=8, model_id="toy")
    with pytest.raises(memrl.BankLockedError, match="open for writing elsewhere") as raised:
        memrl.Bank.open(path)
    assert isinstance(raised.value, memrl.ConflictError)
    reader = memrl.Bank.open(path, read_only=True)  # readers take no lock
    first.close()
    memrl.Bank.open(path).close()  # closing released the lock
    reader.close()


def test_opening_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(memrl.NotFoundError, match="no such bank"):
        memrl.Bank.open(missing, create=False)
    with pytest.raises(memrl.NotFoundError):
        memrl.Bank.open(missing, read_only=True)
    assert not missing.exists()
    with pytest.raises(memrl.InvalidInputError, match="dim"):
        memrl.Bank.open(missing)  # a new bank needs a dimension
    memrl.Bank.open(missing, dim=8, model_id="toy").close()
    with pytest.raises(memrl.ConflictError, match="already there"):
        memrl.Bank.open(missing, create_new=True)
    with pytest.raises(memrl.InvalidInputError, match="dim"):
        memrl.Bank.open(missing, dim=16)  # cannot change
    with pytest.raises(memrl.InvalidInputError, match="dtype"):
        memrl.Bank.open(missing, dtype="f64")
    with pytest.raises(memrl.InvalidInputError, match="sync"):
        memrl.Bank.open(missing, sync="sometimes")
    with pytest.raises(TypeError, match="retention"):
        memrl.Bank.open(missing, retention={"size": 3})
    with pytest.raises(memrl.InvalidInputError, match="device"):
        memrl.Bank.in_memory(dim=8, model_id="toy", device="tpu")
    with pytest.raises(memrl.IoError) as raised:
        memrl.Bank.open(tmp_path / "no" / "such" / "dir" / "b.safetensors", dim=8, model_id="t")
    assert isinstance(raised.value, OSError)


def test_read_only_and_closed_banks_refuse_writes(durable: memrl.Bank, tmp_path: Path) -> None:
    durable.checkpoint()
    reader = memrl.Bank.open(durable.path or "", read_only=True)
    before = state(reader)
    for write in (
        lambda: reader.add("i", "e", embeddings=unit(1, 8, 1)[0]),
        lambda: reader.remove(0),
        lambda: reader.feedback(memory_ids=[0], reward=1.0),
        lambda: reader.set_retrieval_config(k2=1),
        lambda: reader.checkpoint(),
    ):
        with pytest.raises(memrl.InvalidInputError, match="read-only"):
            write()
    assert state(reader) == before
    reader.close()
    with pytest.raises(memrl.InvalidInputError, match="closed"):
        len(reader)
    reader.close()  # closing twice is fine
