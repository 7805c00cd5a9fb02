"""How much of the learning simulation's gap to the oracle any learner could close.

`memrl simulate` (crates/memrl-bench/src/simulate) puts MemRL at about 0.76 last-epoch success and
the oracle at 0.97; the learning options reach 0.79. This script asks what is learnable at all
from what an agent sees, on the part of the world that decides the last epoch: by then 98% of
what MemRL injects is the task's own memories (every earlier attempt wrote one, all at
similarity 1), so a task is a bandit over its own memories.

The world slice is the simulation's, with its parameters: a task's base log-odds b ~ N(-0.5, 1);
each attempt succeeds with probability logistic(b + the injected memories' qualities) and then
writes a memory of quality N(0.6, 0.6) after a success, N(0.2, 0.6) after a failure; up to k2 = 5
of the task's earlier memories are injected; 10 epochs. Every policy meets the same draws
(common random numbers), as in the simulation.

Policies:
- oracle: the up to 5 memories of largest positive quality (the simulation's oracle, own memories);
- oldest five: similarity alone (every own memory is at similarity 1; ties go to the older);
- MemRL: Q <- Q + 0.3 (r - Q), rewards +1 / -1, q_init 0, top 5 by Q (ties to the older);
- MemRL+best: the same with q_init_failure -0.6 and the UCB bonus 1 / sqrt(1 + visits);
- Bayes: knows the world's whole generative model (the prior of b, both quality priors, the
  logistic link), keeps the exact posterior of every memory's quality given every reward seen
  (importance sampling, 4,000 draws), injects the up to 5 of largest positive posterior mean;
- Bayes, b known: the same, also told the task's base log-odds (no real agent knows it).

Bayes is greedy (it does not explore on purpose), so it is not a strict upper bound, but it uses
every bit of the data with the true model, which no engine option can exceed by much.

Usage: python benches/python/learning_ceiling.py [--tasks 1000] [--seeds 1 2 3 4 5]
(numpy only; about 10 minutes on 2 cores). Not part of the tests or CI.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

EPOCHS = 10
K2 = 5
SUCCESS_MEAN, FAILURE_MEAN, QUALITY_SD = 0.6, 0.2, 0.6
BASE_MEAN, BASE_SD = -0.5, 1.0
DRAWS = 4000


@dataclass
class TaskState:
    """What a policy may see of one task: its memories' write outcomes and every episode."""

    base: float
    written_success: list[bool] = field(default_factory=list)
    episodes: list[tuple[list[int], bool]] = field(default_factory=list)


Policy = Callable[[TaskState, list[float], np.random.Generator], list[int]]


def logistic(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def oracle(state: TaskState, quality: list[float], rng: np.random.Generator) -> list[int]:
    ranked = sorted(range(len(quality)), key=lambda i: (-quality[i], i))
    return [i for i in ranked if quality[i] > 0][:K2]


def oldest_five(state: TaskState, quality: list[float], rng: np.random.Generator) -> list[int]:
    return list(range(len(quality)))[:K2]


def memrl(q_init_failure: float, ucb: float) -> Policy:
    def policy(state: TaskState, quality: list[float], rng: np.random.Generator) -> list[int]:
        n = len(state.written_success)
        q = [0.0 if s else q_init_failure for s in state.written_success]
        visits = [0] * n
        for ids, success in state.episodes:
            reward = 1.0 if success else -1.0
            for i in ids:
                q[i] += 0.3 * (reward - q[i])
                visits[i] += 1
        score = [q[i] + ucb / np.sqrt(1 + visits[i]) for i in range(n)]
        return sorted(range(n), key=lambda i: (-score[i], i))[:K2]

    return policy


def bayes(know_base: bool) -> Policy:
    def policy(state: TaskState, quality: list[float], rng: np.random.Generator) -> list[int]:
        n = len(state.written_success)
        if n == 0:
            return []
        prior = np.array([SUCCESS_MEAN if s else FAILURE_MEAN for s in state.written_success])
        draws = prior + QUALITY_SD * rng.standard_normal((DRAWS, n))
        if know_base:
            base = np.full(DRAWS, state.base)
        else:
            base = rng.normal(BASE_MEAN, BASE_SD, DRAWS)
        log_weight = np.zeros(DRAWS)
        for ids, success in state.episodes:
            p = logistic(base + draws[:, ids].sum(axis=1))
            log_weight += np.log(p if success else 1.0 - p)
        weight = np.exp(log_weight - log_weight.max())
        mean = (weight / weight.sum()) @ draws
        ranked = sorted(range(n), key=lambda i: (-mean[i], i))
        return [i for i in ranked if mean[i] > 0][:K2]

    return policy


POLICIES: dict[str, Policy] = {
    "oracle": oracle,
    "oldest five (similarity)": oldest_five,
    "MemRL": memrl(0.0, 0.0),
    "MemRL+best": memrl(-0.6, 1.0),
    "Bayes (true model)": bayes(know_base=False),
    "Bayes, b known": bayes(know_base=True),
}


def run(policy: Policy, tasks: int, seed: int) -> list[float]:
    """Success rate per epoch over `tasks` independent tasks of one seeded world."""
    world = np.random.default_rng(seed)
    bases = world.normal(BASE_MEAN, BASE_SD, tasks)
    attempts = world.random((tasks, EPOCHS))
    normals = world.standard_normal((tasks, EPOCHS))
    own = np.random.default_rng(seed + 10_000)  # the policy's own draws (Bayes sampling)
    per_epoch = np.zeros(EPOCHS)
    for t in range(tasks):
        state = TaskState(base=float(bases[t]))
        quality: list[float] = []
        for e in range(EPOCHS):
            ids = policy(state, quality, own)
            success = bool(attempts[t, e] < logistic(bases[t] + sum(quality[i] for i in ids)))
            per_epoch[e] += success
            state.episodes.append((ids, success))
            state.written_success.append(success)
            mean = SUCCESS_MEAN if success else FAILURE_MEAN
            quality.append(mean + QUALITY_SD * float(normals[t, e]))
    return list(per_epoch / tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = ap.parse_args()
    print(
        f"{args.tasks} tasks x {EPOCHS} epochs, seeds {args.seeds}; last-epoch success, mean +- sd"
    )
    for name, policy in POLICIES.items():
        last = [run(policy, args.tasks, seed)[-1] for seed in args.seeds]
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        print(f"{name:26s} {statistics.mean(last):.3f} +- {sd:.3f}", flush=True)


if __name__ == "__main__":
    main()
