"""memrl.Client against a real `memrl serve` process on 127.0.0.1: the same calls on a local
bank and on a remote one give the same answers; errors are the local classes (and the three a
network adds); keys are enforced; a restarted server keeps what it acknowledged and the client
keeps working; a write whose answer never came is reported as such, never as a failure.

The server binary is ``$MEMRL_BIN`` (``./test.sh`` builds it), else ``target/release/memrl``
or ``target/debug/memrl``; the test fails, never skips, without one.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import memrl
import numpy as np
import pytest
from conftest import REPO, unit

DIM = 8


def server_binary() -> str:
    given = os.environ.get("MEMRL_BIN")
    if given:
        return given
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("release", "debug"):
        path = target / profile / "memrl"
        if path.exists():
            return str(path)
    raise RuntimeError("no memrl binary: build it (cargo build --release) or set MEMRL_BIN")


class Server:
    """A `memrl serve` process; `restart()` stops it (SIGKILL or SIGTERM) and starts it again
    on the same port and data directory."""

    def __init__(self, data: Path, *args: str, port: int = 0) -> None:
        self.data, self.args = data, args
        self.proc = subprocess.Popen(
            [server_binary(), "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "MEMRL_API_KEYS"},
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on http://"):
            self.proc.kill()
            raise RuntimeError(f"memrl serve did not start: {line!r}, exit {self.proc.wait()}")
        self.url = line.strip().removeprefix("listening on ")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def restart(self, sig: int) -> None:
        self.stop(sig)
        self.__init__(self.data, *self.args, port=self.port)  # type: ignore[misc]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the real model (text namespaces) that also takes vector namespaces."""
    s = Server(tmp_path_factory.mktemp("serve"), "--model", "all-MiniLM-L6-v2")
    yield s
    assert s.stop() == 0


_counter = iter(range(1_000_000))


@pytest.fixture
def remote(server: Server) -> Iterator[memrl.Client]:
    """A fresh vector namespace (8 dimensions, sharing off) on the server."""
    client = memrl.Client(server.url, namespace=f"vectors-{next(_counter)}")
    assert client.create(dim=DIM, model_id="toy", dedup_sim=1.0) is True
    yield client
    client.delete_namespace()
    client.close()


def comparable(value: Any) -> Any:
    """A result's dict without what differs by nature between two banks (ids of retrievals,
    times)."""
    if isinstance(value, list):
        return [comparable(v) for v in value]
    d = value.to_dict()
    d.pop("created_ms", None)
    d.pop("updated_ms", None)
    if "hits" in d:
        d.pop("id", None)
    return d


def same_calls(bank: Any) -> list[Any]:
    """One agent's session, written once for both kinds of bank."""
    out: list[Any] = []
    vectors = unit(12, DIM, seed=7)
    out.append(
        bank.add(
            [f"intent {i}" for i in range(12)],
            [f"experience {i}" for i in range(12)],
            embeddings=vectors,
            success=[i % 3 == 0 for i in range(12)],
            q=[None] * 6 + [0.25] * 6,
            metadata=[{"i": i, "tags": ["a", i]} if i % 2 else None for i in range(12)],
        )
    )
    out.append(bank.add("one more", "its lesson", embeddings=unit(1, DIM, 8)[0], success=True))
    queries = unit(5, DIM, seed=9)
    r = bank.retrieve(queries[0], k2=4, delta=-1.0)
    out.append(comparable(r))
    out.append(comparable(bank.feedback(r, reward=1.0)))
    rs = bank.retrieve(queries[1:], k1=6, k2=3, delta=-1.0, lambda_=0.7)
    out.append(comparable(rs))
    out.append(comparable(bank.feedback_many([(rs[0], 0.5), (rs[1].id, -1.0)])))
    out.append(comparable(bank.apply_outcomes([([0, 1, 2], 1.0), ([3], -0.5)])))
    out.append(comparable(bank.feedback(memory_ids=[4, 5], reward=0.75)))
    out.append(comparable(bank.retrieve(queries[4], delta=-1.0, epsilon=0.5, seed=11)))
    out.append(comparable(bank.retrieve(queries[4], delta=-1.0, zsim=(0.1, 0.2), clip_zsim=True)))
    bank.set_retrieval_config(k2=2, lambda_=0.3, q_min=-0.9)
    bank.set_learning_config(alpha=0.5, reward_range=(-1, 1), out_of_range="clamp")
    out.append((bank.retrieval_config, bank.learning_config))
    out.append(comparable(bank.feedback(memory_ids=[6], reward=7.0)))  # clamped to 1
    out.append(comparable(bank.retrieve(queries[2], delta=-1.0)))
    out.append(comparable(bank.remove(3)))
    out.append((len(bank), bank.num_intents, 3 in bank, 4 in bank, "x" in bank, bank.get(3)))
    out.append(comparable(bank[6]))
    out.append(comparable(bank.stats(bins=4, extremes=3)))
    out.append(comparable(bank.calibrate(max_pairs=50, seed=3)))
    out.append(bank.config)
    return out


def test_a_remote_bank_answers_as_a_local_one(remote: memrl.Client) -> None:
    local = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=1.0)
    assert same_calls(remote) == same_calls(local)


def test_every_option_of_a_local_bank_reaches_the_server(remote: memrl.Client) -> None:
    """The class of a retrieval option the server did not take: each stored option is sent
    back, per call and stored, for retrieval and learning alike."""
    remote.add(["a", "b"], ["x", "y"], embeddings=unit(2, DIM, 1))
    retrieval, learning = remote.retrieval_config, remote.learning_config
    assert sorted(retrieval) == sorted(memrl.RETRIEVAL_OPTIONS)
    assert sorted(learning) == sorted(memrl.LEARNING_OPTIONS)
    for name, value in retrieval.items():
        assert len(remote.retrieve(unit(1, DIM, 2)[0], **{name: value, "delta": -1.0})) == 2, name
    remote.set_retrieval_config(**retrieval)
    remote.set_learning_config(**learning)
    assert (remote.retrieval_config, remote.learning_config) == (retrieval, learning)


def test_texts_are_embedded_by_the_server_as_locally(
    server: Server, embedder: memrl.Embedder
) -> None:
    client = memrl.Client(server.url, namespace="texts")
    texts = ["book a flight to Lisbon", "parse a date in Rust", "fix a flaky test"]
    np.testing.assert_allclose(client.embed(texts), embedder.embed(texts), atol=1e-6)
    assert client.embed("one").shape == (embedder.dim,)
    local = memrl.Bank.in_memory(embedder=embedder)
    for bank in (client, local):
        assert bank.add(texts, ["search by airport code", "chrono", "rerun it alone"]) == [0, 1, 2]
    got = client.retrieve("fly to Porto", k2=2, delta=0.0)
    want = local.retrieve("fly to Porto", k2=2, delta=0.0)
    assert got.memory_ids == want.memory_ids and len(got) == 2
    for a, b in zip(got.hits, want.hits, strict=True):
        assert a.sim == pytest.approx(b.sim, abs=1e-6)
    assert client.health()["model"] == "all-MiniLM-L6-v2"
    client.delete_namespace()


def test_errors_are_the_local_classes(remote: memrl.Client) -> None:
    remote.add(["a", "b"], ["x", "y"], embeddings=unit(2, DIM, 1))
    with pytest.raises(TypeError, match="lambda_"):
        remote.retrieve(unit(1, DIM, 2)[0], **{"lambda": 0.5})  # read locally: nothing sent
    with pytest.raises(memrl.InvalidInputError, match="k1"):
        remote.retrieve(unit(1, DIM, 2)[0], k1=0)
    with pytest.raises(memrl.InvalidInputError, match="dimension") as wrong:
        remote.retrieve(np.ones(DIM + 1, np.float32))
    assert wrong.value.status == 400
    with pytest.raises(memrl.InvalidInputError):
        remote.retrieve(unit(1, DIM, 2)[0], lambda_=2.0)
    with pytest.raises(memrl.NotFoundError):
        remote.feedback(12345, reward=1.0)
    with pytest.raises(KeyError):
        remote[99]
    with pytest.raises(memrl.NotFoundError):
        remote.remove(99)
    with pytest.raises(memrl.ConflictError):
        remote.add("c", "z", embeddings=unit(1, DIM, 3)[0], ids=0)
    with pytest.raises(memrl.InvalidInputError, match="alpha"):
        remote.set_learning_config(alpha=1.5)
    with pytest.raises(memrl.ConflictError):
        remote.create(dim=DIM + 1, model_id="toy")
    assert len(remote) == 2  # every failed call left the bank as it was
    with pytest.raises(memrl.NotFoundError):
        memrl.Client(remote.url, namespace="never-written").retrieve("anything")
    with pytest.raises(memrl.InvalidInputError, match="namespace"):
        memrl.Client(remote.url, namespace="../etc")
    with pytest.raises(memrl.InvalidInputError, match="url"):
        memrl.Client("ftp://example/")


def test_keys_are_enforced(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("key-of-a-0123456789 a\nkey-of-all-012345678 *\n")
    s = Server(
        tmp_path / "data", "--no-model", "--dim", str(DIM), "--model-id", "toy", "--keys", str(keys)
    )
    try:
        a = memrl.Client(s.url, api_key="key-of-a-0123456789", namespace="a")
        assert a.add("i", "e", embeddings=unit(1, DIM, 1)[0]) == 0
        with pytest.raises(memrl.PermissionDeniedError) as other:
            a.with_namespace("b").add("i", "e", embeddings=unit(1, DIM, 1)[0])
        assert other.value.status == 403 and isinstance(other.value, PermissionError)
        with pytest.raises(memrl.PermissionDeniedError) as none:
            memrl.Client(s.url, namespace="a").retrieve(unit(1, DIM, 2)[0])
        assert none.value.status == 401
        assert memrl.Client(s.url, api_key="key-of-all-012345678", namespace="b").namespaces() == [
            "a"
        ]
        assert a.namespaces() == ["a"]
    finally:
        s.stop()


def test_a_restarted_server_keeps_every_acknowledged_write_and_the_client_reconnects(
    tmp_path: Path,
) -> None:
    s = Server(tmp_path / "data", "--no-model", "--dim", str(DIM), "--model-id", "toy")
    try:
        client = memrl.Client(s.url, namespace="ns")
        ids = client.add([f"i{k}" for k in range(5)], ["e"] * 5, embeddings=unit(5, DIM, 4))
        report = client.feedback(memory_ids=ids[:2], reward=1.0)
        assert report.updates == 2
        s.restart(signal.SIGKILL)
        # The kept-alive connection died with the server: the next write goes over a new one.
        assert client.add("after", "e", embeddings=unit(1, DIM, 5)[0]) == 5
        assert len(client) == 6
        assert client[0].q == pytest.approx(0.3) and client[2].q == 0.0
        client.checkpoint()
        s.restart(signal.SIGTERM)
        assert [m for m in range(6) if m in client] == list(range(6))
    finally:
        s.stop()


def test_one_client_shared_by_threads_loses_no_update(remote: memrl.Client) -> None:
    remote.add([f"i{k}" for k in range(4)], ["e"] * 4, embeddings=unit(4, DIM, 6))
    remote.set_learning_config(alpha=1.0)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(10):
                remote.add(f"t{t} k{k}", "e", embeddings=unit(1, DIM, 100 + t * 10 + k)[0])
                remote.feedback(memory_ids=[t % 4], reward=1.0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(remote) == 4 + 80
    assert [remote[i].visits for i in range(4)] == [20, 20, 20, 20]


def test_a_client_pickles_and_works_where_it_lands(remote: memrl.Client) -> None:
    remote.add("i", "e", embeddings=unit(1, DIM, 1)[0])
    copy = pickle.loads(pickle.dumps(remote))
    assert (copy.url, copy.namespace, len(copy)) == (remote.url, remote.namespace, 1)


class SilentServer:
    """Accepts connections, reads one request and closes without answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()


def test_a_write_without_an_answer_is_outcome_unknown_and_a_read_is_unavailable() -> None:
    silent = SilentServer()
    client = memrl.Client(f"http://127.0.0.1:{silent.port}", namespace="ns", timeout=5)
    with pytest.raises(memrl.OutcomeUnknownError, match="may or may not"):
        client.feedback(memory_ids=[1], reward=1.0)
    with pytest.raises(memrl.UnavailableError, match="nothing was changed"):
        client.retrieve(np.ones(DIM, np.float32))
    silent.sock.close()
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    with pytest.raises(memrl.UnavailableError, match="nothing was sent") as refused:
        memrl.Client(f"http://127.0.0.1:{free}").add("i", "e", embeddings=np.ones(DIM))
    assert isinstance(refused.value, ConnectionError)


def test_the_client_has_the_local_banks_methods() -> None:
    local_only = {
        "open",
        "in_memory",
        "peek_config",
        "memories",
        "intent_key",
        "intent_members",
        "save_as",
        "recovery",
        "log_seq",
        "next_id",
        "embedder",
        "last_checkpoint_error",
    }
    public = {n for n in dir(memrl.Bank) if not n.startswith("_")} - local_only
    missing = {n for n in public if not hasattr(memrl.Client, n)}
    assert not missing, f"memrl.Client lacks {sorted(missing)}"
    for dunder in ("__len__", "__contains__", "__getitem__", "__enter__", "__exit__"):
        assert hasattr(memrl.Client, dunder)
