"""memrl: episodic memory with learned utility for AI agents.

Agents keep memories (intent, experience, utility Q). Retrieval is two-phase: recall by
embedding similarity, then re-rank by a z-scored mix of similarity and Q. After each task the
reward updates the Q of the memories that were used (``Q <- Q + alpha (r - Q)``), so memories
that help rise and those that mislead sink. The engine is Rust; calls release the GIL.

    import memrl
    bank = memrl.Bank.open("bank.safetensors", model="all-MiniLM-L6-v2")
    bank.add("book a flight to Lisbon", "search by airport code (LIS)", success=True)
    r = bank.retrieve("fly to Porto", k2=3)
    for hit in r.hits:
        print(hit.id, hit.score, hit.q, hit.experience)
    bank.feedback(r.id, reward=1.0)

``memrl.Client(url, api_key=..., namespace=...)`` has the same methods over a ``memrl serve``
server, shared by a fleet of agents. ``memrl.langgraph.MemrlStore`` is a LangGraph
``BaseStore`` over memrl banks.
"""

from memrl._errors import (
    BankLockedError,
    ConflictError,
    CorruptError,
    Error,
    InternalError,
    InvalidInputError,
    IoError,
    NotFoundError,
    OutcomeUnknownError,
    OverloadedError,
    PermissionDeniedError,
    UnavailableError,
)
from memrl._memrl import (
    LEARNING_OPTIONS,
    RETRIEVAL_OPTIONS,
    Bank,
    Calibration,
    Embedder,
    Hit,
    Memory,
    OutcomeReport,
    Retrieval,
    Stats,
    __version__,
)
from memrl.client import Client

__all__ = [
    "Bank",
    "Client",
    "Embedder",
    "Retrieval",
    "Hit",
    "Memory",
    "Stats",
    "Calibration",
    "OutcomeReport",
    "RETRIEVAL_OPTIONS",
    "LEARNING_OPTIONS",
    "Error",
    "InvalidInputError",
    "NotFoundError",
    "ConflictError",
    "BankLockedError",
    "OverloadedError",
    "CorruptError",
    "IoError",
    "InternalError",
    "PermissionDeniedError",
    "UnavailableError",
    "OutcomeUnknownError",
    "__version__",
]
