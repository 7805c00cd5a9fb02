"""``memrl.Client``: one namespace of a ``memrl serve`` server, with the methods of a local
:class:`memrl.Bank`, so that an agent moves from a local bank to a shared one by changing the
line that opens it::

    bank = memrl.Bank.open("coding.safetensors", model="all-MiniLM-L6-v2")    # local
    bank = memrl.Client("http://10.0.0.5:8420", api_key=key, namespace="coding")  # remote

The options are read by the same code as a local bank's (a misspelt option or a value of the
wrong type fails the same way, before any request is sent) and the answers are the same classes
(``Retrieval``, ``Hit``, ``Memory``, ``Stats``, ``Calibration``, ``OutcomeReport``), decoded by
the engine from the server's JSON. Errors are the same hierarchy; a remote call adds
:class:`UnavailableError` (nothing was applied: retry), :class:`OutcomeUnknownError` (a write
was sent and no answer came: it may or may not have been applied, so do not blindly retry it)
and :class:`PermissionDeniedError` (a missing or wrong API key).

A ``Client`` is safe to share between threads (each thread keeps its own keep-alive
connection, and socket waits release the GIL) and can be pickled (to send it to worker
processes); the connections are opened again where it lands.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import select
import threading
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast

import numpy as np

from memrl import _errors
from memrl._memrl import Calibration, Memory, OutcomeReport, Retrieval, Stats, _Wire

if TYPE_CHECKING:
    from memrl._memrl import BankConfig, LearningConfig, RetrievalConfig

__all__ = ["Client"]

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: The server's error kinds (``{"error": {"kind", "message"}}``) and the class each raises.
_KINDS: dict[str, type[_errors.Error]] = {
    "invalid_input": _errors.InvalidInputError,
    "payload_too_large": _errors.InvalidInputError,
    "unsupported_media_type": _errors.InvalidInputError,
    "method_not_allowed": _errors.InvalidInputError,
    "not_found": _errors.NotFoundError,
    "conflict": _errors.ConflictError,
    "overloaded": _errors.OverloadedError,
    "corrupt": _errors.CorruptError,
    "io": _errors.IoError,
    "internal": _errors.InternalError,
    "unauthorized": _errors.PermissionDeniedError,
    "forbidden": _errors.PermissionDeniedError,
    "shutting_down": _errors.UnavailableError,
}


def _width(value: Any) -> int:
    """The length of the vectors in ``value`` (0 for texts); the engine checks the shape."""
    if value is None or isinstance(value, str):
        return 0
    if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
        return 0
    try:
        shape = np.shape(value)
    except ValueError:  # ragged: the engine's conversion reports it
        return 0
    return int(shape[-1]) if shape else 0


def _memory_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"id: expected an int, got {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise _errors.InvalidInputError(f"id: {value} must be an integer in [0, 2**64)")
    return value


class _Connections(threading.local):
    conn: http.client.HTTPConnection | None = None


class Client:
    """One namespace of a ``memrl serve`` server, with the methods of :class:`memrl.Bank`.

    ``url`` is the server (``http://host:port``, or ``https://``); ``api_key`` its bearer
    token (default: the ``MEMRL_API_KEY`` environment variable; none for a server without
    keys); ``namespace`` the bank to use (1-64 characters of ``A-Z a-z 0-9 _ -``; the server
    creates it on the first write); ``timeout`` seconds to wait for each answer.

    Every acknowledged write is durable on the server (its write-ahead log, one fsync shared
    by the concurrent writes of every client), so there is nothing to flush here.
    ``bulk`` sends the whole load as one request (all or nothing, as locally, within the
    server's ``--max-items``). ``set_learning_config`` reads the stored config and writes back
    the fields it changes: two clients changing the same field at once, the last one wins.

    Local-only members (``memories()``, ``intent_key``, ``intent_members``, ``save_as``,
    ``recovery``, ``log_seq``, ``next_id``, ``embedder``, ``last_checkpoint_error``) are not
    offered: the server does not expose a bank's internals.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8420",
        *,
        api_key: str | None = None,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise _errors.InvalidInputError(
                f"url: {url!r} is not an http:// or https:// address of a memrl server"
            )
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise _errors.InvalidInputError(
                f"url: {url!r} has a path or query; give the server's address only"
            )
        if not _NAMESPACE.match(namespace):
            raise _errors.InvalidInputError(
                f"namespace: {namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ -, "
                "starting with a letter or digit"
            )
        if not (timeout > 0):
            raise _errors.InvalidInputError(f"timeout: {timeout} must be > 0 seconds")
        if api_key is None:
            api_key = os.environ.get("MEMRL_API_KEY") or None
        self._url = f"{parsed.scheme}://{parsed.netloc}"
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._api_key = api_key
        self._namespace = namespace
        self._timeout = float(timeout)
        self._local = _Connections()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._health: dict[str, Any] | None = None

    # ---- identity ----

    @property
    def url(self) -> str:
        """The server's address."""
        return self._url

    @property
    def namespace(self) -> str:
        """The namespace (bank) this client uses."""
        return self._namespace

    @property
    def path(self) -> None:
        """None: the bank lives on the server (a local bank's file path)."""
        return None

    @property
    def is_durable(self) -> bool:
        """True: the server's namespaces are durable banks."""
        return True

    @property
    def read_only(self) -> bool:
        """False: what a key may write is the server's to decide (403 otherwise)."""
        return False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def with_namespace(self, namespace: str) -> Client:
        """A client of the same server and key for another namespace."""
        return Client(self._url, api_key=self._api_key, namespace=namespace, timeout=self._timeout)

    def __repr__(self) -> str:
        return f"Client(url={self._url!r}, namespace={self._namespace!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self._url,
            "api_key": self._api_key,
            "namespace": self._namespace,
            "timeout": self._timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            api_key=state["api_key"],
            namespace=state["namespace"],
            timeout=state["timeout"],
        )

    # ---- HTTP ----

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._local.conn
        if conn is not None and conn.sock is not None:
            # A keep-alive connection the server has closed (a restart, an idle timeout) reads
            # as ready with nothing to read: open a new one before sending, so that a write is
            # never sent into a dead socket (where its outcome could not be known).
            try:
                ready, _, _ = select.select([conn.sock], [], [], 0)
            except (OSError, ValueError):
                ready = [conn.sock]
            if ready:
                conn.close()
                conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = self._local.conn
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def _request(
        self, method: str, path: str, body: str | bytes | None = None, *, write: bool
    ) -> bytes:
        """The answer's body of a 2xx; the class of the error otherwise."""
        if self._closed:
            raise _errors.InvalidInputError("client: the client is closed")
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = body.encode("utf-8") if isinstance(body, str) else body
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.connect()
        except OSError as e:
            self._drop_connection()
            raise _errors.UnavailableError(
                f"{self._url} could not be reached ({e}); nothing was sent"
            ) from e
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as e:
            self._drop_connection()
            if write:
                raise _errors.OutcomeUnknownError(
                    f"{method} {path}: the request was sent to {self._url} and no answer came "
                    f"({e!r}); it may or may not have been applied"
                ) from e
            raise _errors.UnavailableError(
                f"{method} {path}: no answer from {self._url} ({e!r}); nothing was changed"
            ) from e
        if response.will_close:
            self._drop_connection()
        if 200 <= response.status < 300:
            return answer
        self._raise(response.status, answer, response.getheader("Retry-After"))

    def _raise(self, status: int, answer: bytes, retry_after: str | None) -> NoReturn:
        try:
            error = json.loads(answer)["error"]
            kind, message = str(error["kind"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            raise _errors.InternalError(
                f"HTTP {status} from {self._url}, not a memrl error body: {answer[:200]!r}"
            ) from None
        cls = _KINDS.get(kind, _errors.InternalError)
        exc = cls(message)
        exc._status = status
        if retry_after is not None and isinstance(exc, _errors.OverloadedError):
            try:
                exc._retry_after = float(retry_after)
            except ValueError:
                pass
        raise exc

    def _ns(self, suffix: str = "") -> str:
        return f"/v1/namespaces/{self._namespace}{suffix}"

    def _info(self) -> dict[str, Any] | None:
        """``GET /v1/namespaces/{ns}``, or None when the namespace does not exist yet."""
        raw = self._info_raw()
        return None if raw is None else json.loads(raw)

    def _info_raw(self) -> bytes | None:
        try:
            return self._request("GET", self._ns(), write=False)
        except _errors.NotFoundError:
            return None

    def _info_required(self) -> bytes:
        raw = self._info_raw()
        if raw is None:
            raise _errors.NotFoundError(
                f"no namespace {self._namespace!r} on {self._url} "
                "(it is created by its first write)"
            )
        return raw

    # ---- the server ----

    def health(self) -> dict[str, Any]:
        """``{"status", "version", "model", "dim"}`` of the server (no key needed)."""
        health = cast(dict[str, Any], json.loads(self._request("GET", "/health", write=False)))
        self._health = health
        return health

    def namespaces(self) -> list[str]:
        """The namespaces this client's key may use."""
        answer = json.loads(self._request("GET", "/v1/namespaces", write=False))
        return [ns["name"] for ns in answer["namespaces"]]

    def create(
        self,
        *,
        dim: int | None = None,
        model_id: str | None = None,
        dtype: str | None = None,
        dedup_sim: float | None = None,
    ) -> bool:
        """Creates the namespace with this shape (what is left out is the server's default);
        True when it was created, False when it exists with that shape, a ``ConflictError``
        when it exists with another."""
        body = {
            k: v
            for k, v in {
                "dim": dim,
                "model_id": model_id,
                "dtype": dtype,
                "dedup_sim": dedup_sim,
            }.items()
            if v is not None
        }
        answer = json.loads(self._request("PUT", self._ns(), json.dumps(body), write=True))
        return bool(answer["created"])

    def delete_namespace(self) -> None:
        """Deletes the whole namespace (every memory, its snapshot and log) on the server."""
        self._request("DELETE", self._ns(), write=True)

    # ---- the bank's shape and configs ----

    @property
    def config(self) -> BankConfig:
        """The bank's shape: ``{"dim", "dtype", "dedup_sim", "model_id"}``."""
        return _Wire.namespace_dicts(self._info_required())[0]

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.config["dim"])

    @property
    def model_id(self) -> str:
        """The model that made the bank's keys."""
        return str(self.config["model_id"])

    @property
    def retrieval_config(self) -> RetrievalConfig:
        """The stored retrieval config, as the options that would set it."""
        return _Wire.namespace_dicts(self._info_required())[1]

    @property
    def learning_config(self) -> LearningConfig:
        """The stored learning config, as the options that would set it."""
        return _Wire.namespace_dicts(self._info_required())[2]

    @property
    def num_intents(self) -> int:
        """Intent keys (memories sharing an intent share one)."""
        info = self._info()
        return 0 if info is None else int(info["intents"])

    @property
    def log_bytes(self) -> int | None:
        """The size of the namespace's write-ahead log on the server."""
        info = self._info()
        return None if info is None else info["log_bytes"]

    def set_retrieval_config(self, **options: Any) -> None:
        """Changes the stored retrieval config field by field (``retrieve``'s options)."""
        patch = _Wire.retrieval_options("set_retrieval_config", **options)
        body = '{"retrieval_config":' + patch + "}"
        self._request("PATCH", self._ns("/config"), body, write=True)

    def set_learning_config(self, **options: Any) -> None:
        """Changes the stored learning config (``alpha``, ``q_init``, ``reward_range``,
        ``out_of_range``)."""
        info = self._info()
        stored = info["learning_config"] if info else {}
        config = json.loads(_Wire.learning_config(json.dumps(stored).encode(), **options))
        # Only the fields this call changes: a concurrent change to another field survives.
        changed = {k: v for k, v in config.items() if stored.get(k) != v}
        body = json.dumps({"learning_config": changed})
        self._request("PATCH", self._ns("/config"), body, write=True)

    # ---- memories ----

    def __len__(self) -> int:
        info = self._info()
        return 0 if info is None else int(info["memories"])

    def __contains__(self, id: object) -> bool:
        if isinstance(id, bool) or not isinstance(id, int) or not 0 <= id < 2**64:
            return False
        return self.get(id) is not None

    def __getitem__(self, id: int) -> Memory:
        answer = self._request("GET", self._ns(f"/memories/{_memory_id(id)}"), write=False)
        return _Wire.decode("memory", answer)

    def get(self, id: int) -> Memory | None:
        """The memory with this id, or None."""
        try:
            return self[id]
        except _errors.NotFoundError:
            return None

    def add(
        self,
        intents: str | Sequence[str],
        experiences: str | Sequence[str],
        *,
        embeddings: Any = None,
        success: bool | Sequence[bool] | None = None,
        q: float | Sequence[float | None] | None = None,
        ids: int | Sequence[int | None] | None = None,
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    ) -> int | list[int]:
        """As :meth:`memrl.Bank.add`: one memory returns its id, lists return a list (one
        logged write, all or nothing). The server embeds the intents unless ``embeddings``
        are given."""
        items, one = _Wire.memories(
            _width(embeddings), intents, experiences, embeddings, success, q, ids, metadata
        )
        if one:
            answer = self._request("POST", self._ns("/memories"), items[0], write=True)
            return int(json.loads(answer)["id"])
        return self._add_many(items)

    def _add_many(self, items: list[str]) -> list[int]:
        body = '{"memories":[' + ",".join(items) + "]}"
        answer = self._request("POST", self._ns("/memories"), body, write=True)
        return [int(i) for i in json.loads(answer)["ids"]]

    def bulk(self, batches: Iterable[Mapping[str, Any]]) -> list[int]:
        """As :meth:`memrl.Bank.bulk`: every batch (a dict of ``add``'s arguments) in one
        request, all or nothing; if a batch is invalid or the iterator raises, nothing is sent."""
        items: list[str] = []
        for i, batch in enumerate(batches):
            if not isinstance(batch, Mapping):
                raise TypeError(f"batches[{i}]: expected a dict of add()'s arguments")
            unknown = set(batch) - {
                "intents",
                "experiences",
                "embeddings",
                "success",
                "q",
                "ids",
                "metadata",
            }
            if unknown:
                raise TypeError(f"batches[{i}]: unknown arguments {sorted(unknown)}")
            if "intents" not in batch or "experiences" not in batch:
                raise TypeError(f"batches[{i}]: needs intents and experiences")
            batch_items, one = _Wire.memories(
                _width(batch.get("embeddings")),
                batch["intents"],
                batch["experiences"],
                batch.get("embeddings"),
                batch.get("success"),
                batch.get("q"),
                batch.get("ids"),
                batch.get("metadata"),
            )
            if one:
                raise TypeError(f"batches[{i}]: intents and experiences must be lists")
            items.extend(batch_items)
        return self._add_many(items)

    def remove(self, id: int) -> Memory:
        """Removes memory ``id`` and returns it; a ``NotFoundError`` when there is none."""
        answer = self._request("DELETE", self._ns(f"/memories/{_memory_id(id)}"), write=True)
        return _Wire.decode("memory", answer)

    # ---- retrieval and feedback ----

    def retrieve(self, queries: Any, **options: Any) -> Retrieval | list[Retrieval]:
        """As :meth:`memrl.Bank.retrieve`: a str or one vector gives a ``Retrieval``, a list of
        str or a matrix a list; the options override the stored config for this call."""
        body, single = _Wire.retrieve_body(queries, _width(queries), **options)
        answer = self._request("POST", self._ns("/retrieve"), body, write=False)
        if single:
            return _Wire.decode("retrieval", answer)
        return _Wire.decode("retrievals", answer)

    def feedback(
        self,
        retrieval: int | Retrieval | None = None,
        *,
        reward: float,
        memory_ids: Sequence[int] | None = None,
    ) -> OutcomeReport:
        """As :meth:`memrl.Bank.feedback`: the retrieval (``r`` or ``r.id``) whose hits the
        agent used, or ``memory_ids``."""
        body = _Wire.feedback_body(retrieval, reward, memory_ids)
        return _Wire.decode(
            "outcome_report", self._request("POST", self._ns("/feedback"), body, write=True)
        )

    def feedback_many(self, rewards: Sequence[tuple[int | Retrieval, float]]) -> OutcomeReport:
        """``feedback`` for several retrievals as one atomic batch."""
        body = _Wire.feedback_many_body(rewards)
        return _Wire.decode(
            "outcome_report", self._request("POST", self._ns("/feedback"), body, write=True)
        )

    def apply_outcomes(self, outcomes: Sequence[tuple[Sequence[int], float]]) -> OutcomeReport:
        """A batch of outcomes by memory ids, applied atomically."""
        body = _Wire.outcomes_body(outcomes)
        return _Wire.decode(
            "outcome_report", self._request("POST", self._ns("/feedback"), body, write=True)
        )

    # ---- telemetry, calibration, embedding ----

    def stats(self, bins: int = 10, extremes: int = 5) -> Stats:
        """Counts and Q telemetry (what ``memrl inspect`` prints)."""
        for name, value in (("bins", bins), ("extremes", extremes)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
            if value < 0:
                raise _errors.InvalidInputError(f"{name}: {value} must be >= 0")
        query = urllib.parse.urlencode({"bins": bins, "extremes": extremes})
        return _Wire.decode("stats", self._request("GET", self._ns(f"/stats?{query}"), write=False))

    def calibrate(self, max_pairs: int = 1_000_000, seed: int = 0) -> Calibration:
        """The paper's similarity gate and fixed-zsim statistics (nothing is stored)."""
        body = json.dumps({"max_pairs": max_pairs, "seed": seed})
        answer = self._request("POST", self._ns("/calibrate"), body, write=False)
        return _Wire.decode("calibration", answer)

    def embed(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit vectors from the server's model: float32 ``(len(texts), dim)``, or ``(dim,)``
        for one str."""
        one = isinstance(texts, str)
        items = [texts] if one else texts
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"texts: expected a str or a list of str, got {type(texts).__name__}")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected a str, got {type(t).__name__}")
        health = self._health or self.health()
        model, dim = health.get("model"), health.get("dim")
        if model is None:
            raise _errors.NotFoundError(f"{self._url} has no embedding model")
        body = json.dumps({"model": model, "input": list(items), "encoding_format": "base64"})
        answer = json.loads(self._request("POST", "/v1/embeddings", body, write=False))
        rows = [
            np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            for d in sorted(answer["data"], key=lambda d: d["index"])
        ]
        matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim or 0), np.float32)
        return matrix[0] if one else matrix

    def checkpoint(self) -> None:
        """Asks the server to write the namespace's snapshot now (it also does by its policy)."""
        self._request("POST", self._ns("/checkpoint"), write=True)

    # ---- lifecycle ----

    def close(self) -> None:
        """Closes the connections; later calls raise. The server keeps the bank."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> Literal[False]:
        self.close()
        return False
