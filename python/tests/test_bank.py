"""The whole API of memrl.Bank, at the vector level and (with the real model) the text level."""

from __future__ import annotations

import math
from pathlib import Path

import memrl
import numpy as np
import pytest
from conftest import state, unit


def test_the_loop_of_the_readme(tmp_path: Path, embedder: memrl.Embedder) -> None:
    path = tmp_path / "bank.safetensors"
    with memrl.Bank.open(path, embedder=embedder) as bank:
        ids = bank.add(["book a flight to Lisbon"], ["search by airport code"], success=[True])
        assert ids == [0] and len(bank) == 1
        r = bank.retrieve("fly to Porto", k2=3, delta=0.0)
        assert isinstance(r, memrl.Retrieval)
        assert [h.id for h in r.hits] == ids and r.memory_ids == ids
        hit = r.hits[0]
        assert hit.experience == "search by airport code"
        assert 0.0 < hit.sim <= 1.0 and hit.q == 0.0
        report = bank.feedback(r.id, reward=1.0)
        assert (report.outcomes, report.updates, report.memories) == (1, 1, 1)
        vecs = bank.embed(["book a flight", "parse a date"])
        assert vecs.shape == (2, 384) and vecs.dtype == np.float32
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # The with block checkpointed: the snapshot holds everything, the log nothing to replay.
    with memrl.Bank.open(path, model="all-MiniLM-L6-v2") as again:
        assert again.recovery["replayed"] == 0
        assert math.isclose(again[0].q, 0.3, rel_tol=1e-6)
        assert again[0].visits == 1 and again[0].last_reward == 1.0 and again[0].success


def test_text_level_add_one_and_batch(embedder: memrl.Embedder) -> None:
    bank = memrl.Bank.in_memory(embedder=embedder)
    one = bank.add("parse a date in Rust", "use chrono::NaiveDate", success=True, q=0.5)
    assert isinstance(one, int)
    assert bank[one].q == 0.5 and bank[one].success
    many = bank.add(["sort a list", "reverse a string"], ["sorted()", "s[::-1]"])
    assert many == [one + 1, one + 2]
    got = bank.retrieve(["how do I sort", "reverse text"], k2=1, delta=0.0)
    assert isinstance(got, list) and [r.hits[0].id for r in got] == many
    # Text queries and their vectors give the same hits.
    by_vector = bank.retrieve(bank.embed(["how do I sort", "reverse text"]), k2=1, delta=0.0)
    assert isinstance(by_vector, list)
    assert [r.hits[0].to_dict() for r in by_vector] == [r.hits[0].to_dict() for r in got]
    single = bank.embed("sort a list")
    assert single.shape == (384,)
    assert np.allclose(single, bank.embed(["sort a list"])[0], atol=1e-6)
    assert bank.embedder is not None and bank.embedder.dim == 384


def test_vectors_metadata_and_reads(toy: memrl.Bank) -> None:
    assert len(toy) == 20 and toy.num_intents == 20
    m = toy[3]
    assert (m.intent, m.experience, m.metadata, m.success) == (
        "intent 3",
        "experience 3",
        {"i": 3},
        False,
    )
    assert m.visits == 0 and m.last_reward is None and m.created_ms > 0
    assert 3 in toy and 99 not in toy and "x" not in toy
    assert toy.get(99) is None
    assert [x.id for x in toy.memories()] == list(range(20))
    key = toy.intent_key(3)
    assert key.shape == (8,) and key.dtype == np.float32
    assert toy.intent_members(3) == [3]
    nested = {"a": [1, 2.5, None, True, "x"], "b": {"c": {"d": []}}, "big": 2**63}
    new = toy.add("n", "e", embeddings=unit(1, 8, 9)[0], metadata=nested)
    assert toy[new].metadata == nested
    assert toy[new].to_dict()["metadata"] == nested
    removed = toy.remove(new)
    assert removed.id == new and new not in toy


def test_retrieve_shapes_and_options(toy: memrl.Bank) -> None:
    q = unit(4, 8, seed=3)
    batch = toy.retrieve(q, k1=20, k2=3, delta=-1.0)
    assert isinstance(batch, list) and len(batch) == 4
    assert all(len(r) == 3 for r in batch)
    one = toy.retrieve(q[0], k1=20, k2=3, delta=-1.0)
    assert isinstance(one, memrl.Retrieval)
    assert [h.to_dict() for h in one.hits] == [h.to_dict() for h in batch[0].hits]
    # Other dtypes and layouts: one conversion, same answer.
    for variant in (
        q.astype(np.float64),
        np.asfortranarray(q),
        q.tolist(),
        np.repeat(q, 2, axis=0)[::2],
    ):
        got = toy.retrieve(variant, k1=20, k2=3, delta=-1.0)
        assert isinstance(got, list)
        assert [[h.id for h in r.hits] for r in got] == [[h.id for h in r.hits] for r in batch]
    # lambda_ = 0 ranks by similarity alone; hits are in score order.
    for r in toy.retrieve(q, k1=20, k2=20, delta=-1.0, lambda_=0.0):
        sims = [h.sim for h in r.hits]
        assert sims == sorted(sims, reverse=True)
    # zsim is unclipped by default (as in the spec); clip_zsim clips it to z_clip as well.
    fixed = toy.retrieve(q[0], delta=-1.0, zsim=(0.1, 0.2), z_clip=1.0)
    assert any(abs(h.zsim) > 1.0 for h in fixed.hits)
    assert all(-1.0 <= h.zq <= 1.0 for h in fixed.hits)
    clipped = toy.retrieve(q[0], delta=-1.0, zsim=(0.1, 0.2), z_clip=1.0, clip_zsim=True)
    assert all(-1.0 <= h.zsim <= 1.0 for h in clipped.hits)
    assert toy.retrieve([]) == []
    assert toy.retrieve(np.zeros((0, 8), np.float32)) == []
    # A gate nothing passes: no hits, not an error.
    assert len(toy.retrieve(q[0], delta=1.5)) == 0


def test_learning_moves_q(toy: memrl.Bank) -> None:
    r = toy.retrieve(unit(1, 8, 4)[0], k2=2, delta=-1.0)
    used = r.memory_ids
    toy.feedback(r, reward=1.0)
    for i in used:
        assert math.isclose(toy[i].q, 0.3, rel_tol=1e-6)
    toy.set_learning_config(alpha=0.5)
    report = toy.feedback(memory_ids=[used[0], used[0]], reward=-1.0)
    assert report.updates == 2 and report.memories == 1
    q = 0.3
    for _ in range(2):
        q = q + 0.5 * (-1.0 - q)
    assert math.isclose(toy[used[0]].q, q, rel_tol=1e-6)
    toy.apply_outcomes([([1, 2], 1.0), ([2], 0.0)])
    assert toy[2].visits == 2
    r1, r2 = toy.retrieve(unit(2, 8, 5), delta=-1.0)
    report = toy.feedback_many([(r1.id, 1.0), (r2, 0.5)])
    assert report.outcomes == 2
    toy.set_learning_config(reward_range=(-1.0, 1.0), out_of_range="clamp")
    assert toy.feedback(memory_ids=[5], reward=7.0).clamped == 1
    assert toy.learning_config == {
        "alpha": 0.5,
        "q_init": 0.0,
        "reward_range": (-1.0, 1.0),
        "out_of_range": "clamp",
        "baseline_rate": None,
        "q_init_failure": None,
    }
    toy.set_learning_config(reward_range=None)
    assert toy.learning_config["reward_range"] is None


def test_stored_retrieval_config_and_calibration(toy: memrl.Bank) -> None:
    assert toy.retrieval_config == {
        "k1": 10,
        "k2": 5,
        "delta": 0.5,
        "lambda_": 0.5,
        "zsim": "pool",
        "z_clip": 3.0,
        "clip_zsim": False,
        "q_min": None,
        "epsilon": 0.0,
        "seed": 0,
        "thompson": 0.0,
        "ucb": 0.0,
        "sim_margin": None,
    }
    c = toy.calibrate()
    assert c.pairs == 190 and not c.sampled and -1.0 <= c.delta <= 1.0 and c.std > 0
    toy.set_retrieval_config(delta=c.delta, zsim=(c.mean, c.std), q_min=-0.5, k2=2)
    cfg = toy.retrieval_config
    assert cfg["k2"] == 2 and cfg["q_min"] == -0.5 and cfg["zsim"] == pytest.approx((c.mean, c.std))
    assert math.isclose(cfg["delta"], c.delta, rel_tol=1e-6)
    toy.set_retrieval_config(**toy.retrieval_config)  # the dict round-trips
    toy.set_retrieval_config(q_min=None)
    assert toy.retrieval_config["q_min"] is None
    toy.set_retrieval_config(sim_margin=0.25)
    assert toy.retrieval_config["sim_margin"] == 0.25
    toy.set_retrieval_config(sim_margin=None)
    assert toy.retrieval_config["sim_margin"] is None
    with pytest.raises(memrl.InvalidInputError, match="sim_margin"):
        toy.set_retrieval_config(sim_margin=2.5)
    toy.set_retrieval_config(clip_zsim=True)
    assert toy.retrieval_config["clip_zsim"] is True
    with pytest.raises(TypeError, match="clip_zsim"):
        toy.set_retrieval_config(clip_zsim=1)  # type: ignore[typeddict-item]
    assert sampled(toy.calibrate(max_pairs=50, seed=7))


def sampled(c: memrl.Calibration) -> bool:
    return c.sampled and c.pairs == 50


def test_stats(toy: memrl.Bank) -> None:
    toy.apply_outcomes([([0], 1.0), ([1], -1.0)])
    s = toy.stats(bins=4, extremes=2)
    assert (s.memories, s.intents, s.shared_intents) == (20, 20, 0)
    assert s.q_signs == (1, 18, 1)
    assert s.q_quantiles is not None and s.q_quantiles[0] < 0 < s.q_quantiles[4]
    assert sum(s.q_histogram) == 20 and len(s.q_histogram) == 4
    assert s.top[0][0] == 0 and s.bottom[0][0] == 1
    assert set(s.to_dict()) >= {"memories", "q_quantiles", "q_histogram", "top", "bottom"}


def test_durable_reopen_read_only_checkpoint_save_as(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    bank = memrl.Bank.open(path, dim=8, model_id="toy", checkpoint="manual", sync="never")
    assert bank.is_durable and not bank.read_only and bank.path is not None
    ids = bank.add(["a", "b"], ["x", "y"], embeddings=unit(2, 8, 6))
    bank.feedback(memory_ids=ids, reward=1.0)
    before = state(bank)
    assert (bank.log_bytes or 0) > 0
    bank.close()
    assert bank.closed
    again = memrl.Bank.open(path)
    assert again.recovery["replayed"] == 2
    assert state(again) == before
    reader = memrl.Bank.open(path, read_only=True)
    assert reader.read_only and state(reader) == before
    again.checkpoint()
    assert again.log_bytes is not None and again.log_bytes < 100
    again.save_as(tmp_path / "copy.safetensors")
    assert memrl.Bank.peek_config(tmp_path / "copy.safetensors") == {
        "dim": 8,
        "dtype": "f32",
        "dedup_sim": 0.9,
        "model_id": "toy",
    }
    copy = memrl.Bank.open(tmp_path / "copy.safetensors", read_only=True)
    assert [m.to_dict() for m in copy.memories()] == before["memories"]
    for b in (again, reader, copy):
        b.close()
    assert repr(again) == "Bank(closed)"


def test_bulk_load_with_a_generator(tmp_path: Path) -> None:
    bank = memrl.Bank.open(tmp_path / "bulk.safetensors", dim=8, model_id="toy")
    vectors = unit(100, 8, 8)

    def batches():
        for start in range(0, 100, 25):
            yield {
                "intents": [f"i{j}" for j in range(start, start + 25)],
                "experiences": [f"e{j}" for j in range(start, start + 25)],
                "embeddings": vectors[start : start + 25],
            }

    ids = bank.bulk(batches())
    assert ids == list(range(100)) and len(bank) == 100
    bank.close()
    assert len(memrl.Bank.open(tmp_path / "bulk.safetensors", read_only=True)) == 100


def test_f16_keys_and_intent_sharing() -> None:
    bank = memrl.Bank.in_memory(dim=4, model_id="toy", dtype="f16", dedup_sim=0.9)
    v = np.array([[1, 0, 0, 0], [1, 0.01, 0, 0], [0, 1, 0, 0]], np.float32)
    bank.add(["a", "a'", "b"], ["x", "y", "z"], embeddings=v)
    assert bank.config["dtype"] == "f16" and bank.num_intents == 2
    assert bank.intent_members(0) == [0, 1]
    assert bank.stats().shared_intents == 1


def test_records_have_every_library_field(toy: memrl.Bank) -> None:
    """The classes expose what the library's types hold: a field the library adds shows up in
    to_dict() and must be added to the attributes and stubs (this test says which)."""
    hit = toy.retrieve(unit(1, 8, 1)[0], delta=-1.0).hits[0]
    attributes = {
        "id",
        "intent",
        "experience",
        "success",
        "metadata",
        "q",
        "sim",
        "zsim",
        "zq",
        "score",
    }
    assert set(hit.to_dict()) == attributes, set(hit.to_dict()) ^ attributes
    for name in attributes:
        assert getattr(hit, name) == hit.to_dict()[name], name
    memory = toy[0]
    assert set(memory.to_dict()) == {
        "id",
        "intent",
        "experience",
        "q",
        "visits",
        "last_reward",
        "success",
        "created_ms",
        "updated_ms",
        "metadata",
    }
    assert "Hit(id=" in repr(hit) and "Memory(id=0" in repr(memory)


def test_every_public_name_is_documented() -> None:
    for name in memrl.__all__:
        obj = getattr(memrl, name)
        if isinstance(obj, (str, list)):
            continue
        assert obj.__doc__, name
        for attr, member in vars(obj).items():
            if not attr.startswith("_"):
                assert getattr(member, "__doc__", None), f"{name}.{attr}"
    assert "k1=None" in (memrl.Bank.retrieve.__text_signature__ or "")


def test_exception_hierarchy() -> None:
    assert issubclass(memrl.InvalidInputError, ValueError)
    assert issubclass(memrl.NotFoundError, KeyError)
    assert issubclass(memrl.IoError, OSError)
    assert issubclass(memrl.BankLockedError, memrl.ConflictError)
    for cls in (
        memrl.InvalidInputError,
        memrl.NotFoundError,
        memrl.ConflictError,
        memrl.OverloadedError,
        memrl.CorruptError,
        memrl.IoError,
        memrl.InternalError,
    ):
        assert issubclass(cls, memrl.Error)
