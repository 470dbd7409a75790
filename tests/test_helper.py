"""Helpers for backend authors (milvus-tests.md §J) and the conformance kit's ability to fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from wal import AccessMode
from wal.errors import ShutdownError, WALTimeoutError
from wal.helper import PullScanner, ScannerHelper
from wal.helper.conformance import ConformanceError, WALImplsConformance
from wal.message import ImmutableMessage, MessageID, MessageType, MutableMessage
from wal.options import DeliverPolicy, DeliverPolicyKind
from wal.walimpls import OpenOption, ReadOption, ScannerImpls, WALImpls
from wal.walimpls.memory import MemoryMessageID, MemoryOpener, MemoryOpenerBuilder
from wal.walimpls.memory._backend import MemoryWAL


def test_scanner_helper_close_waits_for_finish() -> None:
    h = ScannerHelper("test")
    assert h.name == "test" and not h.done().is_set() and not h.cancel.is_set()
    err = RuntimeError("E")

    def producer() -> None:
        h.cancel.wait(5)
        time.sleep(0.05)
        assert not h.done().is_set()
        h.finish(err)

    t = threading.Thread(target=producer)
    t.start()
    assert h.error() is None  # does not block while the producer runs
    assert h.close(5) is err
    assert h.cancel.is_set() and h.done().is_set() and h.error() is err
    t.join()
    h.finish(RuntimeError("late"))  # only the first finish counts
    assert h.error() is err


def test_scanner_helper_error_can_wait_for_finish() -> None:
    h = ScannerHelper("w")
    threading.Timer(0.05, h.finish, args=(None,)).start()
    assert h.error(timeout=5) is None and h.done().is_set()
    assert h.close(0) is None  # closing a finished helper returns at once


def test_pull_scanner_bookkeeping() -> None:
    class S(PullScanner):
        def recv(self, timeout: float | None = None) -> ImmutableMessage:
            raise ShutdownError("closed")

    s = S("n")
    assert s.name == "n" and not s.done().is_set() and s.error() is None
    s.close()
    s.close()
    assert s.done().is_set() and s.error() is None and s.closed
    f = S("f")
    e = RuntimeError("x")
    assert f._fail(e) is e and f.error() is e and f.done().is_set()


def test_conformance_kit_passes_on_memory() -> None:
    WALImplsConformance(MemoryOpenerBuilder(), message_count=100, latest_quiet_seconds=0.3).run()


class _LosingWAL(MemoryWAL):
    """Drops every 7th message while acknowledging it: the kit must notice."""

    n = 0

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        out = []
        for m in msgs:
            _LosingWAL.n += 1
            if _LosingWAL.n % 7 == 0:
                out.append(super().append_batch([m])[0])
                self._log.messages.pop()  # acknowledged, then lost
            else:
                out.append(super().append_batch([m])[0])
        return out


class _LosingOpener(MemoryOpener):
    def open(self, opt: OpenOption) -> WALImpls:
        w = super().open(opt)
        w.__class__ = _LosingWAL
        return w


class _LosingBuilder(MemoryOpenerBuilder):
    def build(self, **options: Any) -> MemoryOpener:
        return _LosingOpener()


def test_conformance_kit_fails_on_a_lossy_backend() -> None:
    with pytest.raises(ConformanceError):
        WALImplsConformance(_LosingBuilder(), message_count=30, latest_quiet_seconds=0.1, wait_timeout=2.0).run()


class _NoRefuseWAL(MemoryWAL):
    """Accepts appends on a read-only WAL."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        if self.channel.access_mode is AccessMode.RO:
            return [MemoryMessageID(10_000 + i) for i in range(len(msgs))]
        return super().append_batch(msgs)


class _StaleLatestWAL(MemoryWAL):
    """``latest`` behaves as ``all``."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        if opt.deliver_policy.kind is DeliverPolicyKind.LATEST:
            opt = ReadOption(opt.name, DeliverPolicy.all())
        return super().read(opt)


class _NoTailWAL(MemoryWAL):
    """Scanners see only what existed when they opened: no tailing."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        end = self._log.end
        inner = s.recv

        def recv(timeout: float | None = None) -> ImmutableMessage:
            if s._pos >= end:  # type: ignore[attr-defined]
                raise WALTimeoutError("no tailing")
            return inner(timeout)

        s.recv = recv  # type: ignore[method-assign]
        return s


class _BadTickWAL(MemoryWAL):
    """Stores every message without the time tick it was given."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        ids = super().append_batch(msgs)
        with self._log.cond:
            for mid in ids:
                self._log.messages[mid.value - self._log.base].time_tick = 0  # type: ignore[attr-defined]
        return ids


def _restamp(wal: MemoryWAL, ids: list[MessageID], **changes: Any) -> list[MessageID]:
    """Store the messages just appended under ``ids`` with ``changes`` (a field the backend lost), one per ID; a
    callable value is called with the stored message."""
    log = wal._log
    with log.cond:
        for mid in ids:
            i = mid.value - log.base  # type: ignore[attr-defined]
            m = log.messages[i]
            log.messages[i] = m.replace(**{k: v(m) if callable(v) else v for k, v in changes.items()})
    return ids


class _ShortBatchWAL(MemoryWAL):
    """``append_batch`` of several messages returns one ID too few (it stores them all)."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        ids = super().append_batch(msgs)
        return ids[:-1] if len(ids) > 1 else ids


class _FloatTickWAL(MemoryWAL):
    """Stores time ticks as a double (a Redis score, a JSON number): hybrid ticks lose their low bits."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        return _restamp(self, super().append_batch(msgs), time_tick=lambda m: int(float(m.time_tick)))


class _NoTxnWAL(MemoryWAL):
    """Does not store the txn context."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        return _restamp(self, super().append_batch(msgs), txn_ctx=None)


class _LcSelfWAL(MemoryWAL):
    """Does not store the last-confirmed ID: every message comes back with its own."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        return _restamp(self, super().append_batch(msgs), last_confirmed_message_id=lambda m: m.message_id)


class _NoTermWAL(MemoryWAL):
    """Does not store the WAL term."""

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        return _restamp(self, super().append_batch(msgs), wal_term=0)


class _BatchSkipWAL(MemoryWAL):
    """Scanners skip one message after every full batch of several."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        inner = s.recv_batch

        def recv_batch(max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
            out = inner(max_messages, timeout)
            if max_messages > 1 and len(out) == max_messages:
                s._pos += 1  # type: ignore[attr-defined]
            return out

        s.recv_batch = recv_batch  # type: ignore[method-assign]
        return s


class _LatestOffByOneWAL(MemoryWAL):
    """``latest`` starts one message late: it loses the first message appended after it."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        if opt.deliver_policy.kind is DeliverPolicyKind.LATEST:
            s._pos += 1  # type: ignore[attr-defined]
        return s


class _SnapshotReadOnlyWAL(MemoryWAL):
    """Read-only scanners see what existed when they opened, and never what a live writer appends later."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        if self.channel.access_mode is AccessMode.RW:
            return s
        end = self._log.end
        inner = s.recv_batch

        def recv_batch(max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
            if s._pos >= end:  # type: ignore[attr-defined]
                raise WALTimeoutError("a snapshot")
            return inner(min(max_messages, end - s._pos), timeout)  # type: ignore[attr-defined]

        s.recv_batch = recv_batch  # type: ignore[method-assign]
        s.recv = lambda timeout=None: recv_batch(1, timeout)[0]  # type: ignore[method-assign]
        return s


class _HintDropsTicksWAL(MemoryWAL):
    """With a vchannel hint, leaves out time ticks (as if they were another vchannel's messages)."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        if opt.vchannel is None:
            return s
        inner = s.recv_batch

        def recv_batch(max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
            while True:
                out = [m for m in inner(max_messages, timeout) if m.message_type is not MessageType.TIME_TICK]
                if out:
                    return out

        s.recv_batch = recv_batch  # type: ignore[method-assign]
        s.recv = lambda timeout=None: recv_batch(1, timeout)[0]  # type: ignore[method-assign]
        return s


class _NoWakeWAL(MemoryWAL):
    """``close`` marks a scanner closed without waking a ``recv`` blocked on it."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        s._on_close = lambda: None  # type: ignore[method-assign]
        return s


class _BuiltinTimeoutWAL(MemoryWAL):
    """Scanners time out with the builtin TimeoutError instead of WALTimeoutError."""

    def read(self, opt: ReadOption) -> ScannerImpls:
        s = super().read(opt)
        inner = s.recv_batch

        def recv_batch(max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
            try:
                return inner(max_messages, timeout)
            except WALTimeoutError:
                raise TimeoutError("builtin") from None

        s.recv_batch = recv_batch  # type: ignore[method-assign]
        s.recv = lambda timeout=None: recv_batch(1, timeout)[0]  # type: ignore[method-assign]
        return s


class _MisnamedWAL(MemoryWAL):
    """Names itself differently from its builder and its IDs."""

    @property
    def wal_name(self) -> str:
        return "memory-other"


def _builder_of(wal_class: type[MemoryWAL]) -> MemoryOpenerBuilder:
    class Opener(MemoryOpener):
        def open(self, opt: OpenOption) -> WALImpls:
            w = super().open(opt)
            w.__class__ = wal_class
            return w

    class Builder(MemoryOpenerBuilder):
        def build(self, **options: Any) -> MemoryOpener:
            return Opener()

    return Builder()


@pytest.mark.parametrize(
    ("wal_class", "complaint"),
    [
        (_NoRefuseWAL, "AccessModeError"),
        (_StaleLatestWAL, "latest"),
        (_NoTailWAL, "tailing"),
        (_BadTickWAL, "time tick"),
        (_ShortBatchWAL, "append_batch of 5 messages returned"),
        (_FloatTickWAL, "time tick"),
        (_NoTxnWAL, "txn context"),
        (_LcSelfWAL, "last-confirmed ID"),
        (_NoTermWAL, "term of"),
        (_BatchSkipWAL, "scanner_read_only_batch"),
        (_LatestOffByOneWAL, "did not deliver the message appended after it opened"),
        (_SnapshotReadOnlyWAL, "scanner_deliver_latest_read_only did not deliver"),
        (_HintDropsTicksWAL, "scanner_vchannel_hint stopped"),
        (_NoWakeWAL, "did not wake a scanner blocked"),
        (_BuiltinTimeoutWAL, "timed out with TimeoutError, want WALTimeoutError"),
        (_MisnamedWAL, "the three must be equal"),
    ],
)
def test_conformance_kit_names_what_is_broken(wal_class: type[MemoryWAL], complaint: str) -> None:
    kit = WALImplsConformance(_builder_of(wal_class), message_count=20, latest_quiet_seconds=0.1, wait_timeout=0.5)
    with pytest.raises(ConformanceError, match=complaint):
        kit.run()


def test_conformance_kit_fails_a_backend_whose_terms_go_back() -> None:
    """A writer at an older term than one the channel has seen must be fenced."""

    class Opener(MemoryOpener):
        def open(self, opt: OpenOption) -> WALImpls:
            for log in self._logs.values():
                log.term = 0  # forgets every term it saw
            return super().open(opt)

    class Builder(MemoryOpenerBuilder):
        def build(self, **options: Any) -> MemoryOpener:
            return Opener()

    kit = WALImplsConformance(Builder(), message_count=10, latest_quiet_seconds=0.05, wait_timeout=0.5)
    with pytest.raises(ConformanceError, match="RW open at an older term succeeded, want FencedError"):
        kit.run()


def test_conformance_kit_reports_a_hang_instead_of_hanging() -> None:
    class _HangingCloseScanner(MemoryWAL):
        def read(self, opt: ReadOption) -> ScannerImpls:
            s = super().read(opt)
            if opt.name.startswith("scanner-fast-close"):
                s.close = lambda: time.sleep(3600)  # type: ignore[method-assign]
            return s

    kit = WALImplsConformance(
        _builder_of(_HangingCloseScanner), message_count=10, latest_quiet_seconds=0.05, wait_timeout=0.3
    )
    t0 = time.monotonic()
    with pytest.raises(ConformanceError, match="fast close"):
        kit.run()
    assert time.monotonic() - t0 < 20


def test_conformance_kit_wraps_build_errors() -> None:
    with pytest.raises(ConformanceError, match="bogus"):
        WALImplsConformance(MemoryOpenerBuilder(), build_options={"bogus": 1}).run()


class _LastRecordTickWAL(MemoryWAL):
    """``last_time_tick()`` is the tick of the last record stored, not the largest (wrong once records are stored out
    of tick order, as concurrent appends may be)."""

    def last_time_tick(self) -> int:
        log = self._log
        with log.lock:
            return log.messages[-1].time_tick if log.messages else 0


def test_conformance_kit_fails_a_last_time_tick_that_is_the_last_records() -> None:
    # The kit's last message always carried the largest tick, so this check could not fail (kit review).
    kit = WALImplsConformance(
        _builder_of(_LastRecordTickWAL), message_count=20, latest_quiet_seconds=0.1, wait_timeout=0.5
    )
    with pytest.raises(ConformanceError, match="the last record's"):
        kit.run()
