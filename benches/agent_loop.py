#!/usr/bin/env python3
"""An agent's epoch through the memrl command line: one process per step against one `memrl pipe`.

The loop is the paper's, as an agent in another language runs it: for each of N tasks, retrieve
memories for the task, attempt it (simulated here: a reward of +1 or -1 drawn from the task's
text), report the reward for the memories used, and write a memory of the attempt. Three ways:

  per-call   three processes per epoch, each batched over the N tasks:
             `memrl query --input`, `memrl feedback --input`, `memrl add --input`
  pipe       one `memrl pipe` process per epoch, three batched requests
             (retrieve `texts`, feedback `rewards` by retrieval id, add `memories`)
  pipe-each  one `memrl pipe` process per epoch, three requests per task, one task at a time
             (retrieve `text`, feedback by retrieval id, add `memory`): what an agent that must
             finish a task before the next sends
  per-call-each  the same one task at a time with a process per step: `memrl query --text`,
             `memrl feedback --input` (one line), `memrl add --intent` (slow: use --tasks 20)

Every epoch starts from a copy of the same bank (N memories of earlier attempts), so runs are
comparable. Usage:

  python3 benches/agent_loop.py                       # rounds of each way, medians and ratios
  python3 benches/agent_loop.py --tasks 20 --ways per-call-each,pipe-each
  python3 benches/agent_loop.py --prepare DIR         # the bank and inputs, once
  python3 benches/agent_loop.py --dir DIR --epoch pipe   # one epoch (for a whole-process timer)

Needs the release binary (`cargo build --release -p memrl-cli`) and the model on disk
(`cargo run --release -- model pull all-MiniLM-L6-v2`).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def reward(text):
    """The simulated attempt: +1 or -1, fixed per task."""
    return 1.0 if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else -1.0


def tasks_of(corpus, n):
    out = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def prepare(args, where):
    os.makedirs(where, exist_ok=True)
    tasks = tasks_of(args.corpus, args.tasks)
    with open(os.path.join(where, "tasks.json"), "w") as f:
        json.dump(tasks, f)
    seed = os.path.join(where, "seed.jsonl")
    with open(seed, "w") as f:
        for t in tasks:
            f.write(json.dumps({"intent": t, "experience": "earlier attempt: " + t}) + "\n")
    bank = os.path.join(where, "template.safetensors")
    if os.path.exists(bank):
        os.remove(bank)
    run([args.memrl, "index", "--input", seed, "--bank", bank, "--model", args.model, "--quiet"])
    with open(os.path.join(where, "queries.jsonl"), "w") as f:
        for i, t in enumerate(tasks):
            f.write(json.dumps({"text": t, "id": i}) + "\n")
    with open(os.path.join(where, "new.jsonl"), "w") as f:
        for t in tasks:
            f.write(json.dumps({"intent": t, "experience": "what happened: " + t}) + "\n")


def fresh_bank(where, work):
    bank = os.path.join(work, "bank.safetensors")
    for suffix in ("", ".wal"):
        if os.path.exists(bank + suffix):
            os.remove(bank + suffix)
    shutil.copyfile(os.path.join(where, "template.safetensors"), bank)
    return bank


def epoch_per_call(args, where, work):
    bank = fresh_bank(where, work)
    tasks = json.load(open(os.path.join(where, "tasks.json")))
    out = run([args.memrl, "query", "--bank", bank, "--input", os.path.join(where, "queries.jsonl"), "--json"])
    outcomes = os.path.join(work, "outcomes.jsonl")
    with open(outcomes, "w") as f:
        for line in out.splitlines():
            q = json.loads(line)
            ids = [h["id"] for h in q["hits"]]
            f.write(json.dumps({"memory_ids": ids, "reward": reward(tasks[q["id"]])}) + "\n")
    run([args.memrl, "feedback", "--bank", bank, "--input", outcomes, "--quiet"])
    run([args.memrl, "add", "--bank", bank, "--input", os.path.join(where, "new.jsonl"), "--quiet"])


class Pipe:
    def __init__(self, memrl, bank):
        self.p = subprocess.Popen([memrl, "pipe", "--bank", bank], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, request):
        self.p.stdin.write(json.dumps(request) + "\n")
        self.p.stdin.flush()
        answer = json.loads(self.p.stdout.readline())
        if not answer["ok"]:
            raise RuntimeError(answer["error"])
        return answer

    def close(self):
        self.p.stdin.close()
        if self.p.wait() != 0:
            raise RuntimeError("memrl pipe failed")


def epoch_pipe(args, where, work):
    bank = fresh_bank(where, work)
    tasks = json.load(open(os.path.join(where, "tasks.json")))
    pipe = Pipe(args.memrl, bank)
    results = pipe.ask({"op": "retrieve", "texts": tasks})["results"]
    rewards = [{"retrieval": r["retrieval"], "reward": reward(t)} for r, t in zip(results, tasks)]
    pipe.ask({"op": "feedback", "rewards": rewards})
    memories = [{"intent": t, "experience": "what happened: " + t} for t in tasks]
    pipe.ask({"op": "add", "memories": memories})
    pipe.close()


def epoch_pipe_each(args, where, work):
    bank = fresh_bank(where, work)
    tasks = json.load(open(os.path.join(where, "tasks.json")))
    pipe = Pipe(args.memrl, bank)
    for t in tasks:
        r = pipe.ask({"op": "retrieve", "text": t})
        pipe.ask({"op": "feedback", "retrieval": r["retrieval"], "reward": reward(t)})
        pipe.ask({"op": "add", "memory": {"intent": t, "experience": "what happened: " + t}})
    pipe.close()


def epoch_per_call_each(args, where, work):
    bank = fresh_bank(where, work)
    tasks = json.load(open(os.path.join(where, "tasks.json")))
    outcome = os.path.join(work, "outcome.jsonl")
    for t in tasks:
        out = run([args.memrl, "query", "--bank", bank, "--text", t, "--json"])
        ids = [h["id"] for h in json.loads(out)["hits"]]
        with open(outcome, "w") as f:
            f.write(json.dumps({"memory_ids": ids, "reward": reward(t)}) + "\n")
        run([args.memrl, "feedback", "--bank", bank, "--input", outcome, "--quiet"])
        run([args.memrl, "add", "--bank", bank, "--intent", t, "--experience", "what happened: " + t, "--quiet"])


EPOCHS = {
    "per-call": epoch_per_call,
    "pipe": epoch_pipe,
    "pipe-each": epoch_pipe_each,
    "per-call-each": epoch_per_call_each,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memrl", default=os.path.join(ROOT, "target", "release", "memrl"))
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--corpus", default=os.path.join(ROOT, "data", "corpus.jsonl"))
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ways", default="per-call,pipe,pipe-each",
                    help="comma-separated, the first is the base of the ratios")
    ap.add_argument("--prepare", metavar="DIR", help="write the template bank and inputs to DIR, then stop")
    ap.add_argument("--dir", help="a folder --prepare wrote")
    ap.add_argument("--epoch", choices=sorted(EPOCHS), help="run one epoch from --dir and stop")
    args = ap.parse_args()
    if args.prepare:
        prepare(args, args.prepare)
        return
    if args.epoch:
        with tempfile.TemporaryDirectory() as work:
            EPOCHS[args.epoch](args, args.dir, work)
        return
    with tempfile.TemporaryDirectory() as where:
        prepare(args, where)
        ways = args.ways.split(",")
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name in ways:  # in turn, so drift hits every way alike
                epoch = EPOCHS[name]
                with tempfile.TemporaryDirectory() as work:
                    start = time.perf_counter()
                    epoch(args, where, work)
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times[ways[0]])
        print(f"{args.tasks} tasks per epoch, {args.rounds} rounds, model {args.model}")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:13} median {m:7.3f} s  (min {min(ts):.3f}, max {max(ts):.3f})  "
                  f"{ways[0]} / this: {base / m:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
