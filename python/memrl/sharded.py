"""``memrl.sharded.ShardedBank``: one logical bank held by several shards (each a
:class:`memrl.Bank` with its own snapshot and write-ahead log), behind one handle with the
methods of :class:`memrl.Bank`, that returns exactly what one bank holding every memory returns.

The handle (the coordinator) makes every decision a single bank makes, with the engine's own
code (``memrl::shard``):

- **retrieve**: every shard recalls its best ``k1`` keys at or above ``delta`` with their
  members; the handle keeps the global best ``k1`` (ties to the lower key id), pools them and runs
  Phase B once, so ties and seeded exploration are those of one bank. It issues the retrieval ids.
- **add**: memory ids and key ids are global and chosen here: each new intent's nearest key is
  looked up on every shard, intent sharing follows the bank's rule, and a memory goes to the
  shard of its key. **New keys go to the shard with the fewest keys** (counting the keys placed
  earlier in the same add; ties to the lowest shard index), which keeps the shards within one key
  of each other while nothing is removed.
- **feedback** reaches the shards that own the memories; each shard applies its part atomically.
  The part of the first shard is applied alone first, so an invalid batch (a reward the learning
  config refuses) is refused whole. If a shard then fails (it died, its disk failed), the other
  shards' parts may be applied: a :class:`ShardedWriteError` (an
  :class:`memrl.OutcomeUnknownError`) says which shards acknowledged, which failed and which are
  unknown, and the batch is never reported as applied. Retrying it could apply a part twice.
- **stats**, ``len``, ``get``, ``remove``, configs, ``checkpoint`` and ``close`` fan out.

The shards are reached through a transport: :class:`LocalShards` (banks in this process, for
tests and small setups) or ``memrl.ray`` (each shard a Ray actor, restarted by Ray and reopened
from its snapshot and log). One handle writes to a set of shards: it serialises its adds, and
two handles adding to the same shards at once could give two memories the same id.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np

from memrl import _errors
from memrl._memrl import (
    Bank,
    Embedder,
    Memory,
    OutcomeReport,
    Retrieval,
    Stats,
    _merge_recalls,
    _outcome_report,
    _place,
    _retrievals,
    _shard_stats,
)

if TYPE_CHECKING:
    from memrl._memrl import LearningConfig, RetrievalConfig

__all__ = ["ShardServer", "LocalShards", "ShardedBank", "ShardedWriteError", "Transport"]

#: The methods of :class:`ShardServer` a transport may call.
SHARD_CALLS = frozenset({"call", "owned", "info", "key_counts", "get_many"})

#: Retrievals remembered for feedback by retrieval id (the oldest is forgotten first).
DEFAULT_PENDING = 65536


class ShardedWriteError(_errors.OutcomeUnknownError):
    """A write that reached several shards failed on some: ``acknowledged`` shards applied their
    part, ``failed`` ones did not (their error in ``errors``), ``unknown`` ones may have. Never a
    success, and not safe to retry blindly."""

    def __init__(
        self,
        message: str,
        acknowledged: list[int],
        failed: list[int],
        unknown: list[int],
        errors: dict[int, BaseException],
    ) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged
        self.failed = failed
        self.unknown = unknown
        self.errors = errors


class ShardServer:
    """What a shard answers: a :class:`memrl.Bank` and the shard protocol over it. A Ray actor
    of ``memrl.ray`` is one of these; :class:`LocalShards` holds them in process."""

    def __init__(self, path: str | None, options: Mapping[str, Any]) -> None:
        options = dict(options)
        if path is None:
            self.bank = Bank.in_memory(**options)
        else:
            self.bank = Bank.open(path, **options)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls the bank's ``method`` (the protocol's private ones included)."""
        if method.startswith("__"):
            raise _errors.InvalidInputError(f"method: {method!r} is not a shard call")
        return getattr(self.bank, method)(*args, **kwargs)

    def owned(self, ids: Sequence[int]) -> list[bool]:
        """Whether each id is a memory of this shard."""
        return [i in self.bank for i in ids]

    def get_many(self, ids: Sequence[int]) -> list[Memory | None]:
        """The records of memories ``ids`` (None for one this shard does not hold)."""
        return [self.bank.get(i) for i in ids]

    def key_counts(self) -> tuple[int, int]:
        """Intent keys, and those shared by more than one memory."""
        s = self.bank.stats(1, 0)
        return s.intents, s.shared_intents

    def info(self) -> dict[str, Any]:
        """What the coordinator reads when it opens: configs and counters."""
        b = self.bank
        return {
            "config": b.config,
            "retrieval": b.retrieval_config,
            "learning": b.learning_config,
            "next_id": b.next_id,
            "next_key_id": b._next_key_id(),
            "intents": b.num_intents,
            "memories": len(b),
        }


class Transport(Protocol):
    """How a coordinator reaches its shards: submit calls, then gather each call's result or
    its exception (never raising for a shard's failure)."""

    def __len__(self) -> int: ...

    def submit(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def gather(self, handles: Sequence[Any]) -> list[Any | BaseException]: ...

    def is_unknown(self, error: BaseException) -> bool:
        """Whether a write that raised ``error`` may have been applied (the shard died)."""
        ...

    def close(self) -> None: ...


class LocalShards:
    """Shards in this process: ``paths`` (one bank file each, ``None`` for in memory) opened
    with the same ``Bank.open`` options."""

    def __init__(self, paths: Sequence[str | None], **options: Any) -> None:
        if not paths:
            raise _errors.InvalidInputError("paths: a sharded bank needs at least one shard")
        self.servers = [ShardServer(None if p is None else str(p), options) for p in paths]

    def __len__(self) -> int:
        return len(self.servers)

    def submit(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        server = self.servers[shard]
        if method not in SHARD_CALLS:
            raise _errors.InvalidInputError(f"method: {method!r} is not a shard call")
        try:
            return getattr(server, method)(*args, **kwargs)
        except BaseException as e:  # gathered, as a remote call's failure would be
            return _Failed(e)

    def gather(self, handles: Sequence[Any]) -> list[Any | BaseException]:
        return [h.error if isinstance(h, _Failed) else h for h in handles]

    def is_unknown(self, error: BaseException) -> bool:
        return isinstance(error, _errors.OutcomeUnknownError)

    def close(self) -> None:
        for s in self.servers:
            s.bank.close()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _rows(value: Any, dim: int, what: str) -> np.ndarray:
    rows = np.ascontiguousarray(value, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise _errors.InvalidInputError(
            f"{what}: expected shape (n, {dim}) or ({dim},), got {np.shape(value)}"
        )
    return rows


def _as_list(value: Any, n: int, field: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise _errors.InvalidInputError(f"{field}: {len(value)} values given for {n} memories")
        return list(value)
    return [value] * n


class ShardedBank:
    """One bank over several shards, with the methods of :class:`memrl.Bank` (see the module
    docs). Build one with :meth:`local` or ``memrl.ray.sharded_bank``; every shard must have the
    same dimension, model and sharing threshold."""

    def __init__(
        self,
        transport: Transport,
        *,
        embedder: Embedder | None = None,
        pending: int = DEFAULT_PENDING,
    ) -> None:
        if len(transport) == 0:
            raise _errors.InvalidInputError("transport: a sharded bank needs at least one shard")
        self._t = transport
        self._embedder = embedder
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, list[int]] = OrderedDict()
        self._pending_cap = int(pending)
        infos = self._all("info")
        first = infos[0]["config"]
        for i, info in enumerate(infos):
            c = info["config"]
            if (c["dim"], c["model_id"], c["dedup_sim"]) != (
                first["dim"],
                first["model_id"],
                first["dedup_sim"],
            ):
                raise _errors.InvalidInputError(
                    f"shard {i}: dimension, model or dedup_sim {c} differs from shard 0's {first}"
                )
        if embedder is not None and embedder.dim != first["dim"]:
            raise _errors.InvalidInputError(
                f"embedder: dimension {embedder.dim}, the shards' {first['dim']}"
            )
        self._config: dict[str, Any] = dict(first)
        self._retrieval: dict[str, Any] = dict(infos[0]["retrieval"])
        self._learning: dict[str, Any] = dict(infos[0]["learning"])
        self._next_id = max(int(i["next_id"]) for i in infos)
        self._next_key_id = max(int(i["next_key_id"]) for i in infos)
        self._keys = [int(i["intents"]) for i in infos]

    @classmethod
    def local(
        cls,
        paths: Sequence[str | None],
        *,
        embedder: Embedder | None = None,
        **options: Any,
    ) -> ShardedBank:
        """Shards in this process, each opened with ``memrl.Bank.open(path, **options)``
        (``None``: in memory)."""
        return cls(LocalShards(paths, **options), embedder=embedder)

    # ---- fan-out ----

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Calls every shard; raises the first shard's error (for reads and checks)."""
        results = self._t.gather(
            [self._t.submit(s, method, *args, **kwargs) for s in range(len(self._t))]
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def _write(self, parts: Mapping[int, Callable[[], Any]], what: str) -> dict[int, Any]:
        """Sends a write in parts to shards: the lowest shard's part alone first (a refusal then
        refuses the whole write), then the rest together. A failure after the first part raises
        :class:`ShardedWriteError`."""
        order = sorted(parts)
        if not order:
            return {}
        first = order[0]
        (result,) = self._t.gather([parts[first]()])
        if isinstance(result, BaseException):
            if self._t.is_unknown(result):
                raise ShardedWriteError(
                    f"{what}: shard {first} did not answer; its part may have been applied",
                    [],
                    [],
                    [first],
                    {first: result},
                ) from result
            raise result
        done = {first: result}
        rest = order[1:]
        results = self._t.gather([parts[s]() for s in rest])
        failed: list[int] = []
        unknown: list[int] = []
        errors: dict[int, BaseException] = {}
        for s, r in zip(rest, results, strict=True):
            if isinstance(r, BaseException):
                errors[s] = r
                (unknown if self._t.is_unknown(r) else failed).append(s)
            else:
                done[s] = r
        if errors:
            raise ShardedWriteError(
                f"{what}: applied on shards {sorted(done)}, failed on {failed}, unknown on "
                f"{unknown}: {next(iter(errors.values()))}",
                sorted(done),
                failed,
                unknown,
                errors,
            )
        return done

    def _owners(self, ids: Sequence[int]) -> dict[int, int]:
        """The shard of each id that exists."""
        owned = self._all("owned", list(ids))
        owners: dict[int, int] = {}
        for s, flags in enumerate(owned):
            for i, flag in zip(ids, flags, strict=True):
                if flag:
                    owners[i] = s
        return owners

    # ---- reading ----

    @property
    def num_shards(self) -> int:
        """How many shards hold the bank."""
        return len(self._t)

    @property
    def config(self) -> dict[str, Any]:
        """The shards' bank config (dimension, dtype, dedup_sim, model id)."""
        return dict(self._config)

    @property
    def dim(self) -> int:
        """The dimension of intent keys."""
        return int(self._config["dim"])

    @property
    def retrieval_config(self) -> RetrievalConfig:
        """The stored retrieval config (the same on every shard)."""
        return cast("RetrievalConfig", dict(self._retrieval))

    @property
    def learning_config(self) -> LearningConfig:
        """The stored learning config (the same on every shard)."""
        return cast("LearningConfig", dict(self._learning))

    @property
    def num_intents(self) -> int:
        """Intent keys over every shard."""
        return sum(self._key_counts())

    def _key_counts(self) -> list[int]:
        self._keys = [int(i["intents"]) for i in self._all("info")]
        return self._keys

    @property
    def next_id(self) -> int:
        """Where the next automatic memory id starts."""
        return self._next_id

    def shard_sizes(self) -> list[int]:
        """Memories held by each shard."""
        return [int(i["memories"]) for i in self._all("info")]

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def __contains__(self, id: object) -> bool:
        if isinstance(id, bool) or not isinstance(id, int):
            return False
        return any(flags[0] for flags in self._all("owned", [id]))

    def get(self, id: int) -> Memory | None:
        """Memory ``id``, or None."""
        for m in self._all("call", "get", id):
            if m is not None:
                return cast(Memory, m)
        return None

    def __getitem__(self, id: int) -> Memory:
        m = self.get(id)
        if m is None:
            raise _errors.NotFoundError(f"memory {id} not found")
        return m

    def stats(self, bins: int = 10, extremes: int = 5) -> Stats:
        """The stats one bank holding every memory gives (``memrl.Bank.stats``)."""
        pairs = self._all("call", "_q_by_id")
        counts = self._all("key_counts")
        ids = np.concatenate([np.asarray(p[0], dtype=np.uint64) for p in pairs])
        q = np.concatenate([np.asarray(p[1], dtype=np.float32) for p in pairs])
        return _shard_stats(
            ids,
            q,
            sum(c[0] for c in counts),
            sum(c[1] for c in counts),
            bins,
            extremes,
        )

    # ---- retrieval ----

    def _query_rows(self, queries: Any) -> tuple[np.ndarray, bool]:
        if isinstance(queries, str):
            return self._embed([queries]), True
        if isinstance(queries, (list, tuple)) and (not queries or isinstance(queries[0], str)):
            return self._embed(list(queries)), False
        one = np.ndim(queries) == 1
        return _rows(queries, self.dim, "queries"), one

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._embedder is None:
            raise _errors.InvalidInputError(
                "queries: texts need an embedder (ShardedBank(..., embedder=memrl.Embedder(...)))"
            )
        return np.ascontiguousarray(self._embedder.embed(texts), dtype=np.float32)

    def retrieve(self, queries: Any, **options: Any) -> Any:
        """Two-phase retrieval over every shard, as ``memrl.Bank.retrieve``: one str or vector
        gives one :class:`memrl.Retrieval`, a list of str or an ``(n, dim)`` array a list."""
        config = {**self._retrieval, **options}
        rows, one = self._query_rows(queries)
        if len(rows) == 0:
            _merge_recalls([], **config)  # checks the options
            return []
        # Under the lock: no memory picked from a recall is removed before its record is read.
        with self._lock:
            recalls = self._all("call", "_recall", rows, **config)
            picks = _merge_recalls(recalls, **config)
            wanted: dict[int, list[int]] = {}
            for query in picks:
                for shard, memory_id, *_ in query:
                    wanted.setdefault(shard, []).append(memory_id)
            shards = sorted(wanted)
            got = self._t.gather([self._t.submit(s, "get_many", wanted[s]) for s in shards])
            records: dict[tuple[int, int], Memory] = {}
            for s, found in zip(shards, got, strict=True):
                if isinstance(found, BaseException):
                    raise found
                for memory_id, m in zip(wanted[s], found, strict=True):
                    if m is None:
                        raise _errors.InternalError(f"shard {s} lost memory {memory_id}")
                    records[(s, memory_id)] = m
            ids = [secrets.randbits(63) for _ in range(len(rows))]
            retrievals = _retrievals(
                picks, [[records[(p[0], p[1])] for p in query] for query in picks], ids
            )
        with self._lock:
            for r in retrievals:
                self._pending[r.id] = r.memory_ids
                while len(self._pending) > self._pending_cap:
                    self._pending.popitem(last=False)
        return retrievals[0] if one else retrievals

    # ---- writes ----

    def add(
        self,
        intents: str | Sequence[str],
        experiences: str | Sequence[str],
        *,
        embeddings: Any = None,
        success: Any = None,
        q: Any = None,
        ids: Any = None,
        metadata: Any = None,
    ) -> Any:
        """Adds memories as ``memrl.Bank.add``: the same ids, keys and sharing one bank would
        give; each memory goes to the shard of its key."""
        one = isinstance(intents, str)
        intent_list: list[str] = (
            [intents] if isinstance(intents, str) else [str(t) for t in intents]
        )
        experience_list: list[str] = (
            [experiences] if isinstance(experiences, str) else [str(t) for t in experiences]
        )
        n = len(intent_list)
        if len(experience_list) != n:
            raise _errors.InvalidInputError(
                f"experiences: {len(experience_list)} experiences given for {n} intents"
            )
        if n == 0:
            return []
        rows = (
            self._embed(intent_list)
            if embeddings is None
            else _rows(embeddings, self.dim, "embeddings")
        )
        if len(rows) != n:
            raise _errors.InvalidInputError(
                f"embeddings: {len(rows)} vectors given for {n} memories"
            )
        success_l = _as_list(success if success is not None else False, n, "success")
        q_l = _as_list(q, n, "q")
        meta_l = _as_list(metadata, n, "metadata")
        given = [None] * n if ids is None else _as_list(ids if not one else [ids], n, "ids")
        with self._lock:
            memory_ids = self._assign_ids(given)
            dedup = float(self._config["dedup_sim"])
            best: list[tuple[int, float] | None] = [None] * n
            key_shard: dict[int, int] = {}
            if dedup < 1.0:
                found = self._all("call", "_search_keys", rows, 1, dedup)
                for s, per_row in enumerate(found):
                    for i, matches in enumerate(per_row):
                        for key, sim in matches:
                            key_shard[key] = s
                            b = best[i]
                            if b is None or sim > b[1] or (sim == b[1] and key < b[0]):
                                best[i] = (key, sim)
            placed = _place(rows.ravel(), self.dim, best, dedup, self._next_key_id)
            counts = list(self._keys)
            shard_of: list[int] = []
            for is_new, key in placed:
                if is_new:
                    s = min(range(len(counts)), key=lambda j: (counts[j], j))
                    counts[s] += 1
                    key_shard[key] = s
                shard_of.append(key_shard[key])
            parts: dict[int, Callable[[], Any]] = {}
            for s in sorted(set(shard_of)):
                idx = [i for i in range(n) if shard_of[i] == s]
                parts[s] = self._add_part(
                    s,
                    idx,
                    intent_list,
                    experience_list,
                    rows,
                    memory_ids,
                    placed,
                    success_l,
                    q_l,
                    meta_l,
                )
            # Ids and key ids are spent before the write: after a part-applied add they may be
            # on a shard, and a later add must never hand them out again (a gap is harmless).
            self._next_id = max([self._next_id] + [i + 1 for i in memory_ids if i != 2**64 - 1])
            new_keys = [key for is_new, key in placed if is_new]
            if new_keys:
                self._next_key_id = max(new_keys) + 1
            try:
                self._write(parts, "add")
            except ShardedWriteError:
                # Which parts landed is unknown here; the key counts (balance only) are read back
                # when the shards answer.
                with contextlib.suppress(Exception):
                    self._key_counts()
                raise
            self._keys = counts
        return memory_ids[0] if one else memory_ids

    def _add_part(
        self,
        s: int,
        idx: list[int],
        intents: list[str],
        experiences: list[str],
        rows: np.ndarray,
        ids: list[int],
        placed: list[tuple[bool, int]],
        success: list[Any],
        q: list[Any],
        metadata: list[Any],
    ) -> Callable[[], Any]:
        def send() -> Any:
            return self._t.submit(
                s,
                "call",
                "_add_placed",
                [intents[i] for i in idx],
                [experiences[i] for i in idx],
                embeddings=np.ascontiguousarray(rows[idx]),
                ids=[ids[i] for i in idx],
                keys=[placed[i] for i in idx],
                success=[success[i] for i in idx],
                q=[q[i] for i in idx],
                metadata=[metadata[i] for i in idx],
            )

        return send

    def _assign_ids(self, given: list[Any]) -> list[int]:
        """The id of each memory: its own, or the next free one (as a bank counts them)."""
        explicit = [i for i in given if i is not None]
        for i in explicit:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**64:
                raise _errors.InvalidInputError(f"ids: {i!r} is not a memory id")
        taken = set(self._owners(explicit)) if explicit else set()
        explicit_set = set(explicit)
        out: list[int] = []
        seen: set[int] = set()
        cursor = self._next_id
        for i in given:
            if i is None:
                while cursor in explicit_set or cursor in seen:
                    cursor += 1
                if cursor >= 2**64:
                    raise _errors.InvalidInputError(
                        "ids: automatic ids are exhausted (a sharded bank does not wrap them)"
                    )
                i = cursor
                cursor += 1
            if i in taken or i in seen:
                raise _errors.ConflictError(f"memory id {i} is already in use")
            seen.add(i)
            out.append(i)
        return out

    def remove(self, id: int) -> Memory:
        """Removes memory ``id`` from its shard and returns it."""
        with self._lock:
            owner = self._owners([id]).get(id)
            if owner is None:
                raise _errors.NotFoundError(f"memory {id} not found")
            done = self._write(
                {owner: functools.partial(self._t.submit, owner, "call", "remove", id)}, "remove"
            )
            self._key_counts()
            return cast(Memory, done[owner])

    def apply_outcomes(self, outcomes: Sequence[tuple[Sequence[int], float]]) -> OutcomeReport:
        """A batch of outcomes by memory ids; an unknown id refuses the whole batch."""
        batch = [(list(ids), reward) for ids, reward in outcomes]
        owners = self._owners(sorted({i for ids, _ in batch for i in ids}))
        for ids, _ in batch:
            for i in ids:
                if i not in owners:
                    raise _errors.NotFoundError(f"memory {i} not found")
        return self._outcomes(batch, owners, skipped=0)

    def _check_rewards(self, batch: list[tuple[list[int], Any]]) -> int:
        """Checks every reward as a bank would (finite; inside the reward range unless the
        config clamps) before any shard is asked, and counts the clamped ones."""
        rng = self._learning.get("reward_range")
        policy = self._learning.get("out_of_range")
        clamped = 0
        for index, (_, reward) in enumerate(batch):
            if isinstance(reward, bool) or not isinstance(reward, (int, float, np.floating)):
                raise TypeError(f"reward: expected a number, got {type(reward).__name__}")
            r = np.float32(reward)
            if not np.isfinite(r):
                raise _errors.InvalidInputError(
                    f"outcome {index}: reward {reward} is not a finite number"
                )
            if rng is not None and not (np.float32(rng[0]) <= r <= np.float32(rng[1])):
                if policy == "clamp":
                    clamped += 1
                else:
                    raise _errors.InvalidInputError(
                        f"outcome {index}: reward {reward} is outside the configured reward range"
                    )
        return clamped

    def _outcomes(
        self, batch: list[tuple[list[int], Any]], owners: dict[int, int], skipped: int
    ) -> OutcomeReport:
        clamped = self._check_rewards(batch)
        per_shard: dict[int, list[tuple[list[int], Any]]] = {}
        for ids, reward in batch:
            by_shard: dict[int, list[int]] = {}
            for i in ids:
                by_shard.setdefault(owners[i], []).append(i)
            for s, part in by_shard.items():
                per_shard.setdefault(s, []).append((part, reward))
        parts = {
            s: functools.partial(self._t.submit, s, "call", "apply_outcomes", b)
            for s, b in per_shard.items()
        }
        done = self._write(parts, "feedback")
        reports = list(done.values())
        return _outcome_report(
            len(batch),
            sum(r.updates for r in reports),
            sum(r.memories for r in reports),
            clamped,
            skipped,
        )

    def feedback(
        self,
        retrieval: int | Retrieval | None = None,
        *,
        reward: float,
        memory_ids: Sequence[int] | None = None,
    ) -> OutcomeReport:
        """Reports an episode's reward for a retrieval (``r`` or ``r.id``) or ``memory_ids``."""
        if (retrieval is None) == (memory_ids is None):
            raise _errors.InvalidInputError(
                "feedback: give a retrieval or memory_ids=, exactly one of them"
            )
        if memory_ids is not None:
            return self.apply_outcomes([(list(memory_ids), reward)])
        return self.feedback_many([(cast("int | Retrieval", retrieval), reward)])

    def feedback_many(self, rewards: Sequence[tuple[int | Retrieval, float]]) -> OutcomeReport:
        """``feedback`` for several retrievals; each retrieval's feedback is applied once."""
        keys = [r.id if isinstance(r, Retrieval) else int(r) for r, _ in rewards]
        with self._lock:
            missing = [k for k in keys if k not in self._pending]
            if missing or len(set(keys)) != len(keys):
                raise _errors.NotFoundError(
                    f"retrieval {missing[0] if missing else keys[0]} is unknown, expired or "
                    "already reported"
                )
            taken = {k: self._pending.pop(k) for k in keys}
        try:
            every = sorted({i for ids in taken.values() for i in ids})
            owners = self._owners(every)
            batch, skipped = [], 0
            for k, (_, reward) in zip(keys, rewards, strict=True):
                present = [i for i in taken[k] if i in owners]
                skipped += len(taken[k]) - len(present)
                batch.append((present, reward))
            return self._outcomes(batch, owners, skipped)
        except ShardedWriteError:
            raise  # partly applied: the retrievals are not given back
        except BaseException:
            with self._lock:
                for k in keys:
                    self._pending[k] = taken[k]
            raise

    def set_retrieval_config(self, **options: Any) -> None:
        """Changes the stored retrieval config on every shard."""
        config = {**self._retrieval, **options}
        _merge_recalls([], **config)  # checks the options before any shard changes
        self._write(
            {
                s: functools.partial(self._t.submit, s, "call", "set_retrieval_config", **options)
                for s in range(len(self._t))
            },
            "set_retrieval_config",
        )
        self._retrieval = dict(self._all("info")[0]["retrieval"])

    def set_learning_config(self, **options: Any) -> None:
        """Changes the stored learning config on every shard."""
        self._write(
            {
                s: functools.partial(self._t.submit, s, "call", "set_learning_config", **options)
                for s in range(len(self._t))
            },
            "set_learning_config",
        )
        self._learning = dict(self._all("info")[0]["learning"])

    def checkpoint(self) -> None:
        """Checkpoints every shard (snapshot written, log emptied)."""
        self._all("call", "checkpoint")

    def close(self) -> None:
        """Closes every shard."""
        self._t.close()

    def __enter__(self) -> ShardedBank:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> Literal[False]:
        try:
            if exc_type is None:
                self.checkpoint()
        finally:
            self.close()
        return False

    def __repr__(self) -> str:
        return f"ShardedBank(shards={len(self._t)}, dim={self.dim})"
