"""Scanner adaptor on a fake backend: read errors (milvus-tests §C.3), source switching, failures."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _adaptor_fakes import FakeBuilder, FakeScanner, data

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption
from wal.adaptor import adapt_impls_to_builder
from wal.errors import (
    CorruptedError,
    InvalidMessageIDError,
    ShutdownError,
    UnknownBackendError,
    WALIOError,
    WALTimeoutError,
)
from wal.message import ImmutableMessage, MessageType, MutableMessage
from wal.options import DeliverPolicy


def ins(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"p%d" % i, {"i": str(i)}, vchannel="v1")


def test_read_error_retried_with_backoff_then_clean_close() -> None:
    """C.3: the backend read always fails; the scanner keeps retrying; close ends it without an error."""
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build()
    fb.openers[0].read_failures = lambda _o: (_ for _ in ()).throw(WALIOError("read failed"))
    w = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    s = w.read(ReadOption())
    with pytest.raises(TimeoutError):
        s.recv(0.5)
    attempts = fb.openers[0].read_calls
    assert attempts >= 2
    assert attempts < 30  # backoff, not a busy loop
    s.close()
    assert s.done().is_set() and s.error() is None
    with pytest.raises(ShutdownError):
        s.recv(0.1)
    w.close()
    op.close()


class _Failing(FakeScanner):
    """Delivers ``ok`` messages, then raises ``err`` once per scanner."""

    def __init__(self, inner: FakeScanner, ok: int, err: BaseException) -> None:
        self.__dict__.update(inner.__dict__)
        self._left = ok
        self._err = err

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        if self._left <= 0:
            raise self._err
        out = super().recv_batch(min(max_messages, self._left), timeout)
        self._left -= len(out)
        return out


def _wrap_reads(fb: FakeBuilder, ok: int, err: BaseException, times: int) -> None:
    wal = fb.openers[0].wals[-1]
    orig = wal.read
    n = [0]

    def read(opt: Any) -> Any:
        s = orig(opt)
        n[0] += 1
        return _Failing(s, ok, err) if n[0] <= times else s

    wal.read = read  # type: ignore[method-assign]


def test_transient_backend_error_resumes_without_loss_or_duplicates() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(50)])
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    _wrap_reads(fb, 7, WALIOError("disk hiccup"), 3)
    s = ro.read(ReadOption())
    got = [m.properties["i"] for m in data(s, 50)]
    assert got == [str(i) for i in range(50)]
    assert s.error() is None
    ro.close()
    w.close()


class _FailAlways(FakeScanner):
    """Raises ``err`` on every recv_batch (a backend reader that breaks as soon as it is used)."""

    def __init__(self, inner: FakeScanner, err: BaseException) -> None:
        self.__dict__.update(inner.__dict__)
        self._err = err

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        raise self._err


def _ro_reader(fb: FakeBuilder, err: BaseException, policy: DeliverPolicy, *, times: int = 1) -> tuple[Any, Any, Any]:
    """A writer with 3 messages and an RO WAL whose first ``times`` backend readers fail at once with ``err``."""
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(3)])
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    wal = fb.openers[0].wals[-1]
    orig = wal.read
    n = [0]

    def read(opt: Any) -> Any:
        n[0] += 1
        return _FailAlways(orig(opt), err) if n[0] <= times else orig(opt)

    wal.read = read  # type: ignore[method-assign]
    return w, ro, ro.read(ReadOption(deliver_policy=policy))


def test_latest_read_that_fails_raises_from_read_instead_of_starting_later() -> None:
    """Retried later, a latest() read would start after what was appended in between: read() raises instead."""
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    fb.openers[0].read_failures = lambda _o: (_ for _ in ()).throw(WALIOError("broker away"))
    with pytest.raises(WALIOError, match="broker away"):
        ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    assert fb.openers[0].read_calls == 1
    fb.openers[0].read_failures = None
    s = ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))  # the caller's retry
    w.append(ins(7))
    assert [m.properties["i"] for m in data(s, 1)] == ["7"]
    op.close()


def test_latest_reader_failing_before_its_first_message_ends_loudly() -> None:
    """Where the backend's latest() reader started is unknown once it failed: reopening with latest() again
    skipped messages appended in between, silently. Now the scanner ends with an error saying so."""
    fb = FakeBuilder()
    w, ro, s = _ro_reader(fb, WALIOError("connection reset"), DeliverPolicy.latest())
    w.append(ins(9))  # appended after read() returned: must not vanish without a word
    with pytest.raises(WALIOError, match="latest\\(\\) read cannot be resumed") as e:
        data(s, 1)
    assert isinstance(e.value.__cause__, WALIOError)
    assert s.done().is_set() and s.error() is e.value
    assert fb.openers[0].read_calls == 1
    ro.close()
    w.close()


@pytest.mark.parametrize(
    "err", [ValueError("undecodable row"), KeyError("x"), UnknownBackendError("no unmarshaler for 'x'")],
    ids=["ValueError", "KeyError", "UnknownBackendError"],
)
def test_a_backend_bug_in_recv_ends_the_scanner_instead_of_reopening_for_ever(err: BaseException) -> None:
    """Not a WALError or OSError: the same read would fail again (it spun at ~15,000 reopens a second, silent)."""
    fb = FakeBuilder()
    w, ro, s = _ro_reader(fb, err, DeliverPolicy.all(), times=100)
    with pytest.raises(type(err)):
        data(s, 3)
    assert s.error() is err
    assert fb.openers[0].read_calls == 1
    ro.close()
    w.close()


def test_transient_recv_failures_reopen_with_backoff() -> None:
    fb = FakeBuilder()
    w, ro, s = _ro_reader(fb, WALIOError("disk hiccup"), DeliverPolicy.all(), times=10_000)
    with pytest.raises(TimeoutError):
        s.recv(1.0)
    assert 2 <= fb.openers[0].read_calls <= 12  # 20, 40, 80... ms apart: 6 in the first second
    assert s.error() is None and not s.done().is_set()
    ro.close()
    w.close()


class _FailOnDemand(FakeScanner):
    """Raises the errors queued in ``errors`` one per ``recv_batch``, then reads normally."""

    def __init__(self, inner: FakeScanner, errors: list[BaseException]) -> None:
        self.__dict__.update(inner.__dict__)
        self._errors = errors

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        if self._errors:
            raise self._errors.pop(0)
        return super().recv_batch(max_messages, timeout)


def test_a_read_that_works_again_with_nothing_new_ends_the_failing_stretch(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower at the end of a quiet channel whose backend read failed once (a hiccup), then read on with
    nothing new: only a batch of messages ended the failing stretch, so "works again" was never said, and the next
    failure (minutes later, say) was said to have been "failing for" the whole time since the first hiccup
    (review 13e)."""
    import contextlib
    import logging

    from wal.adaptor import _scanner

    monkeypatch.setattr(_scanner, "RETRY_WARNING_EVERY", 0.0)  # every failure may warn: each stretch's own are seen
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(3)])
    w.close()  # no more ticks: the channel is quiet
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    wal = fb.openers[0].wals[-1]
    orig = wal.read
    errors: list[BaseException] = []
    wal.read = lambda opt: _FailOnDemand(orig(opt), errors)  # type: ignore[method-assign]
    s = ro.read(ReadOption())
    assert [m.properties["i"] for m in data(s, 3)] == ["0", "1", "2"]
    with pytest.raises(TimeoutError):
        while True:
            s.recv(0.3)  # the ticks after them
    said: list[str] = []
    with caplog.at_level(logging.WARNING, logger="wal.adaptor._scanner"):
        for k in range(2):
            errors.append(WALIOError(f"hiccup {k}"))
            while errors:  # the reader takes the error
                with contextlib.suppress(TimeoutError):
                    s.recv(0.1)
            with pytest.raises(TimeoutError):
                s.recv(0.5)  # reopened after the backoff: it reads to the end, nothing new
            said = [r.getMessage() for r in caplog.records]
            assert sum("works again" in m for m in said) == k + 1, said
    failed = [m for m in said if "reading the backend failed" in m]
    assert len(failed) == 2 and "hiccup 1" in failed[1] and "failing for" not in failed[1], failed
    assert s.error() is None
    ro.close()
    op.close()


def test_a_backend_failing_after_every_batch_warns_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    """Each backend reader delivers one message, then fails: a batch ended the failing stretch and reset the
    backoff, and each new stretch warned at once, so the log got two lines per message read, up to 50 a second (a
    flood); RETRY_WARNING_EVERY now bounds the warnings of all stretches together (review 13e)."""
    import logging

    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(30)])
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    _wrap_reads(fb, 1, WALIOError("flaky"), 10_000)
    with caplog.at_level(logging.WARNING, logger="wal.adaptor._scanner"):
        s = ro.read(ReadOption())
        assert [m.properties["i"] for m in data(s, 30, 20.0)] == [str(i) for i in range(30)]
    said = [r.getMessage() for r in caplog.records]
    assert sum("reading the backend failed" in m for m in said) == 1, said
    assert sum("works again" in m for m in said) <= 1, said
    ro.close()
    w.close()
    op.close()


def test_a_backends_builtin_timeout_error_is_a_timeout_not_a_failure() -> None:
    """The contract says WALTimeoutError; a builtin TimeoutError used to reopen the reader on every timeout."""
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    wal = fb.openers[0].wals[-1]
    orig = wal.read

    class _BuiltinTimeout(FakeScanner):
        def __init__(self, inner: FakeScanner) -> None:
            self.__dict__.update(inner.__dict__)

        def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
            try:
                return super().recv_batch(max_messages, timeout)
            except WALTimeoutError:
                raise TimeoutError("builtin") from None

    wal.read = lambda opt: _BuiltinTimeout(orig(opt))  # type: ignore[method-assign]
    s = ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    with pytest.raises(TimeoutError):
        s.recv(0.3)
    w.append(ins(5))
    assert [m.properties["i"] for m in data(s, 1)] == ["5"]
    assert fb.openers[0].read_calls == 1 and s.error() is None
    op.close()


def test_corruption_ends_the_scanner_with_its_error() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(5)])
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    err = CorruptedError("bad crc", path="seg", offset=10)
    _wrap_reads(fb, 2, err, 100)
    s = ro.read(ReadOption())
    with pytest.raises(CorruptedError):
        while True:
            s.recv(5)
    assert s.done().is_set() and s.error() is err
    with pytest.raises(CorruptedError):
        list(s)
    ro.close()
    w.close()


def test_catchup_switches_to_tailing_and_back_on_eviction() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(
        write_ahead_buffer_bytes=2048, write_ahead_buffer_keepalive=0.05, time_tick_interval=0.02
    )
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(100)])
    s = w.read(ReadOption())
    assert [m.properties["i"] for m in data(s, 100)] == [str(i) for i in range(100)]
    deadline = time.monotonic() + 3
    while s.mode != "tailing" and time.monotonic() < deadline:
        try:
            s.recv(0.1)
        except TimeoutError:
            pass
    assert s.mode == "tailing" and s.stats["to_tailing"] >= 1
    # Stall: the buffer evicts what the reader has not consumed; it falls back to the backend, loses nothing.
    w.append_messages([ins(i) for i in range(100, 400)])
    time.sleep(0.3)
    w.append_messages([ins(i) for i in range(400, 600)])
    got = [m.properties["i"] for m in data(s, 500)]
    assert got == [str(i) for i in range(100, 600)]
    assert s.stats["to_catchup"] >= 1
    w.close()
    assert s.done().is_set()


def test_latest_on_rw_reads_only_later_appends() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([ins(i) for i in range(10)])
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    s_ro = ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    w.append(ins(10))
    assert [m.properties["i"] for m in data(s, 1)] == ["10"]
    assert [m.properties["i"] for m in data(s_ro, 1)] == ["10"]
    ro.close()
    w.close()


def test_close_from_another_thread_wakes_recv() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    for mode in ("tailing", "catchup"):
        s = w.read(ReadOption(deliver_policy=DeliverPolicy.latest() if mode == "tailing" else DeliverPolicy.all()))
        errs: list[BaseException] = []

        def run(s: Any = s, errs: list[BaseException] = errs) -> None:
            try:
                while True:
                    s.recv()
            except BaseException as e:
                errs.append(e)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)
        s.close()
        t.join(2)
        assert not t.is_alive() and isinstance(errs[0], ShutdownError)
    w.close()
    op.close()


def test_recv_timeout_is_honoured_in_every_mode() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=5.0)  # no idle ticks during the test
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    for s in (w.read(ReadOption(deliver_policy=DeliverPolicy.latest())), ro.read(ReadOption())):
        while True:  # drain what is there (the first tick)
            try:
                s.recv(0.2)
            except TimeoutError:
                break
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.recv(1.5)
        assert 1.4 <= time.monotonic() - t0 < 3
    ro.close()
    w.close()


def test_recv_zero_timeout_returns_available_messages() -> None:
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    w.append_messages([ins(i) for i in range(3)])
    time.sleep(0.2)  # a persisted tick follows the data
    for s in (w.read(ReadOption()), ro.read(ReadOption())):
        got = []
        while True:
            try:
                m = s.recv(0)
            except TimeoutError:
                break
            if m.message_type is MessageType.INSERT:
                got.append(m.properties["i"])
        assert got == ["0", "1", "2"]
    ro.close()
    w.close()


def test_recv_survives_a_message_taken_by_a_concurrent_lock_free_recv() -> None:
    """recv's fast path pops released messages without the lock; the locked slow path must therefore treat an
    empty pop as "someone else delivered it" and go on waiting, never leak an IndexError to the caller."""
    import collections

    from wal.errors import WALTimeoutError
    from wal.registry import must_get_builder

    class Stolen(collections.deque):  # type: ignore[type-arg]
        """Non-empty, but every pop finds the message already taken (as after another thread's popleft)."""

        def popleft(self) -> object:
            raise IndexError("pop from an empty deque")

    op = must_get_builder("memory").build(time_tick_interval=30.0)
    w = op.open(OpenOption(PChannelInfo("race1", 1)))
    try:
        s = w.read(ReadOption())
        w.append(MutableMessage(MessageType.INSERT, b"x", vchannel="v1"))
        assert s.recv(5) is not None  # the scanner runs
        s._pending = Stolen([object()])  # type: ignore[attr-defined]
        try:
            s._recv_wait(0.3)  # type: ignore[attr-defined]  # the locked path, where the race bit
        except WALTimeoutError:
            pass  # nothing else to deliver: waiting, as it should
    finally:
        w.close()
        op.close()


def _open(backend: str, tmp_path: Any, **kw: Any) -> Any:
    from wal import registry

    extra = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    return registry.must_get_builder(backend).build(**extra, **kw)


def _txns(s: Any, until_id: Any) -> list[list[tuple[str, bytes]]]:
    out = []
    while True:
        m = s.recv(10)
        if m.message_type is MessageType.TXN:
            out.append([(x.message_type.name, bytes(x.payload)) for x in m.messages])
        if m.message_id == until_id:
            return out


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_type_filter_that_drops_some_of_a_txns_body_still_gets_the_txn(backend: str, tmp_path: Any) -> None:
    """Every body message renews the txn's keepalive. A reader whose type filter dropped the bodies before its
    txn buffer saw only the last one it kept, expired the txn early and never delivered it (invariant 5), tailing
    and catching up alike. The TXN is delivered with the body the filter keeps."""
    from wal.options import DeliverFilter

    op = _open(backend, tmp_path, time_tick_interval=0.01)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    only_deletes = ReadOption(deliver_policy=DeliverPolicy.all(), deliver_filters=[DeliverFilter.message_type(
        MessageType.DELETE)])
    tailing = w.read(only_deletes)
    everything = w.read(ReadOption())
    # Alive for 1.2 s, longer than its keepalive, through INSERTs only; each gap (0.3 s) stays 0.5 s under the
    # keepalive, so a writer slowed by a busy machine does not expire it (a 0.15 s keepalive with 0.1 s gaps did).
    with w.begin_txn("v", keepalive=0.8) as t:
        for i in range(4):
            t.append(MutableMessage(MessageType.INSERT, b"i%d" % i))
            time.sleep(0.3)
        t.append(MutableMessage(MessageType.DELETE, b"d"))
    end = w.append(MutableMessage(MessageType.INSERT, b"end", vchannel="v")).message_id
    assert _txns(everything, end) == [[("INSERT", b"i0"), ("INSERT", b"i1"), ("INSERT", b"i2"), ("INSERT", b"i3"),
                                       ("DELETE", b"d")]]
    assert _txns(tailing, end) == [[("DELETE", b"d")]]
    assert _txns(w.read(only_deletes), end) == [[("DELETE", b"d")]]  # catching up from the backend
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_type_filter_that_drops_all_of_a_txns_body_still_gets_the_txn_empty(backend: str, tmp_path: Any) -> None:
    """Kept on purpose, as in Milvus (its scanner filters body messages before the txn buffer, which builds the TXN
    from the commit whatever is left): TXN is a system type, which type filters never drop (DESIGN), and a txn
    committed with no body is delivered empty anyway. The empty TXN tells the reader the commit happened, at the
    commit's ID and time tick (a checkpoint, see DeliverFilter.message_type)."""
    from wal.options import DeliverFilter

    op = _open(backend, tmp_path, time_tick_interval=0.01)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    only_deletes = ReadOption(deliver_filters=[DeliverFilter.message_type(MessageType.DELETE)])
    tailing = w.read(only_deletes)
    t = w.begin_txn("v")
    t.append(MutableMessage(MessageType.INSERT, b"i0"))
    t.append(MutableMessage(MessageType.INSERT, b"i1"))
    commit = t.commit()
    with w.begin_txn("v"):
        pass  # no body at all: delivered empty to every reader
    end = w.append(MutableMessage(MessageType.DELETE, b"end", vchannel="v")).message_id
    for s in (tailing, w.read(only_deletes)):  # tailing, and catching up from the backend
        got = []
        while True:
            m = s.recv(10)
            if m.message_type is not MessageType.TIME_TICK:
                got.append(m)
            if m.message_id == end:
                break
        txn, no_body, last = got
        assert txn.message_type is MessageType.TXN and txn.messages == () and txn.size() == 0
        assert no_body.message_type is MessageType.TXN and no_body.messages == ()
        assert (txn.message_id, txn.time_tick) == (commit.message_id, commit.time_tick)
        assert bytes(last.payload) == b"end"
        s.close()
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_txn_message_on_another_vchannel_than_its_begin_is_refused(backend: str, tmp_path: Any) -> None:
    """A reader selecting the txn's vchannel would drop such a body and expire the txn before its commit; Milvus
    keeps a txn on one vchannel. Raw BEGIN/body/COMMIT messages (a Milvus client's way) are checked too."""
    from wal.errors import InvalidArgumentError

    op = _open(backend, tmp_path, time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    begin = w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="v1"))
    ctx = begin.txn_ctx
    with pytest.raises(InvalidArgumentError, match="vchannel"):
        w.append(MutableMessage(MessageType.INSERT, b"x", vchannel="v2", txn_ctx=ctx))
    with pytest.raises(InvalidArgumentError, match="vchannel"):
        w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v2", txn_ctx=ctx))
    w.append(MutableMessage(MessageType.INSERT, b"y", vchannel="v1", txn_ctx=ctx))
    commit = w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v1", txn_ctx=ctx))
    s = w.read(ReadOption(vchannel="v1"))
    assert _txns(s, commit.message_id) == [[("INSERT", b"y")]]
    w.close()
    op.close()


@pytest.mark.parametrize("err", [CorruptedError("bad segment"), InvalidMessageIDError("not mine")])
def test_a_read_no_retry_can_fix_ends_the_scanner_with_its_error(err: Exception) -> None:
    """The scanner retried every failed backend read() for ever: a start ID the backend refused, or a damaged
    file, left a reader whose recv only timed out while error() said None and done() never came."""
    fb = FakeBuilder()
    op = adapt_impls_to_builder(fb).build()

    def fail(_o: Any) -> None:
        raise err

    fb.openers[0].read_failures = fail
    w = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    with pytest.raises(type(err)):
        w.read(ReadOption())  # the first backend read is opened by read() itself
    assert fb.openers[0].read_calls == 1
    fb.openers[0].read_failures = None
    s = w.read(ReadOption())  # a later one: the scanner opens the backend again in recv (as after a failed read)
    fb.openers[0].read_failures = fail
    s._backend.close()
    s._backend = None
    with pytest.raises(type(err)):
        s.recv(5)
    assert s.done().is_set() and s.error() is err and fb.openers[0].read_calls == 3
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_reading_from_another_backends_message_id_is_refused(backend: str, tmp_path: Any) -> None:
    from wal.message import unmarshal_message_id

    op = _open(backend, tmp_path)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    other = "memory" if backend == "localfs" else "localfs"
    for policy in (DeliverPolicy.start_from, DeliverPolicy.start_after):
        with pytest.raises(InvalidMessageIDError, match=other):
            w.read(ReadOption(deliver_policy=policy(unmarshal_message_id(other, "1"))))
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_changing_a_payload_buffer_after_append_changes_nothing_readers_get(backend: str, tmp_path: Any) -> None:
    """Readers share the stored payload object: a bytearray or memoryview changed by the caller after append
    showed tailing readers (and the memory backend's log) other bytes than the files hold under the same ID."""
    op = _open(backend, tmp_path, time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    tailing = w.read(ReadOption())
    buf = bytearray(b"original")
    view_of = bytearray(b"original")
    ids = [w.append(MutableMessage(MessageType.INSERT, buf)).message_id,
           w.append_async(MutableMessage(MessageType.INSERT, memoryview(view_of))).result(5).message_id]
    buf[:] = b"MUTATED!"
    view_of[:] = b"MUTATED!"
    for s in (tailing, w.read(ReadOption())):
        got = {}
        while len(got) < 2:
            m = s.recv(10)
            if m.message_type is MessageType.INSERT:
                got[m.message_id] = bytes(m.payload)
        assert got == dict.fromkeys(ids, b"original")
    w.close()
    op.close()
