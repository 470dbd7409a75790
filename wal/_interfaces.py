"""The exposed interfaces: what a program using the WAL sees. No logic lives here.

Lifetimes nest: an :class:`OpenerBuilder` lives for the program; an :class:`Opener` as long as its backend
resources; a :class:`WAL` (or read-only :class:`ROWAL`) as long as its writer, inside its opener; a
:class:`Scanner` as long as its reader, inside its WAL. Closing an outer object closes what it contains and waits
for calls in flight; a closed object raises :class:`~wal.errors.ShutdownError` on use.
Every object is also a context manager that closes on exit.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ._closeable import Closeable
from ._types import AppendResult, OpenOption, PChannelInfo, ReadOption
from .errors import ShutdownError
from .message import ImmutableMessage, MessageID, MutableMessage, TxnContext

__all__ = ["ROWAL", "WAL", "Opener", "OpenerBuilder", "Scanner", "Txn"]


class Scanner(Closeable):
    """A reader of one channel, delivering messages in order from its deliver policy on, following the tail.

    ``recv`` blocks; iteration (``for m in s``) blocks too and ends when the scanner or its WAL closes; ``async
    for m in s`` waits without blocking the event loop.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """The name given in ``ReadOption.name`` (or one made up for the scanner): it names it in logs and metrics."""

    @property
    @abstractmethod
    def channel(self) -> PChannelInfo:
        """The channel read, as its WAL was opened."""

    @abstractmethod
    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        """The next message.

        Raises :class:`~wal.errors.WALTimeoutError` (a ``TimeoutError``) when none arrives within ``timeout``
        seconds, :class:`~wal.errors.ShutdownError` once the scanner or its WAL is closed, or the error that ended
        the scanner (e.g. :class:`~wal.errors.CorruptedError`).
        """

    @abstractmethod
    def done(self) -> threading.Event:
        """An event set when the scanner has finished (closed or failed)."""

    @abstractmethod
    def error(self) -> BaseException | None:
        """The exception that ended the scanner, or None (a close is not an error)."""

    def __iter__(self) -> Iterator[ImmutableMessage]:
        while True:
            try:
                yield self.recv(None)
            except ShutdownError:
                err = self.error()
                if err is not None:
                    raise err from None
                return

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[ImmutableMessage]:
        """``async for m in scanner``: waits without blocking the event loop, ends as iteration does, and a step
        that is cancelled (a task cancelled, ``asyncio.wait_for`` around ``__anext__``) loses no message: the next
        step gets it. (No default here: a ``recv`` run in an executor pops a message that a cancelled step then
        drops.)"""


class Txn(Closeable):
    """A transaction handle from :meth:`WAL.begin_txn`: as a context manager it commits on a clean exit and rolls
    back on an exception. A transaction that is neither committed nor rolled back within its keepalive expires and
    is never delivered. A method's ``timeout`` of None takes the one given to ``begin_txn`` (None there: no bound).
    """

    @property
    @abstractmethod
    def txn_ctx(self) -> TxnContext:
        """The transaction's ID and keepalive, stamped on its begin, body and end messages."""

    @abstractmethod
    def append(self, msg: MutableMessage, timeout: float | None = None) -> AppendResult:
        """Append ``msg`` to the transaction (on the transaction's vchannel); readers see it only once committed.

        ``msg`` keeps the txn's context (and vchannel) afterwards: appended again with ``WAL.append`` it would join
        this txn, not go alone (see :class:`~wal.message.MutableMessage`).
        """

    @abstractmethod
    def commit(self, timeout: float | None = None) -> AppendResult:
        """Commit: readers then get the transaction once, as one TXN message. Raises once it expired."""

    @abstractmethod
    def rollback(self, timeout: float | None = None) -> AppendResult:
        """Roll back: no reader ever gets the transaction's messages."""

    @property
    def finished(self) -> bool:
        """Whether ``commit`` or ``rollback`` was called already (whether it succeeded or not)."""
        return False

    def close(self) -> None:
        """Roll back if still open (a no-op after commit or rollback)."""

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self.close()
        elif not self.finished:  # the block may have committed or rolled back itself
            self.commit()


class ROWAL(Closeable):
    """A read-only view of a channel."""

    @property
    @abstractmethod
    def wal_name(self) -> str:
        """The backend's name (the builder's name)."""

    @property
    @abstractmethod
    def channel(self) -> PChannelInfo:
        """The channel as opened: name, term and access mode."""

    @abstractmethod
    def read(self, opt: ReadOption | None = None) -> Scanner:
        """Open a scanner; it lives inside this WAL and closes with it."""

    @abstractmethod
    def is_available(self) -> bool:
        """True until the WAL is closed, fenced, or stopped for good by an I/O error or an interrupt (then appends
        and new reads raise that error; reopen the WAL)."""

    @abstractmethod
    def available(self) -> threading.Event:
        """Milvus's misnamed ``Available()``: an event set when the WAL becomes *unavailable* (closed, fenced,
        or stopped by an I/O error or an interrupt)."""


class WAL(ROWAL):
    """The writer of a channel (a WAL opened with ``AccessMode.RO`` refuses every write).

    ``close()`` first waits up to the build option ``txn_close_timeout`` (3 s by default, 0 for no wait) for open
    transactions to commit or roll back (appends are still taken meanwhile, so they can), then stores what was
    accepted, closes the scanners and releases the channel.
    """

    @abstractmethod
    def append(self, msg: MutableMessage, timeout: float | None = None) -> AppendResult:
        """Append one message and wait until it is stored (durably, under ``sync="always"``).

        ``timeout`` bounds the wait, not the append: after ``WALTimeoutError`` the message may still be stored."""

    @abstractmethod
    def append_async(self, msg: MutableMessage) -> Future[AppendResult]:
        """Start an append; calls made one after another by one thread are persisted in that order.

        The append is queued for the next group commit at once, so the future cannot be cancelled (``cancel()``
        returns False; cancelling an ``asyncio.wrap_future`` of it stops the awaiting, not the append). Done
        callbacks run in the thread that settled the batch: the WAL's append thread, or a producer that ran the
        batch itself. A callback may append again, but must not wait for another ``append_async`` of the same
        WAL: in the append thread, that ``result()`` raises ``WALError`` (it would wait for itself).
        """

    @abstractmethod
    def append_messages(
        self, msgs: Sequence[MutableMessage], timeout: float | None = None
    ) -> list[AppendResult]:
        """Append several messages in order as one group commit; results are in the same order.

        If the backend refuses one of them (too large, say), none is stored and its error is raised. The
        transaction rules refuse a message alone: when others of the group were stored, ``PartialAppendError``
        is raised with every message's outcome."""

    @abstractmethod
    def get_latest_mvcc_timestamp(self, vchannel: str) -> int:
        """A time tick such that every message of ``vchannel`` at or below it is already visible to readers.

        ``vchannel`` names one (a non-empty str; else :class:`~wal.errors.InvalidArgumentError`); messages sent to
        every vchannel count for each."""

    @abstractmethod
    def truncate(self, message_id: MessageID) -> None:
        """Allow the backend to delete what lies wholly before ``message_id`` (localfs: whole segments)."""

    @abstractmethod
    def begin_txn(self, vchannel: str, keepalive: float | None = None, timeout: float | None = None) -> Txn:
        """Start a transaction on ``vchannel`` (default keepalive: the ``txn_keepalive`` build option).

        A transaction lives on one vchannel: ``""`` or None raises :class:`~wal.errors.InvalidArgumentError`, as a
        ``BEGIN_TXN`` message without a vchannel does (on a message ``""`` means "every vchannel").

        ``timeout`` bounds each write of the transaction, as ``append``'s does (:class:`~wal.errors.WALTimeoutError`,
        and what timed out may still be stored): its begin, and every later call of the handle that gives none,
        the commit or rollback that ``with`` makes on exit included (which takes no argument, and waited without
        bound on a stalled disk or a full queue).
        """


class Opener(Closeable):
    """Opens WALs on one backend; closing it closes every WAL it opened."""

    @abstractmethod
    def open(self, opt: OpenOption) -> WAL:
        """Open ``opt.channel``: read-write (the default; one writer per channel, a lower term is fenced) or
        read-only (``AccessMode.RO``, any number, beside the writer). Writable WALs are typed ``WAL``; a read-only
        one refuses every write with ``AccessModeError`` (annotate it ``ROWAL`` to have a type checker refuse them: an
        overload on the mode broke ``dataclasses.replace(channel, access_mode=...)`` in users' code; see
        docs/RELIABILITY.md)."""


class OpenerBuilder(ABC):
    """Builds openers of one backend; lives for the program."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The backend's registered name (``"localfs"``, ``"memory"``, ``"nats"``...)."""

    @abstractmethod
    def build(self, **options: Any) -> Opener:
        """An opener; options are keyword arguments (adaptor options plus the backend's own)."""
