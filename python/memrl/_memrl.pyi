"""Type stubs of the extension module memrl._memrl (the Rust engine)."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt
from typing_extensions import Unpack

__version__: str
RETRIEVAL_OPTIONS: list[str]
LEARNING_OPTIONS: list[str]

#: One vector (shape ``(dim,)``) or several (``(n, dim)``); float32 C-contiguous is read in place.
ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float32]
StrPath = str | PathLike[str]
ZSim = Literal["pool"] | tuple[float, float]

class BankConfig(TypedDict):
    dim: int
    dtype: Literal["f32", "f16", "bf16"]
    dedup_sim: float
    model_id: str

class RetrievalConfig(TypedDict):
    k1: int
    k2: int
    delta: float
    lambda_: float
    zsim: ZSim
    z_clip: float
    clip_zsim: bool
    q_min: float | None
    epsilon: float
    seed: int
    thompson: float
    ucb: float
    sim_margin: float | None

class LearningConfig(TypedDict):
    alpha: float
    q_init: float
    reward_range: tuple[float, float] | None
    out_of_range: Literal["clamp", "reject"] | None
    baseline_rate: float | None
    q_init_failure: float | None

class RetrievalOptions(TypedDict, total=False):
    """The options of ``Bank.retrieve`` and ``Bank.set_retrieval_config``."""

    k1: int
    k2: int
    delta: float
    lambda_: float
    zsim: ZSim
    z_clip: float
    clip_zsim: bool
    q_min: float | None
    epsilon: float
    seed: int
    thompson: float
    ucb: float
    sim_margin: float | None

class LearningOptions(TypedDict, total=False):
    """The options of ``Bank.set_learning_config``."""

    alpha: float
    q_init: float
    reward_range: tuple[float, float] | None
    out_of_range: Literal["clamp", "reject"] | None
    baseline_rate: float | None
    q_init_failure: float | None

class Tail(TypedDict):
    offset: int
    bytes: int
    reason: str

class Recovery(TypedDict):
    snapshot_seq: int
    replayed: int
    skipped: int
    log_seq: int
    valid_bytes: int
    tail: Tail | None
    stale_temp_files: int
    log_version: int
    upgraded: bool

class Retention(TypedDict, total=False):
    capacity: int
    ttl: float

class Limits(TypedDict, total=False):
    max_text_bytes: int
    max_batch: int
    max_memories: int

class Batching(TypedDict, total=False):
    max_batch: int
    max_batch_tokens: int
    capacity: int

class Batch(TypedDict, total=False):
    """One batch of ``Bank.bulk``: the arguments of ``Bank.add`` for several memories."""

    intents: Sequence[str]
    experiences: Sequence[str]
    embeddings: ArrayLike | None
    success: bool | Sequence[bool] | None
    q: float | Sequence[float | None] | None
    ids: Sequence[int | None] | None
    metadata: Sequence[Mapping[str, Any] | None] | None

class Hit:
    """One retrieved memory and the figures that ranked it."""

    @property
    def id(self) -> int: ...
    @property
    def intent(self) -> str: ...
    @property
    def experience(self) -> str: ...
    @property
    def success(self) -> bool: ...
    @property
    def metadata(self) -> Any: ...
    @property
    def q(self) -> float: ...
    @property
    def sim(self) -> float: ...
    @property
    def zsim(self) -> float: ...
    @property
    def zq(self) -> float: ...
    @property
    def score(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...

class Retrieval:
    """The hits of one query, and the id to report the episode's reward with."""

    @property
    def id(self) -> int: ...
    @property
    def hits(self) -> list[Hit]: ...
    @property
    def memory_ids(self) -> list[int]: ...
    def __len__(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

class Memory:
    """One stored memory: intent, experience, utility Q and bookkeeping."""

    @property
    def id(self) -> int: ...
    @property
    def intent(self) -> str: ...
    @property
    def experience(self) -> str: ...
    @property
    def q(self) -> float: ...
    @property
    def visits(self) -> int: ...
    @property
    def last_reward(self) -> float | None: ...
    @property
    def success(self) -> bool: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def updated_ms(self) -> int: ...
    @property
    def metadata(self) -> dict[str, Any] | None: ...
    def to_dict(self) -> dict[str, Any]: ...

class Stats:
    """Counts and Q telemetry of a bank (what ``memrl inspect`` prints)."""

    @property
    def memories(self) -> int: ...
    @property
    def intents(self) -> int: ...
    @property
    def shared_intents(self) -> int: ...
    @property
    def q_quantiles(self) -> tuple[float, float, float, float, float] | None: ...
    @property
    def q_signs(self) -> tuple[int, int, int]: ...
    @property
    def q_histogram(self) -> list[int]: ...
    @property
    def top(self) -> list[tuple[int, float]]: ...
    @property
    def bottom(self) -> list[tuple[int, float]]: ...
    def to_dict(self) -> dict[str, Any]: ...

class Calibration:
    """The similarity gate and fixed-zsim statistics ``Bank.calibrate`` found."""

    @property
    def delta(self) -> float: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...
    @property
    def intents(self) -> int: ...
    @property
    def pairs(self) -> int: ...
    @property
    def sampled(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

class OutcomeReport:
    """What a batch of outcomes (feedback) changed."""

    @property
    def outcomes(self) -> int: ...
    @property
    def updates(self) -> int: ...
    @property
    def memories(self) -> int: ...
    @property
    def clamped(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

class Embedder:
    """A local sentence-embedding model, shareable between banks and threads."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        device: str = "cpu",
        batch_tokens: int | None = None,
        precision: Literal["f32", "int8"] = "f32",
    ) -> None: ...
    @property
    def precision(self) -> Literal["f32", "int8"]: ...
    @property
    def name(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def batch_tokens(self) -> int: ...
    @property
    def device(self) -> str: ...
    @overload
    def embed(self, texts: str) -> FloatArray: ...
    @overload
    def embed(self, texts: Sequence[str]) -> FloatArray: ...
    def token_count(self, text: str) -> int: ...

class Bank:
    """One bank of memories (intent, experience, utility Q), durable or in memory."""

    @staticmethod
    def open(
        path: StrPath,
        *,
        model: str | None = None,
        precision: Literal["f32", "int8"] | None = None,
        embedder: Embedder | None = None,
        dim: int | None = None,
        model_id: str | None = None,
        dtype: Literal["f32", "f16", "bf16"] | None = None,
        dedup_sim: float | None = None,
        create: bool = True,
        create_new: bool = False,
        read_only: bool = False,
        sync: Literal["every_batch", "never"] | float | None = None,
        checkpoint: Literal["log_outgrows_snapshot", "manual"] | int | None = None,
        device: str | None = None,
        retention: Retention | None = None,
        limits: Limits | None = None,
        batching: Batching | None = None,
    ) -> Bank: ...
    @staticmethod
    def in_memory(
        *,
        model: str | None = None,
        precision: Literal["f32", "int8"] | None = None,
        embedder: Embedder | None = None,
        dim: int | None = None,
        model_id: str | None = None,
        dtype: Literal["f32", "f16", "bf16"] | None = None,
        dedup_sim: float | None = None,
        device: str | None = None,
        retention: Retention | None = None,
        limits: Limits | None = None,
        batching: Batching | None = None,
    ) -> Bank: ...
    @staticmethod
    def peek_config(path: StrPath) -> BankConfig: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def is_durable(self) -> bool: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def config(self) -> BankConfig: ...
    @property
    def dim(self) -> int: ...
    @property
    def model_id(self) -> str: ...
    @property
    def embedder(self) -> Embedder | None: ...
    @property
    def recovery(self) -> Recovery: ...
    @property
    def retrieval_config(self) -> RetrievalConfig: ...
    @property
    def learning_config(self) -> LearningConfig: ...
    @property
    def num_intents(self) -> int: ...
    @property
    def next_id(self) -> int: ...
    @property
    def log_seq(self) -> int: ...
    @property
    def log_bytes(self) -> int | None: ...
    @property
    def last_checkpoint_error(self) -> str | None: ...
    def __len__(self) -> int: ...
    def __contains__(self, id: object) -> bool: ...
    def __getitem__(self, id: int) -> Memory: ...
    def get(self, id: int) -> Memory | None: ...
    def memories(self) -> list[Memory]: ...
    def intent_key(self, id: int) -> FloatArray: ...
    def intent_members(self, id: int) -> list[int]: ...
    def stats(self, bins: int = 10, extremes: int = 5) -> Stats: ...
    def calibrate(self, max_pairs: int = 1000000, seed: int = 0) -> Calibration: ...
    @overload
    def retrieve(
        self,
        queries: str,
        **options: Unpack[RetrievalOptions],
    ) -> Retrieval: ...
    @overload
    def retrieve(
        self,
        queries: Sequence[str] | ArrayLike,
        **options: Unpack[RetrievalOptions],
    ) -> Retrieval | list[Retrieval]: ...
    def set_retrieval_config(
        self,
        **options: Unpack[RetrievalOptions],
    ) -> None: ...
    def set_learning_config(self, **options: Unpack[LearningOptions]) -> None: ...
    @overload
    def add(  # type: ignore[overload-overlap]  # a str is also a Sequence[str]
        self,
        intents: str,
        experiences: str,
        *,
        embeddings: ArrayLike | None = None,
        success: bool | None = None,
        q: float | None = None,
        ids: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int: ...
    @overload
    def add(
        self,
        intents: Sequence[str],
        experiences: Sequence[str],
        *,
        embeddings: ArrayLike | None = None,
        success: bool | Sequence[bool] | None = None,
        q: float | Sequence[float | None] | None = None,
        ids: Sequence[int | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[int]: ...
    def bulk(self, batches: Iterable[Batch]) -> list[int]: ...
    def remove(self, id: int) -> Memory: ...
    def feedback(
        self,
        retrieval: int | Retrieval | None = None,
        *,
        reward: float,
        memory_ids: Sequence[int] | None = None,
    ) -> OutcomeReport: ...
    def feedback_many(self, rewards: Sequence[tuple[int | Retrieval, float]]) -> OutcomeReport: ...
    def apply_outcomes(self, outcomes: Sequence[tuple[Sequence[int], float]]) -> OutcomeReport: ...
    @overload
    def embed(self, texts: str) -> FloatArray: ...
    @overload
    def embed(self, texts: Sequence[str]) -> FloatArray: ...
    def checkpoint(self) -> None: ...
    def save_as(self, path: StrPath) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Bank: ...
    def __exit__(self, exc_type: object, exc: object, traceback: object) -> bool: ...
    # The shard protocol of memrl.sharded (not for direct use).
    def _recall(self, rows: ArrayLike, **options: Any) -> RecallArrays: ...
    def _search_keys(
        self, rows: ArrayLike, k: int, delta: float
    ) -> list[list[tuple[int, float]]]: ...
    def _next_key_id(self) -> int: ...
    def _q_by_id(self) -> tuple[npt.NDArray[np.uint64], FloatArray]: ...
    def _add_placed(
        self,
        intents: Sequence[str],
        experiences: Sequence[str],
        *,
        embeddings: ArrayLike,
        ids: Sequence[int],
        keys: Sequence[tuple[bool, int]],
        success: Sequence[bool] | None = None,
        q: Sequence[float | None] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[int]: ...

class _Wire:
    """Helpers of ``memrl.Client`` (not a public API): options and bodies read as a local bank
    reads them, and server answers decoded into the classes above."""

    @staticmethod
    def retrieval_options(call: str, **options: Any) -> str: ...
    @staticmethod
    def retrieve_body(queries: Any, width: int, **options: Any) -> tuple[str, bool]: ...
    @staticmethod
    def memories(
        width: int,
        intents: Any,
        experiences: Any,
        embeddings: Any = None,
        success: Any = None,
        q: Any = None,
        ids: Any = None,
        metadata: Any = None,
    ) -> tuple[list[str], bool]: ...
    @staticmethod
    def feedback_body(retrieval: Any, reward: Any, memory_ids: Any) -> str: ...
    @staticmethod
    def feedback_many_body(rewards: Any) -> str: ...
    @staticmethod
    def outcomes_body(outcomes: Any) -> str: ...
    @staticmethod
    def learning_config(stored: bytes, **options: Any) -> str: ...
    @staticmethod
    def namespace_dicts(body: bytes) -> tuple[BankConfig, RetrievalConfig, LearningConfig]: ...
    @overload
    @staticmethod
    def decode(kind: Literal["retrieval"], body: bytes) -> Retrieval: ...
    @overload
    @staticmethod
    def decode(kind: Literal["retrievals"], body: bytes) -> list[Retrieval]: ...
    @overload
    @staticmethod
    def decode(kind: Literal["hit"], body: bytes) -> Hit: ...
    @overload
    @staticmethod
    def decode(kind: Literal["memory"], body: bytes) -> Memory: ...
    @overload
    @staticmethod
    def decode(kind: Literal["stats"], body: bytes) -> Stats: ...
    @overload
    @staticmethod
    def decode(kind: Literal["calibration"], body: bytes) -> Calibration: ...
    @overload
    @staticmethod
    def decode(kind: Literal["outcome_report"], body: bytes) -> OutcomeReport: ...

#: A memory on the shard protocol's wire: (id, intent, experience, q, visits, last_reward,
#: success, created_ms, updated_ms, metadata as JSON text, baseline).
MemoryWire = tuple[
    int, str, str, float, int, float | None, bool, int, int, str | None, float | None
]
U64Array = npt.NDArray[np.uint64]
#: A shard's recall of a batch: (key_offsets, key_ids, key_sims, member_offsets, member_keys,
#: member_ids, member_q, member_visits).
RecallArrays = tuple[
    U64Array, U64Array, FloatArray, U64Array, U64Array, U64Array, FloatArray, U64Array
]
#: A pick: (shard, id, q, sim, zsim, zq, score).
Pick = tuple[int, int, float, float, float, float, float]

def _merge_recalls(recalls: Sequence[RecallArrays], **options: Any) -> list[list[Pick]]: ...
def _retrievals(
    picks: Sequence[Sequence[Pick]],
    records: Sequence[Sequence[Memory]],
    retrieval_ids: Sequence[int],
) -> list[Retrieval]: ...
def _place(
    rows: FloatArray,
    dim: int,
    best_existing: Sequence[tuple[int, float] | None],
    dedup_sim: float,
    next_key_id: int,
) -> list[tuple[bool, int]]: ...
def _shard_stats(
    ids: npt.NDArray[np.uint64],
    q: FloatArray,
    intents: int,
    shared_intents: int,
    bins: int,
    extremes: int,
) -> Stats: ...
def _outcome_report(
    outcomes: int, updates: int, memories: int, clamped: int, skipped: int
) -> OutcomeReport: ...
def _memory_from_tuple(fields: MemoryWire) -> Memory: ...

class _EmbeddingWriter:
    """An embeddings file (what ``memrl embed`` writes) being written."""

    def __init__(self, out: StrPath, dim: int, metadata: Mapping[str, str]) -> None: ...
    def append(self, rows: FloatArray, lines: npt.NDArray[np.uint64]) -> None: ...
    def finish(self) -> int: ...
