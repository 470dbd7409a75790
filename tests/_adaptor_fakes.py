"""A tiny in-process backend for adaptor tests (independent of the real memory backend), with fault hooks; and
the message helpers those tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from wal._types import AccessMode, OpenOption, PChannelInfo
from wal.errors import AccessModeError, ShutdownError, WALTimeoutError
from wal.message import (
    ImmutableMessage,
    IntMessageID,
    MessageID,
    MessageType,
    MutableMessage,
    register_message_id_unmarshaler,
)
from wal.options import DeliverPolicyKind
from wal.walimpls import OpenerBuilderImpls, OpenerImpls, ReadOption, ScannerImpls, WALImpls


class FakeID(IntMessageID):
    WAL_NAME = "fakewal"


try:
    register_message_id_unmarshaler("fakewal", FakeID.parse)
except Exception:
    pass


class Log:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # entered as ``with self.lock``: docs/ARCHITECTURE.md, "Interrupts"
        self.cond = threading.Condition(self.lock)
        self.entries: list[ImmutableMessage] = []


class FakeScanner(ScannerImpls):
    def __init__(self, log: Log, name: str, start: int) -> None:
        self._log = log
        self._name = name
        self._pos = start
        self._done = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        return self.recv_batch(1, timeout)[0]

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        with self._log.lock:
            ok = self._log.cond.wait_for(lambda: self._done.is_set() or self._pos < len(self._log.entries), timeout)
            if self._done.is_set():
                raise ShutdownError("closed")
            if not ok:
                raise WALTimeoutError("timeout")
            out = self._log.entries[self._pos : self._pos + max_messages]
            self._pos += len(out)
            return out

    def done(self) -> threading.Event:
        return self._done

    def error(self) -> BaseException | None:
        return None

    def close(self) -> None:
        with self._log.lock:
            self._done.set()
            self._log.cond.notify_all()


class FakeWAL(WALImpls):
    def __init__(self, backend: FakeOpener, log: Log, channel: PChannelInfo) -> None:
        self._b = backend
        self._log = log
        self._channel = channel
        self.closed = False
        self.scanners: list[FakeScanner] = []

    @property
    def wal_name(self) -> str:
        return "fakewal"

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    def read(self, opt: ReadOption) -> ScannerImpls:
        self._b.read_calls += 1
        if self._b.read_failures is not None:
            self._b.read_failures(opt)
        p = opt.deliver_policy
        with self._log.lock:
            n = len(self._log.entries)
        if p.kind is DeliverPolicyKind.ALL:
            start = 0
        elif p.kind is DeliverPolicyKind.LATEST:
            start = n
        else:
            assert isinstance(p.message_id, FakeID)
            start = p.message_id.value + (1 if p.kind is DeliverPolicyKind.START_AFTER else 0)
        s = FakeScanner(self._log, opt.name, start)
        self.scanners.append(s)
        return s

    def append(self, msg: MutableMessage) -> MessageID:
        return self.append_batch([msg])[0]

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        if self._channel.access_mode is AccessMode.RO:
            raise AccessModeError("ro")
        if self.closed:
            raise ShutdownError("closed")
        self._b.append_batches.append(len(msgs))
        if self._b.append_hook is not None:
            self._b.append_hook(msgs)
        with self._log.lock:
            ids: list[MessageID] = []
            for m in msgs:
                mid = FakeID(len(self._log.entries))
                self._log.entries.append(m.into_immutable(mid))
                ids.append(mid)
            self._log.cond.notify_all()
            return ids

    def last_time_tick(self) -> int:
        with self._log.lock:
            return max((m.time_tick for m in self._log.entries), default=0)

    def truncate(self, message_id: MessageID) -> None:
        if self._channel.access_mode is AccessMode.RO:
            raise AccessModeError("ro")
        self._b.truncated.append(message_id)

    def close(self) -> None:
        self.closed = True
        for s in self.scanners:
            s.close()


class FakeOpener(OpenerImpls):
    def __init__(self) -> None:
        self.logs: dict[str, Log] = {}
        self.open_error: BaseException | None = None
        self.read_failures: Callable[[ReadOption], None] | None = None
        self.append_hook: Callable[[Sequence[MutableMessage]], None] | None = None
        self.append_batches: list[int] = []
        self.read_calls = 0
        self.truncated: list[MessageID] = []
        self.closed = False
        self.wals: list[FakeWAL] = []

    def open(self, opt: OpenOption) -> WALImpls:
        opt.validate()
        if self.open_error is not None:
            raise self.open_error
        log = self.logs.setdefault(opt.channel.name, Log())
        w = FakeWAL(self, log, opt.channel)
        self.wals.append(w)
        return w

    def close(self) -> None:
        self.closed = True


class FakeBuilder(OpenerBuilderImpls):
    def __init__(self) -> None:
        self.openers: list[FakeOpener] = []
        self.options: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return "fakewal"

    def build(self, **options: Any) -> OpenerImpls:
        self.options.append(options)
        o = FakeOpener()
        self.openers.append(o)
        return o


def msg(i: int = 0, v: str = "v1") -> MutableMessage:
    """An INSERT whose payload and ``id`` property say ``i``."""
    return MutableMessage(MessageType.INSERT, b"p%d" % i, {"id": str(i)}, vchannel=v)


def data(s: Any, n: int, timeout: float = 5.0) -> list[Any]:
    """The next ``n`` non-tick messages of scanner ``s``, all within ``timeout`` seconds."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        m = s.recv(max(0.0, deadline - time.monotonic()))
        if m.message_type is not MessageType.TIME_TICK:
            out.append(m)
    return out
