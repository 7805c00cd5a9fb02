"""memrl on Ray (``pip install memrl[ray]``): a sharded bank whose shards are Ray actors, and
bulk embedding of a Ray dataset by a pool of embedder actors.

A sharded bank::

    import ray, memrl.ray
    ray.init()
    bank = memrl.ray.sharded_bank("/data/fleet", shards=4, dim=384, model_id="all-MiniLM-L6-v2")
    ids = bank.add(intents, experiences, embeddings=vectors)
    r = bank.retrieve(query_vector)
    bank.feedback(r, reward=1.0)

Each shard is a Ray actor owning one durable :class:`memrl.Bank` (``<directory>/shard-<i>``:
its snapshot and write-ahead log on the actor's node). Ray restarts a shard actor that dies
(``max_restarts=-1``) and it reopens from its snapshot and log, so nothing acknowledged is lost.
Reads are retried while it restarts; writes never are (a write in flight when a shard dies
raises :class:`memrl.sharded.ShardedWriteError`). The handle is a
:class:`memrl.sharded.ShardedBank`: the same results as one bank (see that module).

Bulk embedding::

    ds = ray.data.read_json("corpus.jsonl")
    memrl.ray.embed_dataset(ds, "text", "corpus.safetensors", workers=4)

writes the file ``memrl embed`` writes for the same rows (``embeddings`` and ``lines``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import ray.exceptions

from memrl import _errors
from memrl._memrl import Embedder, _EmbeddingWriter
from memrl.sharded import SHARD_CALLS, ShardedBank, ShardServer

__all__ = ["RayShards", "sharded_bank", "embed_dataset"]

#: How long a read waits for a restarting shard actor before it gives up (seconds).
READ_RETRY_SECONDS = 60.0


class RayShards:
    """The transport of a :class:`memrl.sharded.ShardedBank` whose shards are Ray actors."""

    def __init__(self, actors: Sequence[Any]) -> None:
        self.actors = list(actors)

    def __len__(self) -> int:
        return len(self.actors)

    def submit(self, shard: int, method: str, *args: Any, **kwargs: Any) -> Any:
        if method not in SHARD_CALLS:
            raise _errors.InvalidInputError(f"method: {method!r} is not a shard call")
        return (
            getattr(self.actors[shard], method).remote(*args, **kwargs),
            shard,
            method,
            args,
            kwargs,
        )

    def gather(self, handles: Sequence[Any]) -> list[Any | BaseException]:
        out: list[Any | BaseException] = []
        for ref, shard, method, args, kwargs in handles:
            out.append(self._get(ref, shard, method, args, kwargs))
        return out

    def _get(self, ref: Any, shard: int, method: str, args: Any, kwargs: Any) -> Any:
        write = method == "call" and not _is_read(args)
        deadline = time.monotonic() + READ_RETRY_SECONDS
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, BaseException) else e
                return cause
            except ray.exceptions.RayActorError as e:
                if write or time.monotonic() > deadline:
                    return e
                # A read: the actor is restarting; ask again once it is back.
                time.sleep(0.2)
                ref = getattr(self.actors[shard], method).remote(*args, **kwargs)

    def is_unknown(self, error: BaseException) -> bool:
        return isinstance(error, (ray.exceptions.RayActorError, _errors.OutcomeUnknownError))

    def close(self) -> None:
        refs = [a.call.remote("close") for a in self.actors]
        for r in refs:
            try:
                ray.get(r)
            except ray.exceptions.RayError:
                pass
        for a in self.actors:
            ray.kill(a, no_restart=True)


#: Shard calls that change nothing (retried while a shard restarts).
_READS = frozenset(
    {"_recall", "_search_keys", "_next_key_id", "_q_by_id", "get", "stats", "checkpoint"}
)


def _is_read(args: Any) -> bool:
    return bool(args) and args[0] in _READS


def sharded_bank(
    directory: str | os.PathLike[str],
    shards: int,
    *,
    embedder: Embedder | None = None,
    actor_options: Mapping[str, Any] | None = None,
    **open_options: Any,
) -> ShardedBank:
    """Opens (or creates) the sharded bank in ``directory`` with ``shards`` shard actors, each
    opening ``<directory>/shard-<i>.safetensors`` with ``memrl.Bank.open(path, **open_options)``
    (``dim``, ``model_id``, ``dedup_sim``, ``sync``, ...). ``actor_options`` go to the actors'
    ``.options()`` (``num_cpus``, ``num_gpus``, ``resources``, a scheduling strategy...). The
    directory must be reachable where each actor runs (a shared or node-local disk that the
    actor is pinned to). Reopening a directory with another number of shards is an error."""
    if shards < 1:
        raise _errors.InvalidInputError(f"shards: {shards}, must be at least 1")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in root.glob("shard-*.safetensors"))
    expected = [f"shard-{i}.safetensors" for i in range(shards)]
    if existing and existing != sorted(expected):
        raise _errors.InvalidInputError(
            f"shards: {directory} holds {len(existing)} shards ({', '.join(existing)}), "
            f"not {shards}"
        )
    options = {"max_restarts": -1, "max_task_retries": 0, **dict(actor_options or {})}
    actor = ray.remote(ShardServer).options(**options)
    actors = [actor.remote(str(root / name), open_options) for name in expected]
    return ShardedBank(RayShards(actors), embedder=embedder)


class _EmbedWorker:
    """A Ray Data worker: one embedder, loaded once per actor."""

    def __init__(
        self,
        model: str,
        precision: Literal["f32", "int8"],
        column: str,
        fail_once: str | None,
    ) -> None:
        self.embedder = Embedder(model, precision=precision)
        self.column = column
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fail_once is not None and not os.path.exists(self.fail_once):
            # Fault injection for the tests: the first batch any worker takes kills it.
            Path(self.fail_once).touch()
            os._exit(1)
        texts = [str(t) for t in batch[self.column]]
        vectors = (
            self.embedder.embed(texts) if texts else np.zeros((0, self.embedder.dim), np.float32)
        )
        return {"embedding": np.asarray(vectors, dtype=np.float32)}


def embed_dataset(
    dataset: Any,
    column: str,
    out: str | os.PathLike[str],
    *,
    model: str = "all-MiniLM-L6-v2",
    precision: Literal["f32", "int8"] = "f32",
    workers: int = 1,
    batch_size: int = 1024,
    num_cpus: float = 1,
    num_gpus: float = 0,
    _fail_once: str | None = None,
) -> int:
    """Embeds column ``column`` of a Ray dataset with ``workers`` embedder actors (each
    reserving ``num_cpus`` CPUs and ``num_gpus`` GPUs: leave a CPU free for the tasks that read
    the dataset, or the pool waits for it forever; batches of ``batch_size`` rows, which each
    worker cuts by tokens) and writes ``out`` as ``memrl embed`` does: ``embeddings`` (N x d,
    in the dataset's order) and ``lines`` (1-based row numbers), with the model, precision and
    column in its metadata.
    Returns the number of rows. A worker that dies has its batch run again by Ray Data (its
    actor restarted); the order is kept, so no row is lost or written twice."""
    names = dataset.schema().names
    if column not in names:
        raise _errors.InvalidInputError(
            f"column: {column!r} is not a column of the dataset ({', '.join(names)})"
        )
    dim = Embedder(model, precision=precision).dim
    embedded = dataset.select_columns([column]).map_batches(
        _EmbedWorker,
        fn_constructor_kwargs={
            "model": model,
            "precision": precision,
            "column": column,
            "fail_once": _fail_once,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    metadata = {
        "model": model,
        "dim": str(dim),
        "precision": precision,
        "input": "ray dataset",
        "field": column,
    }
    # Rows come back in the dataset's order (a dataset carries the context it was made with).
    embedded.context.execution_options.preserve_order = True
    writer = _EmbeddingWriter(str(out), dim, metadata)
    line = 1
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        rows = np.ascontiguousarray(
            np.asarray(batch["embedding"], dtype=np.float32).reshape(-1, dim)
        )
        lines = np.arange(line, line + len(rows), dtype=np.uint64)
        writer.append(rows, lines)
        line += len(rows)
    return int(writer.finish())
