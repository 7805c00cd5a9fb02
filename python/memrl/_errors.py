"""The exceptions memrl raises: one hierarchy under :class:`Error`, one class per kind of failure.

Each class mirrors one ``memrl::ErrorKind`` of the Rust library (its name is in ``kind``), and
those that have a natural built-in meaning also derive from it, so ordinary ``except ValueError``
or ``except KeyError`` code keeps working.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every memrl error. ``kind`` is the library's stable name for the failure;
    ``status`` the HTTP status when a server (``memrl.Client``) answered with it."""

    kind: str = "error"
    _status: int | None = None

    @property
    def status(self) -> int | None:
        """The HTTP status a server answered with (``memrl.Client``), else None."""
        return self._status


class InvalidInputError(Error, ValueError):
    """The caller's input is wrong (a value out of range, a wrong dimension, NaN, an unknown option,
    a write to a read-only bank); the message names the field. Retrying the same call fails the
    same way, and nothing was changed."""

    kind = "invalid_input"


class NotFoundError(Error, KeyError):
    """A memory, retrieval, bank or model that does not exist."""

    kind = "not_found"

    def __str__(self) -> str:
        # KeyError quotes its argument; our message is a sentence.
        return str(self.args[0]) if self.args else ""


class ConflictError(Error):
    """The call conflicts with the bank's state: a duplicate id, a bank that already exists."""

    kind = "conflict"


class BankLockedError(ConflictError):
    """The bank is open for writing elsewhere (another process or another open ``Bank``).
    Open it read-only, or close the other writer."""


class OverloadedError(Error):
    """A bounded queue is full: retry later (after ``retry_after`` seconds when a server said
    so)."""

    kind = "overloaded"
    _retry_after: float | None = None

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait before retrying (its ``Retry-After``), else None."""
        return self._retry_after


class CorruptError(Error):
    """Stored data is damaged or of an unknown format: a snapshot, a log, a model file."""

    kind = "corrupt"


class IoError(Error, OSError):
    """The operating system refused a file operation (permissions, a full disk, a missing
    folder); ``errno`` is set when the system gave one."""

    kind = "io"


class InternalError(Error):
    """A failure inside memrl or its device, not the caller's fault (please report it)."""

    kind = "internal"


class PermissionDeniedError(Error, PermissionError):
    """A server refused the API key: none or an unknown one (HTTP 401), or one that may not use
    this namespace (403)."""

    kind = "permission_denied"


class UnavailableError(Error, ConnectionError):
    """A server could not be reached, did not answer a read, or is shutting down (HTTP 503).
    Nothing was changed: the call can be retried (against another instance, or later)."""

    kind = "unavailable"


class OutcomeUnknownError(Error):
    """A write was sent to a server and no answer came (the connection broke, the timeout
    passed): it may or may not have been applied. Retrying it blindly could apply it twice;
    check (``get``, ``stats``) before retrying."""

    kind = "outcome_unknown"


__all__ = [
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
]
