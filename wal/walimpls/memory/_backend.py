"""The in-memory reference backend: the simplest correct implementation of the backend interfaces.

Each opener keeps a log per channel for its whole life, so messages survive closing and reopening a WAL (any term)
and read-only WALs on the same opener see them. IDs are dense integers from 0. It persists nothing: use it in
tests and as the baseline the adaptor is measured against.

Writers follow the rules of the persistent backends, so tests written against it hold for them: one RW WAL per
channel at a time (a second gets :class:`~wal.errors.WALLockedError`, whatever its term), and the term never goes
back (an RW open below the highest term seen gets :class:`~wal.errors.FencedError`). ``truncate`` really drops
the prefix, so scanners that fall behind it exercise the "start from the oldest kept message" path.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from ... import _fork
from ..._types import AccessMode, OpenOption, PChannelInfo
from ...errors import (
    AccessModeError,
    FencedError,
    InvalidArgumentError,
    InvalidMessageError,
    InvalidMessageIDError,
    ShutdownError,
    WALLockedError,
    WALTimeoutError,
)
from ...helper import PullScanner
from ...message import ImmutableMessage, IntMessageID, MessageID, MutableMessage
from ...options import DeliverPolicyKind
from .._interfaces import OpenerBuilderImpls, OpenerImpls, ReadOption, ScannerImpls, WALImpls, unknown_options_error

__all__ = ["WAL_NAME", "MemoryMessageID", "MemoryOpener", "MemoryOpenerBuilder"]

WAL_NAME = "memory"


class MemoryMessageID(IntMessageID):
    """The position of a message in its channel, from 0."""

    __slots__ = ()
    WAL_NAME = WAL_NAME


class _Log:
    """One channel: the messages, the highest term seen, and who writes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # entered as ``with self.lock``: docs/ARCHITECTURE.md, "Interrupts"
        self.cond = threading.Condition(self.lock)
        self.messages: list[ImmutableMessage] = []
        self.base = 0  # ID of messages[0]; truncate drops a prefix
        self.term = 0
        self.writer: MemoryWAL | None = None
        self.max_time_tick = 0

    @property
    def end(self) -> int:
        return self.base + len(self.messages)


class MemoryScanner(PullScanner):
    def __init__(self, name: str, log: _Log, start: int) -> None:
        super().__init__(name)
        self._log = log
        self._pos = start
        self._jumped = False  # truncated under it: the message before the next one was the last passed over
        self._skipped_to: MessageID | None = None

    def skipped_to(self) -> MessageID | None:
        return self._skipped_to

    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        return self.recv_batch(1, timeout)[0]

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        log = self._log
        deadline = None if timeout is None else time.monotonic() + timeout
        with log.lock:
            while True:
                if self.closed:
                    raise self._error or ShutdownError(f"scanner {self.name!r} is closed")
                if self._pos < log.base:
                    self._pos = log.base  # truncated under us: continue from the oldest kept message
                    self._jumped = True
                if self._pos < log.end:
                    i = self._pos - log.base
                    out = log.messages[i : i + max(1, max_messages)]
                    self._pos += len(out)
                    if self._jumped:
                        self._jumped = False
                        self._skipped_to = MemoryMessageID(log.base + i - 1)  # base > 0: it jumped to it
                    return out
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WALTimeoutError(f"scanner {self.name!r}: no message within {timeout} s")
                log.cond.wait(remaining)

    def _on_close(self) -> None:
        with self._log.lock:
            self._log.cond.notify_all()


class MemoryWAL(WALImpls):
    def __init__(self, opener: MemoryOpener, channel: PChannelInfo, log: _Log) -> None:
        self._opener = opener
        self._channel = channel
        self._log = log
        self._closed = False
        # Weak: a long-lived WAL must not keep every scanner it ever handed out.
        self._scanners: weakref.WeakSet[ScannerImpls] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._forks = _fork.generation

    @property
    def wal_name(self) -> str:
        return WAL_NAME

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    def _check_writable(self) -> None:
        if self._closed:
            raise ShutdownError(f"memory WAL {self._channel} is closed")
        if self._channel.access_mode is AccessMode.RO:
            raise AccessModeError(f"memory WAL {self._channel} is read-only")

    def append(self, msg: MutableMessage) -> MessageID:
        return self.append_batch([msg])[0]

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        if self._channel.access_mode is AccessMode.RO:  # before the type check: RO refuses even append(None)
            raise AccessModeError(f"memory WAL {self._channel} is read-only")
        for m in msgs:  # all checked before any is stored: a bad one in the middle stores nothing
            if not isinstance(m, MutableMessage):
                raise InvalidMessageError(f"append takes a MutableMessage, got {type(m).__name__}")
        log = self._log
        with log.lock:
            self._check_writable()
            ids: list[MessageID] = []
            for m in msgs:
                mid = MemoryMessageID(log.end)
                imm = m.into_immutable(mid)
                imm.payload = bytes(m.payload)  # the caller may reuse its buffer
                log.messages.append(imm)
                if m.time_tick > log.max_time_tick:
                    log.max_time_tick = m.time_tick
                ids.append(mid)
            log.cond.notify_all()
            return ids

    def last_time_tick(self) -> int:
        return self._log.max_time_tick

    def truncate(self, message_id: MessageID) -> None:
        self._check_writable()
        if not isinstance(message_id, MemoryMessageID):
            raise InvalidMessageIDError(f"truncate takes a memory MessageID, got {message_id!r}")
        log = self._log
        with log.lock:
            self._check_writable()
            cut = min(message_id.value, log.end) - log.base
            if cut > 0:
                del log.messages[:cut]
                log.base += cut

    def read(self, opt: ReadOption) -> ScannerImpls:
        if not isinstance(opt, ReadOption):
            raise InvalidArgumentError(f"read takes a walimpls ReadOption, got {type(opt).__name__}")
        log = self._log
        p = opt.deliver_policy
        with log.lock:
            if p.kind is DeliverPolicyKind.ALL:
                start = log.base
            elif p.kind is DeliverPolicyKind.LATEST:
                start = log.end
            else:
                if not isinstance(p.message_id, MemoryMessageID):
                    raise InvalidMessageIDError(f"deliver policy needs a memory MessageID, got {p.message_id!r}")
                start = p.message_id.value + (1 if p.kind is DeliverPolicyKind.START_AFTER else 0)
        s = MemoryScanner(opt.name, log, start)
        with self._lock:  # checked here, not earlier, so a scanner never outlives a concurrent close
            if self._closed:
                raise ShutdownError(f"memory WAL {self._channel} is closed")
            self._scanners.add(s)
        return s

    def close(self) -> None:
        if self._forks != _fork.generation:  # a forked child's copy of the log: its locks may be held by a thread
            self._closed = True  # of the parent that does not exist here (closing it hung)
            return
        # Every step may run again: a close a Ctrl-C cut short is finished by the next one (the channel would
        # otherwise stay taken by this writer).
        with self._lock:
            self._closed = True
            scanners = list(self._scanners)
            self._scanners.clear()
        for s in scanners:
            s.close()
        with self._log.lock:
            if self._log.writer is self:
                self._log.writer = None
        self._opener._forget(self)


class MemoryOpener(OpenerImpls):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._wals: set[MemoryWAL] = set()
        self._closed = False

    def open(self, opt: OpenOption) -> WALImpls:
        opt.validate()
        ch = opt.channel
        # One lock for the whole open: an opener close cannot slip between creating the WAL and recording it.
        with self._lock:
            if self._closed:
                raise ShutdownError("memory opener is closed")
            log = self._logs.setdefault(ch.name, _Log())
            with log.lock:
                if ch.access_mode is AccessMode.RW:
                    if ch.term < log.term:
                        raise FencedError(
                            f"memory channel {ch.name!r}: term {ch.term} is older than term {log.term} seen before"
                        )
                    if log.writer is not None:
                        raise WALLockedError(
                            f"memory channel {ch.name!r} already has a writer at term {log.writer.channel.term}"
                        )
                    log.term = ch.term
                wal = MemoryWAL(self, ch, log)
                if ch.access_mode is AccessMode.RW:
                    log.writer = wal
            self._wals.add(wal)
        return wal

    def _forget(self, wal: MemoryWAL) -> None:
        with self._lock:
            self._wals.discard(wal)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            wals = list(self._wals)
        for w in wals:
            w.close()
        with self._lock:
            self._logs.clear()


class MemoryOpenerBuilder(OpenerBuilderImpls):
    @property
    def name(self) -> str:
        return WAL_NAME

    def build(self, **options: Any) -> OpenerImpls:
        if options:
            raise unknown_options_error("memory", options)
        return MemoryOpener()
