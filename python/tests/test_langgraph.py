"""memrl.langgraph.MemrlStore against LangGraph's store contract (put/get/search/delete/
list_namespaces as BaseStore documents them and its InMemoryStore behaves), and the feedback
call the interface lacks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import memrl
import pytest
from langgraph.store.base import GetOp, InvalidNamespaceError, Item, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore
from memrl.langgraph import MemrlStore


@pytest.fixture
def store(embedder: memrl.Embedder) -> MemrlStore:
    return MemrlStore(embedder=embedder)


def test_put_get_update_delete(store: MemrlStore) -> None:
    assert store.get(("users", "1"), "k") is None
    store.put(("users", "1"), "k", {"text": "likes tea", "n": 1})
    item = store.get(("users", "1"), "k")
    assert isinstance(item, Item)
    assert (item.namespace, item.key, item.value) == (
        ("users", "1"),
        "k",
        {"text": "likes tea", "n": 1},
    )
    created = item.created_at
    store.put(("users", "1"), "k", {"text": "likes coffee", "n": 2})
    updated = store.get(("users", "1"), "k")
    assert updated is not None and updated.value == {"text": "likes coffee", "n": 2}
    assert updated.created_at == created and updated.updated_at >= created
    assert len(store.search(("users", "1"))) == 1  # an update replaces, never duplicates
    store.delete(("users", "1"), "k")
    assert store.get(("users", "1"), "k") is None
    store.delete(("users", "1"), "never there")  # deleting a missing key is fine
    assert store.list_namespaces() == []


def test_namespace_validation(store: MemrlStore) -> None:
    for bad in [(), ("a", "b.c"), ("a", ""), ("langgraph", "x")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "k", {"v": 1})
    # Below the root, "langgraph" is an ordinary label, and batch() bypasses the check.
    store.put(("x", "langgraph"), "k", {"v": 1})
    store.batch([PutOp(("langgraph", "y"), "k", {"v": 2})])
    item = store.get(("langgraph", "y"), "k")
    assert item is not None and item.value == {"v": 2}


def test_list_namespaces_like_in_memory_store(store: MemrlStore) -> None:
    reference = InMemoryStore()
    names = [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
        ("admin", "users", "789"),
    ]
    for i, ns in enumerate(names):
        for s in (store, reference):
            s.put(ns, f"id_{i}", {"data": f"value_{i}"})
    queries: list[dict[str, object]] = [
        {},
        {"prefix": ("a", "b")},
        {"suffix": ("f",)},
        {"prefix": ("a",), "suffix": ("f",)},
        {"prefix": ("a", "b"), "max_depth": 3},
        {"max_depth": 2},
        {"prefix": ("a", "b"), "limit": 2},
        {"prefix": ("a", "b"), "offset": 2},
        {"prefix": ("a", "*", "f")},
        {"suffix": ("*", "f")},
        {"prefix": ("nonexistent",)},
        {"prefix": ("users", "123")},
        {"prefix": ("*", "users"), "suffix": ("*", "settings")},
    ]
    for q in queries:
        assert store.list_namespaces(**q) == reference.list_namespaces(**q), q  # type: ignore[arg-type]


def test_search_without_query_filters_and_pages(store: MemrlStore) -> None:
    docs = {
        "d1": {"color": "red", "score": 4.5, "tags": {"kind": "fruit"}},
        "d2": {"color": "red", "score": 3.0, "tags": {"kind": "car"}},
        "d3": {"color": "green", "score": 4.0, "tags": {"kind": "fruit"}},
        "d4": {"color": "blue", "score": 3.5, "tags": {"kind": "car"}},
    }
    for key, value in docs.items():
        store.put(("test",), key, value)
    store.put(("other",), "d5", {"color": "red", "score": 9.0})
    keys = lambda results: [r.key for r in results]  # noqa: E731
    assert keys(store.search(("test",))) == ["d1", "d2", "d3", "d4"]
    assert keys(store.search(("test",), filter={"color": "red"})) == ["d1", "d2"]
    assert keys(store.search(("test",), filter={"score": {"$gt": 3.2}})) == ["d1", "d3", "d4"]
    assert keys(store.search(("test",), filter={"score": {"$gte": 4.0, "$lt": 4.5}})) == ["d3"]
    assert keys(store.search(("test",), filter={"color": {"$ne": "red"}})) == ["d3", "d4"]
    assert keys(store.search(("test",), filter={"tags": {"kind": "car"}})) == ["d2", "d4"]
    assert keys(store.search(("test",), limit=2)) == ["d1", "d2"]
    assert keys(store.search(("test",), limit=2, offset=2)) == ["d3", "d4"]
    assert keys(store.search((), filter={"color": "red"})) == ["d5", "d1", "d2"]
    assert all(r.score is None for r in store.search(("test",)))
    with pytest.raises(memrl.InvalidInputError, match="operator"):
        store.search(("test",), filter={"score": {"$near": 3}})


def test_search_with_query_ranks_by_memrl(store: MemrlStore) -> None:
    docs = [
        ("doc1", {"text": "red apple", "color": "red", "score": 4.5}),
        ("doc2", {"text": "red car", "color": "red", "score": 3.0}),
        ("doc3", {"text": "green apple", "color": "green", "score": 4.0}),
        ("doc4", {"text": "blue car", "color": "blue", "score": 3.5}),
    ]
    for key, value in docs:
        store.put(("test",), key, value)
    results = store.search(("test",), query="apple", filter={"color": "red"})
    assert [r.key for r in results] == ["doc1", "doc2"]
    assert results[0].score is not None and results[1].score is not None
    assert results[0].score >= results[1].score
    assert store.search(("test",), query="car", filter={"color": "red"})[0].key == "doc2"
    both = store.search(("test",), query="apple", filter={"score": {"$gte": 4.0}, "color": "green"})
    assert [r.key for r in both] == ["doc3"]
    page1 = store.search(("test",), query="fruit", limit=2)
    page2 = store.search(("test",), query="fruit", limit=2, offset=2)
    assert len(page1) == 2 and len(page2) == 2
    assert {r.key for r in page1}.isdisjoint({r.key for r in page2})
    assert len(store.search(("test",), query="fruit", limit=10)) == 4
    for q in ("", "test " * 100, "test!@#$%^&*()"):
        assert len(store.search(("test",), query=q)) == 4


def test_updates_reindex_and_index_false(store: MemrlStore) -> None:
    store.put(("t",), "doc1", {"text": "zany zebra Xerxes"})
    store.put(("t",), "doc2", {"text": "something about dogs"})
    store.put(("t",), "doc3", {"text": "text about birds"})
    first = store.search(("t",), query="Zany Xerxes")
    assert first[0].key == "doc1"
    store.put(("t",), "doc1", {"text": "new text about dogs"})
    after = store.search(("t",), query="Zany Xerxes")
    assert after[0].key != "doc1"
    store.put(("t",), "doc4", {"text": "new text about dogs"}, index=False)
    assert "doc4" not in [r.key for r in store.search(("t",), query="new text about dogs")]
    item = store.get(("t",), "doc4")
    assert item is not None and "doc4" in [r.key for r in store.search(("t",))]
    # Fields: only the title is embedded.
    store.put(("t",), "doc5", {"title": "volcanoes", "body": "zebra zebra zebra"}, index=["title"])
    assert store.search(("t",), query="volcanic eruptions", limit=1)[0].key == "doc5"


def test_batch_reads_see_the_state_before_its_puts(store: MemrlStore) -> None:
    store.put(("b",), "k", {"v": 1})
    results = store.batch(
        [
            PutOp(("b",), "k", {"v": 2}),
            GetOp(("b",), "k"),
            PutOp(("b",), "k", {"v": 3}),
            SearchOp(("b",)),
        ]
    )
    assert results[0] is None and results[2] is None
    got = results[1]
    assert isinstance(got, Item) and got.value == {"v": 1}
    final = store.get(("b",), "k")
    assert final is not None and final.value == {"v": 3}  # the last put wins
    assert len(store.search(("b",))) == 1


def test_feedback_moves_items_up(store: MemrlStore) -> None:
    ns = ("agent", "memories")
    store.put(ns, "a", {"text": "to book a flight, search by airport code"})
    store.put(ns, "b", {"text": "to book a flight, call the airline"})
    store.put(ns, "c", {"text": "to book a train, ask at the station"})
    query = "book a flight to Lisbon"
    before = [r.key for r in store.search(ns, query=query)]
    assert sorted(before) == ["a", "b", "c"]
    winner = before[-1]
    items = {r.key: r for r in store.search(ns, query=query)}
    for _ in range(4):
        report = store.feedback([items[winner]], reward=1.0)
        store.feedback([items[k] for k in before[:-1]], reward=-1.0)
    assert report.updated == 1 and report.missing == []
    after = [r.key for r in store.search(ns, query=query)]
    assert after.index(winner) < before.index(winner), (before, after)
    bank = store.bank(ns)
    assert bank is not None and bank.stats().q_signs == (1, 0, 2)
    # Updating an item keeps its learned utility.
    q_before = max(q for _, q in bank.stats().top)
    store.put(ns, winner, {"text": items[winner].value["text"] + " (updated)"})
    stats = bank.stats()
    assert stats.q_signs == (1, 0, 2) and max(q for _, q in stats.top) == q_before
    store.delete(ns, before[0])
    assert store.feedback([items[before[0]]], reward=1.0).missing == [(ns, before[0])]


def test_durable_store_reopens(tmp_path: Path, embedder: memrl.Embedder) -> None:
    with MemrlStore(tmp_path / "store", embedder=embedder) as store:
        store.put(("u", "1"), "a", {"text": "alpha"})
        store.put(("u", "2 x/y"), "b", {"text": "beta"})  # labels become safe file names
        store.put(("u", "1"), "c", {"text": "gamma"})
        store.delete(("u", "1"), "c")
        item = store.search(("u", "1"), query="alpha")[0]
        store.feedback([item], reward=1.0)
    with MemrlStore(tmp_path / "store", embedder=embedder) as again:
        assert again.list_namespaces() == [("u", "1"), ("u", "2 x/y")]
        got = again.get(("u", "1"), "a")
        assert got is not None and got.value == {"text": "alpha"}
        assert again.get(("u", "1"), "c") is None
        bank = again.bank(("u", "1"))
        assert bank is not None and bank.stats().q_signs == (1, 0, 0)


def test_async_methods(store: MemrlStore) -> None:
    async def run() -> None:
        await asyncio.gather(
            *[store.aput(("a",), f"k{i}", {"text": f"item {i}"}) for i in range(5)]
        )
        item = await store.aget(("a",), "k3")
        assert item is not None and item.value == {"text": "item 3"}
        results = await store.asearch(("a",), query="item 3", limit=2)
        assert len(results) == 2
        await store.afeedback(results, 1.0)
        await store.adelete(("a",), "k3")
        assert await store.aget(("a",), "k3") is None
        assert await store.alist_namespaces() == [("a",)]

    asyncio.run(run())


def test_ttl_is_refused(store: MemrlStore) -> None:
    with pytest.raises(NotImplementedError):
        store.put(("a",), "k", {"v": 1}, ttl=5.0)
    with pytest.raises(TypeError, match="k2"):
        MemrlStore(embedder=store._embedder, k2=3)
