"""A complete agent loop on memrl, offline: retrieve -> act in a stand-in environment -> feedback
-> write the attempt's memory.

The environment stands in for an LLM agent solving tasks. Tasks are BIG-bench sentences from
data/corpus.jsonl, their *skill* the BIG-bench task they come from. Every memory the agent writes
has a hidden quality (a success script tends to help, a reflection on a failure less so, and some
of either mislead); an attempt succeeds with probability logistic(base + the injected memories'
effects), where a memory helps on its own skill and hurts on others, however alike the texts read.
Similarity cannot tell the good memories from the bad; the rewards can, and Q learns them.

    python examples/python/agent_loop.py --episodes 600
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from pathlib import Path

import memrl

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus.jsonl"


class World:
    """The stand-in environment: tasks, and the hidden effect of each memory."""

    def __init__(self, tasks: list[tuple[str, str]], seed: int) -> None:
        self.tasks = tasks
        self.rng = random.Random(seed)
        self.base = {text: self.rng.gauss(-0.5, 1.0) for text, _ in tasks}
        self.quality: dict[int, tuple[str, float]] = {}  # memory id -> (skill, quality)

    def attempt(self, task: tuple[str, str], hits: list[memrl.Hit]) -> bool:
        text, skill = task
        logit = self.base[text]
        for hit in hits:
            memory_skill, quality = self.quality[hit.id]
            logit += quality if memory_skill == skill else -0.3 * abs(self.rng.gauss(0, 1))
        return self.rng.random() < 1.0 / (1.0 + math.exp(-logit))

    def remember(self, memory_id: int, skill: str, success: bool) -> None:
        self.quality[memory_id] = (skill, self.rng.gauss(0.6 if success else 0.2, 0.6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--bank", type=Path, default=None, help="bank file (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    lines = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    random.Random(a.seed).shuffle(lines)
    tasks = [(d["text"], d["source"]) for d in lines[: a.tasks]]
    world = World(tasks, a.seed)
    order = random.Random(a.seed + 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = a.bank or Path(tmp) / "agent.safetensors"
        with memrl.Bank.open(path, model="all-MiniLM-L6-v2", sync="never") as bank:
            bank.set_retrieval_config(k1=10, k2=3, delta=0.1, lambda_=0.5)
            bank.set_learning_config(alpha=0.3)
            outcomes: list[bool] = []
            for _ in range(a.episodes):
                task = order.choice(tasks)
                r = bank.retrieve(task[0])  # 1. recall, utility-ranked
                success = world.attempt(task, r.hits)  # 2. act with those memories
                bank.feedback(r.id, reward=1.0 if success else -1.0)  # 3. learn from the reward
                memory = bank.add(  # 4. keep this attempt
                    task[0],
                    f"{'script' if success else 'reflection'} for {task[1]}",
                    success=success,
                )
                world.remember(memory, task[1], success)
                outcomes.append(success)
            window = max(1, a.episodes // 5)
            first = sum(outcomes[:window]) / window
            last = sum(outcomes[-window:]) / window
            print(f"{a.episodes} episodes, {len(bank)} memories")
            print(f"success rate: first {window} episodes {first:.2f}, last {window} {last:.2f}")
            print(bank.stats())


if __name__ == "__main__":
    main()
