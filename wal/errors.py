"""The error tree of the library.

Every error the library raises derives from :class:`WALError`, so a caller can catch one type. Where Python has a
natural built-in category (bad argument types, unknown keys, timeouts), the library error also derives from that
built-in, so ``except TypeError`` and ``except KeyError`` keep working as users expect.

Each error says *what* went wrong and *where* (channel, file, offset) in its message.
"""

from __future__ import annotations

__all__ = [
    "AccessModeError",
    "CorruptedError",
    "FencedError",
    "InvalidArgumentError",
    "InvalidMessageError",
    "InvalidMessageIDError",
    "InvalidTxnStateError",
    "PartialAppendError",
    "ShutdownError",
    "TxnExpiredError",
    "UnknownBackendError",
    "WALError",
    "WALIOError",
    "WALLockedError",
    "WALTimeoutError",
]


class WALError(Exception):
    """Base of every error the library raises."""


class ShutdownError(WALError):
    """The object (opener, WAL, scanner) is closed or closing; open a new one to continue."""


class FencedError(WALError):
    """A newer term owns the channel: this writer must stop. Writing is fenced forever for this WAL."""


class WALLockedError(WALError):
    """Another writer (thread or process) holds the channel's write lock, or may: localfs also raises it when the
    channel's ``LOCK`` file was deleted, since a writer keeps its lock on the deleted file and a new one cannot tell
    (``wal repair --no-writer-running`` once no writer runs)."""


class CorruptedError(WALError):
    """Bytes on disk fail their checksum or structure check, in a place that cannot be a torn tail; or files the
    log says it holds are gone (segments deleted from outside); or a reader meets a segment that is not a regular
    file (opening for write raises :class:`WALIOError` for that); or a localfs read-only reader's channel was
    deleted, and maybe made anew, under it (a new read starts over on the new log).

    The message names the file and the byte offset. The library never returns the damaged data and never cuts
    acknowledged records to "repair" it: inspect with ``wal verify`` and restore from a replica or backup.
    """

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class WALIOError(WALError):
    """An operating-system I/O error (ENOSPC, EIO, a failed fdatasync) hit the log, or opening for write found a
    file that is not a regular one (a FIFO, a directory) under a file's name; nats: the cluster cannot be reached.

    After a failed fdatasync the WAL closes itself: the kernel may have dropped the dirty pages, so retrying the
    sync could report success for data that is gone (the "fsyncgate" lesson). Reopen to recover.
    """


class InvalidMessageIDError(WALError, ValueError):
    """A marshalled message ID could not be parsed, or belongs to another backend."""


class InvalidMessageError(WALError, TypeError):
    """Something that should be a message is not one, or was built with a wrong type: a payload that is not
    bytes-like, a non-str property, a non-message passed to ``append`` (or to ``read``/``truncate``, which take a
    ``ReadOption`` and a ``MessageID``)."""


class InvalidArgumentError(WALError, ValueError):
    """An argument the call cannot take: a reserved property key, a bad channel name, a duration out of range, an
    option of the wrong type or value. It is a ``ValueError`` even for a wrong type: catch ``WALError`` (or this
    class) rather than ``TypeError``."""


class UnknownBackendError(WALError, KeyError):
    """No backend is registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable.
        return str(self.args[0]) if self.args else "unknown backend"


class AccessModeError(WALError):
    """A write (append, truncate, MVCC query) was made on a read-only WAL."""


class PartialAppendError(WALError):
    """Some messages of one ``append_messages`` group were stored and others refused: the transaction rules refuse
    a message alone (a body or commit of a txn that expired), and what came before it in the group may be written
    already. ``results`` holds one entry per message of the group, in order: its ``AppendResult``, or the exception
    that refused it (the first of which is also ``__cause__``), so that a retry can leave out what was stored."""

    def __init__(self, message: str, results: list[object]) -> None:
        super().__init__(message)
        self.results = results

    def __reduce__(self) -> tuple[object, ...]:
        # An exception is unpickled by calling its class with ``args``, which lack ``results``: raised in a
        # ProcessPoolExecutor worker, it failed to unpickle in the parent, which then reported a broken pool.
        return type(self), (str(self), self.results), self.__dict__


class WALTimeoutError(WALError, TimeoutError):
    """An operation did not finish within its timeout (``recv``, ``append`` with a timeout)."""


class TxnExpiredError(WALError):
    """The transaction passed its keepalive, was already committed or rolled back, or is unknown (the WAL no longer
    knows it). A ``Txn`` handle used after its own commit or rollback raises :class:`InvalidTxnStateError`."""


class InvalidTxnStateError(WALError):
    """The transaction is in a state that does not allow this operation (e.g. append after commit began, or a
    ``Txn`` handle used after its commit or rollback)."""
