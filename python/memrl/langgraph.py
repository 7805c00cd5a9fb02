"""A LangGraph ``BaseStore`` over memrl banks: one bank per namespace.

LangGraph agents (and LangMem's memory tools) keep long-term memory in a ``BaseStore``. Pass a
:class:`MemrlStore` instead of ``InMemoryStore`` and their ``search`` becomes memrl's two-phase,
utility-ranked retrieval; call :meth:`MemrlStore.feedback` with the items an episode used and its
reward, and the items that help rise in later searches while those that mislead sink.

How items map to memories: each namespace is one :class:`memrl.Bank` (a file
``<root>/<namespace>.safetensors`` when the store has a root folder, else in memory). An item is
one memory: its *intent* (the text that is embedded) is the item's indexed fields (``fields``,
default the whole value as JSON), its *experience* is the value as JSON, and its key and
creation time are in the memory's metadata. Putting a key again replaces the memory and keeps
its learned Q. The store's contract is LangGraph's: a batch's reads see the store as it was
before the batch, its puts are applied at the end (the last put of a key wins); ``search``
without a query lists items in insertion order; with a query, it ranks them by memrl's score.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from memrl._errors import InvalidInputError
from memrl._memrl import Bank, Embedder, OutcomeReport

__all__ = ["MemrlStore", "StoreFeedback"]

_META = "langgraph"
_SUFFIX = ".safetensors"


def _file_name(namespace: tuple[str, ...]) -> str:
    """A namespace as a file name: each label percent-encoded (dots too), joined by dots."""
    labels = [urllib.parse.quote(label, safe="").replace(".", "%2E") for label in namespace]
    return ".".join(labels) + _SUFFIX


def _namespace(file_name: str) -> tuple[str, ...]:
    stem = file_name[: -len(_SUFFIX)]
    return tuple(urllib.parse.unquote(label) for label in stem.split("."))


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


@dataclass
class _Entry:
    """What the store knows of one item without reading its bank."""

    id: int
    created_ms: int
    updated_ms: int
    indexed: bool


@dataclass
class _Namespace:
    bank: Bank
    entries: dict[str, _Entry] = field(default_factory=dict)
    keys_by_id: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class StoreFeedback:
    """What :meth:`MemrlStore.feedback` changed: one report per namespace, and the items that
    were no longer in the store (deleted since they were read), which were skipped."""

    reports: dict[tuple[str, ...], OutcomeReport]
    missing: list[tuple[tuple[str, ...], str]]

    @property
    def updated(self) -> int:
        """Memories whose Q was updated."""
        return sum(r.memories for r in self.reports.values())


def _compare(value: Any, expected: Any) -> bool:
    """LangGraph's filter semantics: equality, nested dicts and lists, ``$`` operators."""
    if isinstance(expected, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in expected):
            return all(_operator(value, op, arg) for op, arg in expected.items())
        if not isinstance(value, dict):
            return False
        return all(_compare(value.get(k), v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(expected)
            and all(_compare(a, b) for a, b in zip(value, expected, strict=True))
        )
    return bool(value == expected)


def _operator(value: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return bool(value == arg)
    if op == "$ne":
        return bool(value != arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if value is None or isinstance(value, (dict, list, str, bool)):
            return False
        try:
            a, b = float(value), float(arg)
        except (TypeError, ValueError):
            return False
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise InvalidInputError(f"filter: unknown operator {op!r} (use $eq, $ne, $gt, $gte, $lt, $lte)")


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    pairs = (
        zip(namespace, path, strict=False)
        if condition.match_type == "prefix"
        else zip(reversed(namespace), reversed(path), strict=False)
    )
    return all(p == "*" or n == p for n, p in pairs)


class MemrlStore(BaseStore):
    """A LangGraph ``BaseStore`` whose search is memrl's two-phase, utility-ranked retrieval.

    ``MemrlStore(root)`` keeps each namespace in a durable bank under the folder ``root``
    (created if missing; banks found there are opened); ``MemrlStore()`` keeps them in memory.
    ``model`` (default all-MiniLM-L6-v2) or ``embedder`` embeds the items, one model shared by
    every namespace. ``fields``: the value paths that are embedded (LangGraph's syntax;
    default ``["$"]``, the whole value). Retrieval options (``k1``, ``delta``, ``lambda_``,
    ``zsim``, ``z_clip``, ``clip_zsim``, ``q_min``, ``epsilon``, ``seed``, ``thompson``,
    ``ucb``, ``sim_margin``) apply to every search; the store's default ``delta`` is -1 (no
    similarity gate: a search ranks every candidate, as LangGraph stores do), and ``k1`` is
    raised to ``offset + limit`` when a page needs more. Learning options (``alpha``,
    ``q_init``, ...) are set on each new bank. ``sync`` is the banks' sync policy.
    """

    supports_ttl = False

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        model: str = "all-MiniLM-L6-v2",
        embedder: Embedder | None = None,
        fields: Sequence[str] = ("$",),
        sync: Literal["every_batch", "never"] | float | None = None,
        learning: Mapping[str, Any] | None = None,
        **retrieval: Any,
    ) -> None:
        super().__init__()
        self._embedder = embedder if embedder is not None else Embedder(model)
        self._fields = [(f, tokenize_path(f)) for f in fields]
        self._root = Path(root) if root is not None else None
        self._sync = sync
        self._learning = dict(learning or {})
        unknown = set(retrieval) - {
            "k1",
            "delta",
            "lambda_",
            "zsim",
            "z_clip",
            "clip_zsim",
            "q_min",
            "epsilon",
            "seed",
            "thompson",
            "ucb",
            "sim_margin",
        }
        if unknown:
            raise TypeError(
                f"MemrlStore() got unexpected keyword arguments {sorted(unknown)} "
                "(k2 follows each search's limit)"
            )
        self._retrieval: dict[str, Any] = {"delta": -1.0, **retrieval}
        self._k1 = int(self._retrieval.pop("k1", 10))
        self._namespaces: dict[tuple[str, ...], _Namespace] = {}
        self._lock = threading.Lock()
        if self._root is not None:
            self._root.mkdir(parents=True, exist_ok=True)
            for path in sorted(self._root.glob("*" + _SUFFIX)):
                self._open(_namespace(path.name))

    # ---- namespaces and banks ----

    def bank(self, namespace: tuple[str, ...]) -> Bank | None:
        """The bank behind ``namespace`` (None if it holds nothing yet): for stats,
        calibration, or memrl's own API."""
        ns = self._namespaces.get(tuple(namespace))
        return ns.bank if ns is not None else None

    def _open(self, namespace: tuple[str, ...]) -> _Namespace:
        with self._lock:
            ns = self._namespaces.get(namespace)
            if ns is not None:
                return ns
            if self._root is None:
                bank = Bank.in_memory(embedder=self._embedder)
                fresh = True
            else:
                path = self._root / _file_name(namespace)
                fresh = not path.exists()
                bank = Bank.open(path, embedder=self._embedder, sync=self._sync)
            if fresh and self._learning:
                bank.set_learning_config(**self._learning)
            ns = _Namespace(bank)
            self._load(namespace, ns)
            self._namespaces[namespace] = ns
            return ns

    def _load(self, namespace: tuple[str, ...], ns: _Namespace) -> None:
        """Indexes a bank's items by key. A key held by two memories (a put interrupted between
        adding the new memory and removing the old one) keeps the newest; the older is removed."""
        stale: list[int] = []
        for memory in ns.bank.memories():
            meta = (memory.metadata or {}).get(_META)
            if not isinstance(meta, dict) or "key" not in meta:
                continue
            key = str(meta["key"])
            old = ns.entries.get(key)
            if old is not None:
                stale.append(min(old.id, memory.id))
                if old.id > memory.id:
                    continue
            ns.entries[key] = _Entry(
                id=memory.id,
                created_ms=int(meta.get("created_ms", memory.created_ms)),
                updated_ms=memory.created_ms,
                indexed=bool(meta.get("indexed", True)),
            )
        for memory_id in stale:
            ns.bank.remove(memory_id)
        ns.keys_by_id = {e.id: k for k, e in ns.entries.items()}

    def _matching(self, prefix: tuple[str, ...]) -> list[tuple[tuple[str, ...], _Namespace]]:
        n = len(prefix)
        return [
            (name, ns)
            for name, ns in sorted(self._namespaces.items())
            if name[:n] == prefix and ns.entries
        ]

    # ---- the BaseStore interface ----

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Runs ``ops`` in order: reads see the store before the batch; puts (deletes are puts
        of None) are applied after, the last put of a key winning, one bank write per namespace."""
        results: list[Result] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(tuple(op.namespace), op.key))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            elif isinstance(op, PutOp):
                puts[(tuple(op.namespace), op.key)] = op
                results.append(None)
            else:
                raise InvalidInputError(f"unknown operation {type(op).__name__}")
        by_namespace: dict[tuple[str, ...], list[PutOp]] = {}
        for (namespace, _), op in puts.items():
            by_namespace.setdefault(namespace, []).append(op)
        for namespace, group in by_namespace.items():
            self._apply_puts(namespace, group)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` on a worker thread (memrl releases the GIL, so the event loop runs on)."""
        return await asyncio.to_thread(self.batch, list(ops))

    def _get(self, namespace: tuple[str, ...], key: str) -> Item | None:
        ns = self._namespaces.get(namespace)
        entry = ns.entries.get(key) if ns is not None else None
        if ns is None or entry is None:
            return None
        memory = ns.bank.get(entry.id)
        if memory is None:
            return None
        return Item(
            value=json.loads(memory.experience),
            key=key,
            namespace=namespace,
            created_at=_ms_to_datetime(entry.created_ms),
            updated_at=_ms_to_datetime(entry.updated_ms),
        )

    def _index_text(self, op: PutOp) -> str | None:
        """The text embedded for an item, or None when it is not to be indexed."""
        assert op.value is not None
        if op.index is False:
            return None
        paths = self._fields if op.index is None else [(f, tokenize_path(f)) for f in op.index]
        texts: list[str] = []
        for path, tokens in paths:
            if path == "$":
                texts.append(json.dumps(op.value, ensure_ascii=False, sort_keys=True))
            else:
                texts.extend(get_text_at_path(op.value, tokens))
        texts = [t for t in texts if t]
        return "\n".join(texts) if texts else None

    def _apply_puts(self, namespace: tuple[str, ...], ops: list[PutOp]) -> None:
        ns = self._namespaces.get(namespace)
        writes = [op for op in ops if op.value is not None]
        if ns is None:
            if not writes:
                return
            ns = self._open(namespace)
        with ns.lock:
            intents: list[str] = []
            experiences: list[str] = []
            metadata: list[dict[str, Any]] = []
            qs: list[float | None] = []
            indexed: list[bool] = []
            now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
            for op in writes:
                assert op.value is not None
                value = json.dumps(dict(op.value), ensure_ascii=False)
                text = self._index_text(op)
                old = ns.entries.get(op.key)
                old_memory = ns.bank.get(old.id) if old is not None else None
                intents.append(text if text is not None else value)
                experiences.append(value)
                created = old.created_ms if old is not None else now_ms
                metadata.append(
                    {_META: {"key": op.key, "created_ms": created, "indexed": text is not None}}
                )
                qs.append(old_memory.q if old_memory is not None else None)
                indexed.append(text is not None)
            ids = ns.bank.add(intents, experiences, q=qs, metadata=metadata) if writes else []
            # The new memories are in (durable) before the old ones go: a crash in between
            # leaves a key twice, and the next open keeps the newest.
            for op in ops:
                old = ns.entries.pop(op.key, None)
                if old is not None:
                    ns.keys_by_id.pop(old.id, None)
                    if old.id in ns.bank:
                        ns.bank.remove(old.id)
            for op, memory_id, meta, is_indexed in zip(writes, ids, metadata, indexed, strict=True):
                memory = ns.bank.get(memory_id)
                ns.entries[op.key] = _Entry(
                    id=memory_id,
                    created_ms=int(meta[_META]["created_ms"]),
                    updated_ms=memory.created_ms if memory is not None else now_ms,
                    indexed=is_indexed,
                )
                ns.keys_by_id[memory_id] = op.key

    def _search(self, op: SearchOp) -> list[SearchItem]:
        namespaces = self._matching(tuple(op.namespace_prefix))
        if op.limit <= 0:
            return []
        want = op.offset + op.limit
        found: list[tuple[float | None, SearchItem]] = []
        for name, ns in namespaces:
            if op.query:
                found.extend(self._ranked(name, ns, op.query, op.filter, want))
            else:
                for key in list(ns.entries):
                    item = self._get(name, key)
                    if item is not None and (
                        not op.filter
                        or all(_compare(item.value.get(k), v) for k, v in op.filter.items())
                    ):
                        found.append((None, self._search_item(item, None)))
        if op.query:
            # Scores of different namespaces' banks are merged as they are.
            found.sort(key=lambda pair: -(pair[0] if pair[0] is not None else float("-inf")))
        return [item for _, item in found[op.offset : want]]

    def _ranked(
        self,
        name: tuple[str, ...],
        ns: _Namespace,
        query: str,
        filter: dict[str, Any] | None,
        want: int,
    ) -> list[tuple[float | None, SearchItem]]:
        """Up to ``want`` items of one namespace for ``query``, by memrl's score, filtered.
        Phase A keeps at least ``k1`` keys, more when filtered-out items leave a page short."""
        intents = max(ns.bank.num_intents, 1)
        k1 = max(self._k1, want)
        while True:
            r = ns.bank.retrieve(
                query, k1=min(k1, intents), k2=max(len(ns.bank), 1), **self._retrieval
            )
            out: list[tuple[float | None, SearchItem]] = []
            for hit in r.hits:
                key = ns.keys_by_id.get(hit.id)
                entry = ns.entries.get(key) if key is not None else None
                if key is None or entry is None or not entry.indexed:
                    continue
                value = json.loads(hit.experience)
                if filter and not all(_compare(value.get(k), v) for k, v in filter.items()):
                    continue
                item = Item(
                    value=value,
                    key=key,
                    namespace=name,
                    created_at=_ms_to_datetime(entry.created_ms),
                    updated_at=_ms_to_datetime(entry.updated_ms),
                )
                out.append((hit.score, self._search_item(item, hit.score)))
            if len(out) >= want or k1 >= intents:
                return out[:want]
            k1 *= 4

    @staticmethod
    def _search_item(item: Item, score: float | None) -> SearchItem:
        return SearchItem(
            namespace=item.namespace,
            key=item.key,
            value=item.value,
            created_at=item.created_at,
            updated_at=item.updated_at,
            score=score,
        )

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        names = [name for name, ns in self._namespaces.items() if ns.entries]
        if op.match_conditions:
            names = [n for n in names if all(_matches(c, n) for c in op.match_conditions)]
        if op.max_depth is not None:
            names = sorted({n[: op.max_depth] for n in names})
        else:
            names = sorted(names)
        return names[op.offset : op.offset + op.limit]

    # ---- what the store interface lacks ----

    def feedback(self, items: Iterable[Item], reward: float) -> StoreFeedback:
        """Reports the reward of an episode that used ``items`` (what ``search`` or ``get``
        returned): each item's memory moves ``Q <- Q + alpha (reward - Q)``, so items that help
        rank higher in later searches. One atomic batch per namespace; items deleted since are
        skipped and listed in ``missing``."""
        by_namespace: dict[tuple[str, ...], list[int]] = {}
        missing: list[tuple[tuple[str, ...], str]] = []
        for item in items:
            namespace = tuple(item.namespace)
            ns = self._namespaces.get(namespace)
            entry = ns.entries.get(item.key) if ns is not None else None
            if entry is None:
                missing.append((namespace, item.key))
                continue
            by_namespace.setdefault(namespace, []).append(entry.id)
        reports: dict[tuple[str, ...], OutcomeReport] = {}
        for namespace, ids in by_namespace.items():
            reports[namespace] = self._namespaces[namespace].bank.feedback(
                memory_ids=ids, reward=reward
            )
        return StoreFeedback(reports=reports, missing=missing)

    async def afeedback(self, items: Iterable[Item], reward: float) -> StoreFeedback:
        """``feedback`` on a worker thread."""
        return await asyncio.to_thread(self.feedback, list(items), reward)

    def close(self) -> None:
        """Checkpoints and closes every bank."""
        with self._lock:
            for ns in self._namespaces.values():
                if ns.bank.is_durable:
                    ns.bank.checkpoint()
                ns.bank.close()
            self._namespaces.clear()

    def __enter__(self) -> MemrlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
