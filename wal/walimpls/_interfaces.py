"""The interfaces a backend implements. The adaptor (``wal.adaptor``) turns them into a full :class:`wal.WAL`.

A backend only has to give each channel a total order of message IDs, store each message's payload, properties
and metadata exactly, and deliver in ID order. It does not assign time ticks, handle transactions, reorder, or
filter: the adaptor does. Messages must survive closing and reopening a WAL on the same opener.

Thread safety: ``append``/``append_batch`` may be called from many threads at once (the adaptor sends one batch
at a time per WAL, but ``read`` and ``truncate`` run beside it, and tools may use a backend directly); each scanner
is used by one thread at a time, but ``close`` may come from another thread and must wake a blocked ``recv``.

Writing a backend, in short (``wal/walimpls/memory/_backend.py`` is the smallest complete one):

- *Message IDs*: subclass :class:`~wal.message.IntMessageID` (an int per message, ordered), or
  :class:`~wal.message.MessageID` (``wal_name``, ``marshal`` and ``_order_key``: the value IDs are ordered and
  compared by). ``wal_name`` is the builder's ``name``. Register the ID's parser with
  :func:`~wal.message.register_message_id_unmarshaler` when the backend's module is imported: stored
  last-confirmed IDs and user-kept IDs are parsed through it.
- *What to store*: the payload, and everything else as given, exactly: type, properties, vchannel, time tick (a
  64-bit int; a double loses it), last-confirmed ID (often another message's), txn context and term. A backend
  that stores strings only can use :meth:`~wal.message.MutableMessage.wire_properties` on append and
  :meth:`~wal.message.ImmutableMessage.from_wire` on read.
- *Errors*: what ``append_batch`` and ``ScannerImpls.recv`` raise decides what the adaptor does (see their
  docstrings); a timeout must be a :class:`~wal.errors.WALTimeoutError`.
- *Check it*: run :class:`wal.helper.conformance.WALImplsConformance` against your builder.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._closeable import Closeable
from .._types import OpenOption, PChannelInfo
from ..errors import InvalidArgumentError
from ..message import ImmutableMessage, MessageID, MutableMessage
from ..options import DeliverPolicy

__all__ = [
    "OpenerBuilderImpls",
    "OpenerImpls",
    "ROWALImpls",
    "ReadOption",
    "ScannerImpls",
    "WALImpls",
]


@dataclass(frozen=True, slots=True)
class ReadOption:
    """A backend read: a scanner name (for logs and metrics), where to start, and a read-ahead hint (0 = default).

    ``vchannel`` is a hint: the caller needs that vchannel's messages, those for every vchannel (vchannel ``""``)
    and the TIME_TICKs among them. A backend may skip whole units that hold no message of either kind, their time
    ticks included (localfs: segments, by their bloom filter; the ticks of later units release what came before),
    or ignore the hint. It must not drop single TIME_TICKs or ``""`` messages from what it delivers: the adaptor
    releases messages only on time ticks, so a reader would receive nothing, with no error.
    """

    name: str
    deliver_policy: DeliverPolicy = field(default_factory=DeliverPolicy.all)
    read_ahead_buffer_size: int = 0
    vchannel: str | None = None


class ScannerImpls(Closeable):
    """A backend reader: delivers messages in ID order from its policy on and follows new appends."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        """The next message in ID order.

        Raises :class:`~wal.errors.WALTimeoutError` when nothing arrives within ``timeout`` seconds (None waits
        for ever), :class:`~wal.errors.ShutdownError` once closed, or the error that ended the scanner (a
        :class:`~wal.errors.CorruptedError` where the bytes fail their checksum).

        How the adaptor treats what ``read``, ``recv`` and ``recv_batch`` raise: any other ``WALError`` (say a
        :class:`~wal.errors.WALIOError`) or ``OSError`` may pass, so it opens a new reader just after the last
        message delivered, with a backoff of 20 ms doubling to 2 s while reads keep failing (and a logged warning at the
        first failure, then at most one a minute while they go on). It ends its scanner
        with anything else: ``CorruptedError``, ``InvalidArgumentError``, ``InvalidMessageError``,
        ``InvalidMessageIDError``, ``UnknownBackendError``, and any exception that is not a ``WALError`` or
        ``OSError`` (a bug: the same read would fail again). A ``latest()`` reader that fails before delivering
        its first message cannot be resumed (where it started is the backend's secret): its scanner ends with a
        ``WALIOError``, and a ``read`` with ``latest()`` that fails raises.
        """

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        """Up to ``max_messages`` messages, waiting as ``recv`` does for the first one only.

        Backends that can hand out many messages cheaply (a mapped segment) override it; scans use it.
        """
        return [self.recv(timeout)]

    def skipped_to(self) -> MessageID | None:
        """The last ID of the latest stretch of messages this reader passed over because they were deleted before it
        read them (``truncate`` or retention under a slow reader, or a start below the oldest kept), or None.

        The adaptor asks after every batch: a transaction whose begin it read before such a stretch and whose commit
        after it may have lost body messages in it, and is then not delivered (a TXN is all or nothing), unless the
        adaptor had read the whole stretch already (from its write-ahead buffer). A backend that can delete what a
        reader has not reached must say so here.
        """
        return None

    @abstractmethod
    def done(self) -> threading.Event:
        """Set when the scanner has finished (closed, or failed with an error)."""

    @abstractmethod
    def error(self) -> BaseException | None:
        """The error that ended the scanner, or None."""

    @abstractmethod
    def close(self) -> None:
        """Stop; wakes a blocked ``recv`` (which then raises ``ShutdownError``). Idempotent."""


class ROWALImpls(ABC):
    """A backend channel opened for reading."""

    @property
    @abstractmethod
    def wal_name(self) -> str: ...

    @property
    @abstractmethod
    def channel(self) -> PChannelInfo: ...

    @abstractmethod
    def read(self, opt: ReadOption) -> ScannerImpls: ...

    @abstractmethod
    def close(self) -> None:
        """Release the channel; scanners opened from it are closed. Idempotent."""


class WALImpls(ROWALImpls):
    """A backend channel. Opened in ``AccessMode.RO``, ``append``/``append_batch``/``truncate`` raise
    :class:`~wal.errors.AccessModeError`.
    """

    @abstractmethod
    def append(self, msg: MutableMessage) -> MessageID:
        """Store one message (its payload, user properties and the metadata fields the adaptor stamped) and
        return its ID. Returns only once the message is as durable as the backend's sync policy promises.

        Raises :class:`~wal.errors.FencedError` when a newer term owns the channel (fenced for ever),
        :class:`~wal.errors.WALIOError` on an I/O failure, :class:`~wal.errors.ShutdownError` once closed.
        """

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        """Store several messages in order, as one group commit where the backend can; IDs in the same order.

        Returns exactly one ID per message. All or nothing is not promised: on an error, a prefix may be stored
        (and will be delivered), except for :class:`~wal.errors.InvalidArgumentError`,
        :class:`~wal.errors.InvalidMessageError` and :class:`~wal.errors.InvalidMessageIDError`, which promise
        that nothing of the batch was stored (check every message before writing any): the adaptor then appends
        the batch again caller by caller, so that one caller's bad message does not fail the others, and a stored
        prefix would be stored twice.
        """
        return [self.append(m) for m in msgs]

    def failure(self) -> BaseException | None:
        """The error that ended this channel's writing for good, or None while it may still write.

        The adaptor asks after an append failed. A backend that closed itself (localfs after an I/O error: the
        kernel may have dropped pages it had accepted) returns that error, and the WAL becomes unavailable, ends
        its scanners with it and refuses later appends with it, so that callers reopen; an error that may pass
        (a broker away for a moment) leaves this None and the WAL available.
        """
        return None

    def last_time_tick(self) -> int:
        """The largest time tick of any message stored in this channel (0 when empty or unknown).

        The adaptor starts its clock above it, so time ticks keep growing across restarts even if the wall
        clock stepped back. Backends that recover their tail on open know it for free. A backend that returns 0
        for a channel that holds messages leaves that to the wall clock: if it stepped back between two terms, the
        new term's ticks are below the old ones, and readers of both (``all()``) drop the newer messages as out
        of order (DESIGN invariant 2). Return the real value whenever the backend can find it.
        """
        return 0

    @abstractmethod
    def truncate(self, message_id: MessageID) -> None:
        """The caller no longer needs messages before ``message_id``; the backend may delete them (lazily, in
        whole units such as segments). Messages at or after ``message_id`` stay readable.
        """


class OpenerImpls(Closeable):
    """Opens backend channels; owns the backend's shared resources."""

    @abstractmethod
    def open(self, opt: OpenOption) -> WALImpls:
        """Open a channel (``opt.validate()`` first). RW takes the channel's write lock and checks the term:
        :class:`~wal.errors.WALLockedError` if another writer holds it, :class:`~wal.errors.FencedError` if a
        newer term has opened it.
        """

    @abstractmethod
    def close(self) -> None:
        """Close every channel opened here and release resources. Idempotent."""


ADAPTOR_OPTIONS = frozenset({"write_ahead_buffer_bytes", "write_ahead_buffer_keepalive", "time_tick_interval",
                             "txn_keepalive", "txn_close_timeout", "max_inflight_appends", "max_append_batch",
                             "interceptors"})
"""The build options the adaptor consumes (every field of ``wal.adaptor.AdaptorOptions``, spelled out: a backend
imports nothing of the adaptor). ``registry.must_get_builder(name).build(...)`` takes them out before the backend's
builder sees the rest, so a backend builder never gets one on the documented path."""


def unknown_options_error(backend: str, names: Iterable[str], known: Iterable[str] = ()) -> InvalidArgumentError:
    """The error of a backend builder given options it does not know. Every backend refuses the adaptor's options
    too, saying where they go: localfs used to accept and ignore them (memory and nats refused them), so a raw
    backend built with ``time_tick_interval=...`` silently ran without it."""
    names = sorted(names)
    adaptor = [n for n in names if n in ADAPTOR_OPTIONS]
    hint = (
        f" ({', '.join(adaptor)}: option(s) of the full WAL, pass them to "
        f"registry.must_get_builder({backend!r}).build(...))"
        if adaptor
        else ""
    )
    listed = f" (known: {', '.join(sorted(known))})" if known else ""
    return InvalidArgumentError(f"unknown {backend} backend option(s): {', '.join(names)}{hint}{listed}")


class OpenerBuilderImpls(ABC):
    """Registered in :mod:`wal.registry` under :attr:`name`."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Lowercase backend name; also the ``wal_name`` of its message IDs."""

    @abstractmethod
    def build(self, **options: Any) -> OpenerImpls:
        """An opener. Unknown options raise :class:`~wal.errors.InvalidArgumentError` naming them."""
