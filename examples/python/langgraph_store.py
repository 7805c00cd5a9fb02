"""A LangGraph graph whose long-term memory is memrl, offline (no LLM): recall -> act -> learn.

The graph's nodes reach the store the way LangGraph agents (and LangMem's tools) do, through
`get_store()`; `MemrlStore` makes their search two-phase and utility-ranked, and its `feedback`
call (which `BaseStore` lacks) teaches it which memories helped.

    python examples/python/langgraph_store.py --root memories/
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any, TypedDict

from langgraph.config import get_store
from langgraph.graph import END, START, StateGraph
from memrl.langgraph import MemrlStore

NAMESPACE = ("agent", "travel")
GOOD = {"search by airport code", "compare fares across dates"}


class State(TypedDict, total=False):
    task: str
    memories: list[Any]
    success: bool


def recall(state: State) -> State:
    return {"memories": get_store().search(NAMESPACE, query=state["task"], limit=1)}


def act(state: State) -> State:
    # Stand-in environment: the task succeeds when the memory given is a good one.
    tip = state["memories"][0].value["tip"] if state["memories"] else ""
    return {"success": tip in GOOD and random.random() < 0.9}


def learn(state: State) -> State:
    store = get_store()
    assert isinstance(store, MemrlStore)
    store.feedback(state["memories"], reward=1.0 if state["success"] else -1.0)
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=None, help="folder of banks (default: temporary)")
    ap.add_argument("--episodes", type=int, default=30)
    a = ap.parse_args()
    random.seed(3)
    with tempfile.TemporaryDirectory() as tmp, MemrlStore(a.root or Path(tmp)) as store:
        for i, tip in enumerate(
            [
                "call the airline",
                "search by airport code",
                "book the first flight listed",
                "compare fares across dates",
            ]
        ):
            store.put(NAMESPACE, f"tip{i}", {"tip": tip, "text": f"to book a flight: {tip}"})
        graph = StateGraph(State)
        graph.add_node("recall", recall)
        graph.add_node("act", act)
        graph.add_node("learn", learn)
        graph.add_edge(START, "recall")
        graph.add_edge("recall", "act")
        graph.add_edge("act", "learn")
        graph.add_edge("learn", END)
        app = graph.compile(store=store)
        query = "book a flight to Lisbon"
        print("before:", [r.value["tip"] for r in store.search(NAMESPACE, query=query)])
        wins = sum(bool(app.invoke({"task": query}).get("success")) for _ in range(a.episodes))
        print(f"{wins}/{a.episodes} episodes succeeded")
        print("after feedback:", [r.value["tip"] for r in store.search(NAMESPACE, query=query)])


if __name__ == "__main__":
    main()
