"""memrl.sharded.ShardedBank against one bank: the same sequence of adds, retrievals, feedback,
removals and config changes gives the same hits in the same order, the same Q and the same stats
on 1, 2 and 3 shards (shared intents, exact ties, seeded exploration, explicit ids); a refused
batch changes no shard; a shard failing in the middle of a multi-shard write is reported with
what was applied, never as a success."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import memrl
import numpy as np
import pytest
from memrl.sharded import LocalShards, ShardedBank, ShardedWriteError, _Failed

DIM = 6


def same_state(one: memrl.Bank, sharded: ShardedBank) -> None:
    assert len(one) == len(sharded)
    assert one.num_intents == sharded.num_intents
    for m in one.memories():
        other = sharded.get(m.id)
        assert other is not None, m.id
        d, e = m.to_dict(), other.to_dict()
        # Times are each bank's clock; everything else is exact.
        for t in ("created_ms", "updated_ms"):
            d.pop(t), e.pop(t)
        assert d == e
    assert one.stats(bins=7, extremes=4).to_dict() == sharded.stats(bins=7, extremes=4).to_dict()


def hits(r: Any) -> list[dict[str, Any]]:
    return [h.to_dict() for h in r.hits]


class Sequence:
    """A random agent session, replayed on any number of banks."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        # Few directions on a coarse grid: many exact similarity ties and shared intents.
        self.basis = self.np.integers(-2, 3, size=(12, DIM)).astype(np.float32)
        self.basis[np.all(self.basis == 0, axis=1)] = 1.0

    def vectors(self, n: int) -> np.ndarray:
        picks = self.basis[self.np.integers(0, len(self.basis), size=n)]
        noise = self.np.random((n, DIM)).astype(np.float32) * (self.rng.random() < 0.5) * 0.05
        return np.ascontiguousarray(picks + noise, dtype=np.float32)

    def steps(self, count: int) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        # Explicit ids count down from far above the automatic ones, so they never collide.
        next_explicit = 2**40 - self.seed * 1_000_000
        for step in range(count):
            kind = self.rng.choices(
                ["add", "retrieve", "feedback", "outcomes", "remove", "config"],
                [4, 4, 3, 1, 1, 1],
            )[0]
            if step < 3:
                kind = "add"
            if kind == "add":
                n = self.rng.randint(1, 6)
                ids: list[int | None] | None = None
                if self.rng.random() < 0.2:
                    ids = [None] * n
                    ids[self.rng.randrange(n)] = next_explicit
                    next_explicit -= self.rng.randint(1, 50)
                out.append(
                    (
                        "add",
                        dict(
                            intents=[f"intent {step}.{i}" for i in range(n)],
                            experiences=[f"experience {step}.{i}" for i in range(n)],
                            embeddings=self.vectors(n),
                            success=[self.rng.random() < 0.5 for _ in range(n)],
                            q=[
                                None if self.rng.random() < 0.7 else self.rng.uniform(-1, 1)
                                for _ in range(n)
                            ],
                            ids=ids,
                            metadata=[
                                {"step": step} if self.rng.random() < 0.3 else None
                                for _ in range(n)
                            ],
                        ),
                    )
                )
            elif kind == "retrieve":
                options: dict[str, Any] = {
                    "k1": self.rng.randint(1, 6),
                    "k2": self.rng.randint(1, 5),
                }
                if self.rng.random() < 0.5:
                    options.update(epsilon=0.4, seed=self.rng.randrange(1000))
                if self.rng.random() < 0.3:
                    options["q_min"] = -0.5
                if self.rng.random() < 0.3:
                    options["lambda_"] = self.rng.choice([0.0, 0.5, 0.9])
                choice = self.rng.random()
                if choice < 0.2:
                    options.update(thompson=0.5, seed=self.rng.randrange(1000))
                elif choice < 0.35:
                    options["ucb"] = 0.3
                if self.rng.random() < 0.3:
                    options["sim_margin"] = self.rng.choice([0.0, 0.1, 0.4])
                out.append(("retrieve", (self.vectors(self.rng.randint(1, 8)), options)))
            elif kind == "feedback":
                out.append(("feedback", self.rng.choice([-1.0, 0.0, 1.0, 0.5])))
            elif kind == "outcomes":
                out.append(("outcomes", self.rng.random()))
            elif kind == "remove":
                out.append(("remove", self.rng.random()))
            else:
                out.append(
                    (
                        "config",
                        dict(
                            delta=self.rng.choice([-1.0, 0.0, 0.3]),
                            lambda_=self.rng.choice([0.3, 0.5]),
                        ),
                    )
                )
        return out


def run_both(one: memrl.Bank, sharded: ShardedBank, seed: int, count: int = 60) -> None:
    seq = Sequence(seed)
    last: list[tuple[Any, Any]] = []
    for kind, arg in seq.steps(count):
        if kind == "add":
            a = one.add(**arg)
            b = sharded.add(**arg)
            assert a == b
        elif kind == "retrieve":
            rows, options = arg
            ra = one.retrieve(rows, **options)
            rb = sharded.retrieve(rows, **options)
            assert [hits(r) for r in ra] == [hits(r) for r in rb]
            last = list(zip(ra, rb, strict=True))
        elif kind == "feedback" and last:
            ra, rb = last.pop()
            assert (
                one.feedback(ra, reward=arg).to_dict() == sharded.feedback(rb, reward=arg).to_dict()
            )
        elif kind == "outcomes" and len(one) > 0:
            ids = sorted(m.id for m in one.memories())
            chosen = ids[: max(1, int(arg * len(ids)) // 3)]
            batch = [(chosen, 1.0), (chosen[::2], -1.0)]
            assert one.apply_outcomes(batch).to_dict() == sharded.apply_outcomes(batch).to_dict()
        elif kind == "remove" and len(one) > 1:
            ids = sorted(m.id for m in one.memories())
            victim = ids[int(arg * len(ids))]
            assert one.remove(victim).id == sharded.remove(victim).id
        elif kind == "config":
            one.set_retrieval_config(**arg)
            sharded.set_retrieval_config(**arg)
    same_state(one, sharded)


#: The paper's learning rule, and the learning options beside it.
LEARNING: list[dict[str, Any]] = [{}, {"baseline_rate": 0.3, "q_init_failure": -0.5}]


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("learning", range(len(LEARNING)))
def test_sharded_gives_what_one_bank_gives(shards: int, seed: int, learning: int) -> None:
    for dedup in (0.95, 1.0):
        one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=dedup)
        sharded = ShardedBank.local([None] * shards, dim=DIM, model_id="toy", dedup_sim=dedup)
        if LEARNING[learning]:
            one.set_learning_config(**LEARNING[learning])
            sharded.set_learning_config(**LEARNING[learning])
        run_both(one, sharded, seed)


def test_new_keys_balance_the_shards() -> None:
    sharded = ShardedBank.local([None] * 3, dim=DIM, model_id="toy", dedup_sim=1.0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        n = 7
        sharded.add(
            ["i"] * n, ["e"] * n, embeddings=rng.standard_normal((n, DIM)).astype(np.float32)
        )
    sizes = sharded.shard_sizes()
    assert sum(sizes) == 70 and max(sizes) - min(sizes) <= 1


def test_a_durable_sharded_bank_reopens_as_it_was(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"shard-{i}.safetensors") for i in range(2)]
    one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=0.95)
    sharded = ShardedBank.local(paths, dim=DIM, model_id="toy", dedup_sim=0.95)
    run_both(one, sharded, seed=3, count=40)
    sharded.close()
    again = ShardedBank.local(paths)
    same_state(one, again)
    # The counters came back: the next add gets the ids and keys one bank gives.
    v = np.ones((2, DIM), dtype=np.float32)
    assert one.add(["a", "b"], ["x", "y"], embeddings=v) == again.add(
        ["a", "b"], ["x", "y"], embeddings=v
    )
    same_state(one, again)


def populated(shards: int = 2) -> tuple[memrl.Bank, ShardedBank]:
    one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=1.0)
    sharded = ShardedBank.local([None] * shards, dim=DIM, model_id="toy", dedup_sim=1.0)
    v = np.random.default_rng(1).standard_normal((12, DIM)).astype(np.float32)
    args = dict(intents=[f"i{i}" for i in range(12)], experiences=["e"] * 12, embeddings=v)
    one.add(**args)
    sharded.add(**args)
    return one, sharded


def test_a_refused_batch_changes_no_shard() -> None:
    one, sharded = populated()
    sharded.set_learning_config(reward_range=(-1.0, 1.0), out_of_range="reject")
    before = [m.to_dict() for m in (sharded.get(i) for i in range(12)) if m]
    # The out-of-range reward is the second outcome's, on whichever shard: refused whole.
    with pytest.raises(memrl.InvalidInputError):
        sharded.apply_outcomes([([0, 1, 2, 3], 1.0), ([4, 5, 6, 7], 2.0)])
    with pytest.raises(memrl.NotFoundError):
        sharded.apply_outcomes([([0, 1], 1.0), ([99], 1.0)])
    with pytest.raises(memrl.InvalidInputError):
        sharded.apply_outcomes([([0, 1], float("nan"))])
    after = [m.to_dict() for m in (sharded.get(i) for i in range(12)) if m]
    assert before == after
    with pytest.raises(memrl.ConflictError):
        sharded.add("dup", "e", embeddings=np.ones(DIM, np.float32), ids=3)
    assert len(sharded) == 12
    with pytest.raises(ValueError, match="k2"):
        sharded.retrieve(np.ones(DIM, np.float32), k2=0)
    with pytest.raises(ValueError):
        sharded.retrieve(np.ones(DIM + 1, np.float32))


class FailingShards(LocalShards):
    """Local shards whose shard `broken` fails its writes (a disk error, or a death)."""

    def __init__(self, *args: Any, broken: int, unknown: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broken, self.unknown, self.armed = broken, unknown, False
        self.fails = "apply_outcomes"

    def submit(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.armed and shard == self.broken and method == "call" and args[0] == self.fails:
            error: Exception = (
                memrl.OutcomeUnknownError("the shard died")
                if self.unknown
                else memrl.IoError("disk full")
            )
            return _Failed(error)
        return super().submit(shard, method, *args, **kwargs)


@pytest.mark.parametrize("unknown", [False, True])
def test_a_shard_failing_in_a_multi_shard_batch_is_reported_with_what_was_applied(
    unknown: bool,
) -> None:
    transport = FailingShards(
        [None] * 2, dim=DIM, model_id="toy", dedup_sim=1.0, broken=1, unknown=unknown
    )
    sharded = ShardedBank(transport)
    v = np.random.default_rng(1).standard_normal((12, DIM)).astype(np.float32)
    sharded.add([f"i{i}" for i in range(12)], ["e"] * 12, embeddings=v)
    on = [[i for i in range(12) if i in s.bank] for s in transport.servers]
    assert on[0] and on[1]
    r = sharded.retrieve(v[on[0][0]] + v[on[1][0]], k1=12, k2=12, delta=-1.0)
    assert {h.id for h in r.hits} & set(on[0]) and {h.id for h in r.hits} & set(on[1])
    transport.armed = True
    with pytest.raises(ShardedWriteError) as caught:
        sharded.feedback(r, reward=1.0)
    e = caught.value
    assert isinstance(e, memrl.OutcomeUnknownError)
    assert e.acknowledged == [0] and (e.unknown if unknown else e.failed) == [1]
    touched = set(r.memory_ids)
    for i in range(12):
        m = sharded[i]
        applied = i in touched and i in on[0]
        assert (m.visits, m.q) == ((1, pytest.approx(0.3)) if applied else (0, 0.0))
    # Partly applied: the retrieval is not given back, so a retry cannot apply shard 0's part twice.
    transport.armed = False
    with pytest.raises(memrl.NotFoundError):
        sharded.feedback(r, reward=1.0)


def test_a_feedback_refused_before_any_shard_keeps_its_retrieval() -> None:
    _, sharded = populated()
    sharded.set_learning_config(reward_range=(-1.0, 1.0), out_of_range="reject")
    r = sharded.retrieve(np.ones(DIM, np.float32), delta=-1.0)
    with pytest.raises(memrl.InvalidInputError):
        sharded.feedback(r, reward=5.0)
    assert sharded.feedback(r, reward=1.0).updates == len(r.hits)
    with pytest.raises(memrl.NotFoundError):
        sharded.feedback(r, reward=1.0)


def test_shards_must_agree() -> None:
    with pytest.raises(memrl.InvalidInputError, match="shard 1"):
        ShardedBank(
            _Mixed(),
        )


class _Mixed(LocalShards):
    def __init__(self) -> None:
        super().__init__([None], dim=DIM, model_id="toy")
        from memrl.sharded import ShardServer

        self.servers.append(ShardServer(None, {"dim": DIM + 1, "model_id": "toy"}))


def test_batches_over_eight_queries_agree_to_rounding() -> None:
    # Up to 8 queries a call, Phase A scores each key with the same kernel wherever it sits, and
    # the tests above compare bit for bit. Beyond 8 it is a tiled matrix product whose rounding
    # depends on the tile's layout, so a shard and one bank may differ in the last bits.
    rng = np.random.default_rng(4)
    one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=1.0)
    sharded = ShardedBank.local([None] * 3, dim=DIM, model_id="toy", dedup_sim=1.0)
    v = rng.standard_normal((60, DIM)).astype(np.float32)
    one.add(["i"] * 60, ["e"] * 60, embeddings=v)
    sharded.add(["i"] * 60, ["e"] * 60, embeddings=v)
    queries = rng.standard_normal((16, DIM)).astype(np.float32)
    both = zip(
        one.retrieve(queries, delta=-1.0), sharded.retrieve(queries, delta=-1.0), strict=True
    )
    for a, b in both:
        assert a.memory_ids == b.memory_ids
        np.testing.assert_allclose([h.sim for h in a.hits], [h.sim for h in b.hits], atol=1e-6)


def test_ids_of_a_part_applied_add_are_never_handed_out_again() -> None:
    transport = FailingShards(
        [None] * 2, dim=DIM, model_id="toy", dedup_sim=1.0, broken=1, unknown=True
    )
    transport.fails = "_add_placed"
    sharded = ShardedBank(transport)
    v = np.random.default_rng(2).standard_normal((8, DIM)).astype(np.float32)
    transport.armed = True
    with pytest.raises(ShardedWriteError) as caught:
        sharded.add([f"i{i}" for i in range(4)], ["e"] * 4, embeddings=v[:4])
    assert caught.value.acknowledged == [0]
    landed = [i for i in range(4) if i in transport.servers[0].bank]
    assert landed
    transport.armed = False
    ids = sharded.add([f"j{i}" for i in range(4)], ["e"] * 4, embeddings=v[4:])
    assert not set(ids) & set(range(4))
    assert len(sharded) == len(landed) + 4
