"""Adaptor lifetimes and the append path, on a fake backend (milvus-tests §C.1, §C.2)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _adaptor_fakes import FakeBuilder, data, msg

from wal import DeliverPolicy, OpenOption, PChannelInfo, ReadOption
from wal._types import AccessMode
from wal.adaptor import adapt_impls_to_builder
from wal.errors import (
    AccessModeError,
    InvalidArgumentError,
    InvalidMessageError,
    ShutdownError,
    WALError,
    WALIOError,
    WALTimeoutError,
)
from wal.message import MessageType, MutableMessage, compose_ts, physical_ms


@pytest.fixture
def fb() -> FakeBuilder:
    return FakeBuilder()


def test_append_read_close(fb: FakeBuilder) -> None:
    b = adapt_impls_to_builder(fb)
    assert b.name == "fakewal"
    with b.build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        assert w.wal_name == "fakewal" and w.channel.name == "p1" and w.is_available()
        r = w.append(msg(0))
        assert r.message_id is not None
        f = w.append_async(msg(1))
        assert f.result(5).message_id > r.message_id
        rs = w.append_messages([msg(2), msg(3)])
        assert [x.message_id for x in rs] == sorted(x.message_id for x in rs)
        with w.read(ReadOption()) as s:
            got = data(s, 4)
            assert [bytes(m.payload) for m in got] == [b"p0", b"p1", b"p2", b"p3"]
    assert not w.is_available()
    with pytest.raises(ShutdownError):
        w.append(msg())
    assert w.append_async(msg()).exception(1) is not None
    with pytest.raises(ShutdownError):
        w.read(ReadOption())
    with pytest.raises(ShutdownError):
        op.open(OpenOption(PChannelInfo("p1", 2)))
    assert fb.openers[0].closed


def test_pipelined_order_and_batches(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    futs = [w.append_async(msg(i)) for i in range(2000)]
    ids = [f.result(10).message_id for f in futs]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    tts = [f.result().time_tick for f in futs]
    assert tts == sorted(tts)
    assert max(fb.openers[0].append_batches) > 1  # group commit happened
    op.close()


def test_build_options_validated(fb: FakeBuilder) -> None:
    b = adapt_impls_to_builder(fb)
    for bad in (
        {"time_tick_interval": 0},
        {"write_ahead_buffer_bytes": -1},
        {"txn_keepalive": "x"},
        {"interceptors": [object()]},
        {"max_inflight_appends": 0},
    ):
        with pytest.raises(InvalidArgumentError):
            b.build(**bad)
    b.build(time_tick_interval=0.05, foo=1).close()
    assert fb.options[-1] == {"foo": 1}


def test_append_async_checks_its_message_at_once_and_fails_its_future_once_closed(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))

    class Sub(MutableMessage):
        __slots__ = ()

    with pytest.raises(InvalidMessageError):
        w.append_async(b"not a message")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        w.append_async(MutableMessage(MessageType.TIME_TICK, b""))  # the WAL's own kind
    assert w.append_async(Sub(MessageType.INSERT, b"sub", None, "v1")).result(5).message_id is not None

    class ByValue(MutableMessage):  # __eq__ without __hash__: unhashable, must still be appendable
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            return isinstance(other, MutableMessage) and bytes(self.payload) == bytes(other.payload)

    a, b = ByValue(MessageType.INSERT, b"same", None, "v1"), ByValue(MessageType.INSERT, b"same", None, "v1")
    rs = w.append_messages([a, b, a])  # the same object twice is still told apart from an equal one
    assert len({r.message_id for r in rs}) == 3 and rs[0].time_tick < rs[1].time_tick < rs[2].time_tick
    w.close()
    assert isinstance(w.append_async(msg()).exception(0), ShutdownError)
    op.close()


def test_ro_wal_refuses_writes(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    for call in (
        lambda: w.append(msg()),
        lambda: w.append_async(msg()),
        lambda: w.get_latest_mvcc_timestamp("v1"),
        lambda: w.truncate(w.read().name),  # type: ignore[arg-type]
    ):
        with pytest.raises(AccessModeError):
            call()
    w.close()
    assert not w.is_available()
    op.close()


def test_open_failure_propagates(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    err = RuntimeError("boom")
    fb.openers[0].open_error = err
    with pytest.raises(RuntimeError) as ei:
        op.open(OpenOption(PChannelInfo("p1", 1)))
    assert ei.value is err
    op.close()


def test_concurrent_open_and_close(fb: FakeBuilder) -> None:
    """C.1: 10 writers until the opener closes; all stop with ShutdownError within 3 s."""
    op = adapt_impls_to_builder(fb).build()
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            w = op.open(OpenOption(PChannelInfo(f"test_{i}", i + 1)))
        except BaseException as e:
            errors.append(e)
            return
        while True:
            try:
                w.append(msg(i))
            except BaseException as e:
                errors.append(e)
                return
            time.sleep(0.01)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    op.close()
    for t in ts:
        t.join(3)
    assert time.monotonic() - t0 < 3
    assert len(errors) == 10 and all(isinstance(e, ShutdownError) for e in errors), errors
    with pytest.raises(ShutdownError):
        op.open(OpenOption(PChannelInfo("x", 1)))


def test_close_wakes_blocked_readers(fb: FakeBuilder) -> None:
    """C.2: 10 readers blocked in recv; closing the WAL ends them all within 3 s."""
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ended: list[BaseException] = []

    def run() -> None:
        try:
            s = w.read(ReadOption(vchannel="test"))
            while True:
                s.recv()
        except BaseException as e:
            ended.append(e)

    ts = [threading.Thread(target=run) for _ in range(10)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    w.close()
    for t in ts:
        t.join(3)
    assert time.monotonic() - t0 < 3
    assert len(ended) == 10 and all(isinstance(e, ShutdownError) for e in ended)
    op.close()


class _NotReady:
    def __init__(self) -> None:
        self.ev = threading.Event()
        self.closed = False

    def build(self, param):
        return self

    def ready(self) -> threading.Event:
        return self.ev

    def do_append(self, m, nxt):
        return nxt(m)

    def close(self) -> None:
        self.closed = True


def test_interceptor_ready_gates_appends(fb: FakeBuilder) -> None:
    """C.2 TestWALWithInterceptor: appends time out until the interceptor is ready."""
    ic = _NotReady()
    op = adapt_impls_to_builder(fb, ic).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    with pytest.raises(WALTimeoutError):
        w.append(msg(), timeout=0.3)
    ic.ev.set()
    assert w.append(msg(), timeout=2).message_id is not None
    w.close()
    assert ic.closed
    op.close()


def test_read_failures_retried(fb: FakeBuilder) -> None:
    """C.2/C.3: backend read fails; read() returns at once, retries happen with backoff, close is clean."""
    op = adapt_impls_to_builder(fb).build()
    fails = [0]

    def fail(_opt) -> None:
        if fails[0] < 2:
            fails[0] += 1
            raise WALIOError("read failed")

    fb.openers[0].read_failures = fail
    for mode in (AccessMode.RO, AccessMode.RW):
        fails[0] = 0
        w = op.open(OpenOption(PChannelInfo("p1", 1, mode)))
        s = w.read(ReadOption(vchannel="test"))
        with pytest.raises(TimeoutError):
            data(s, 1, 0.5)  # only ticks (RW) or nothing (RO) arrive
        assert fails[0] == 2
        assert w.is_available()
        w.close()
        assert not w.is_available()
        assert s.done().is_set() and s.error() is None
        s.close()
    op.close()


class _Recorder:
    def __init__(self, tag: str, log: list[str]) -> None:
        self.tag, self.log = tag, log

    def build(self, param):
        assert param.channel.name == "p1" and param.initialized_time_tick > 0
        return self

    def do_append(self, m, nxt):
        if m.message_type is not MessageType.TIME_TICK:
            assert m.time_tick > 0  # user interceptors run inside the built-ins: the tick is stamped
            self.log.append(self.tag)
        return nxt(m)

    def close(self) -> None:
        pass


def test_user_interceptors_order(fb: FakeBuilder) -> None:
    log: list[str] = []
    op = adapt_impls_to_builder(fb, _Recorder("a", log), _Recorder("b", log)).build(
        interceptors=[_Recorder("c", log)]
    )
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append_messages([msg(0), msg(1)])
    assert log == ["a", "b", "c", "a", "b", "c"]
    op.close()


def test_back_pressure_bounds_inflight_appends(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build(max_inflight_appends=8)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    gate = threading.Event()
    fb.openers[0].append_hook = lambda ms: gate.wait(5)
    submitted = [0]

    def produce() -> None:
        for i in range(50):
            w.append_async(msg(i))
            submitted[0] += 1

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.3)
    assert submitted[0] <= 8  # the producer is held back, memory stays bounded
    gate.set()
    t.join(5)
    assert submitted[0] == 50
    w.close()
    op.close()


def test_an_append_async_result_that_times_out_raises_a_wal_timeout_error(fb: FakeBuilder) -> None:
    """``AppendFuture.result(timeout)`` raised a bare ``TimeoutError()`` with no message (review 15b), outside the
    documented hierarchy; it is a ``WALTimeoutError`` (still a ``TimeoutError``) that says the append may still
    be stored."""
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    gate = threading.Event()
    fb.openers[0].append_hook = lambda ms: gate.wait(5)
    f = w.append_async(msg(0))
    with pytest.raises(WALTimeoutError, match="may still be stored") as e:
        f.result(timeout=0.01)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(WALTimeoutError):
        f.exception(timeout=0.01)
    gate.set()
    assert f.result(timeout=5).message_id is not None
    w.close()
    op.close()


def test_system_messages_refused_and_bad_input(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    for t in (MessageType.TIME_TICK, MessageType.TXN):
        with pytest.raises(InvalidArgumentError):
            w.append(MutableMessage(t, b""))
    with pytest.raises(TypeError):
        w.append(b"not a message")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        w.begin_txn("v1", keepalive=0.0)
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_group_with_a_begin_txn_without_vchannel_is_refused_whole(backend: str, tmp_path: Path) -> None:
    """A BEGIN_TXN with vchannel "" was refused by the txn rules inside the append, after the group's earlier
    messages were stored: a ``PartialAppendError`` for a mistake that depends on nothing stored. It is refused
    with the group's other input checks, before anything is stored."""
    from wal import registry

    extra = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    with registry.must_get_builder(backend).build(**extra) as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        with pytest.raises(InvalidArgumentError, match="needs a vchannel"):  # PartialAppendError before
            w.append_messages([msg(0), MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="")])
        with pytest.raises(InvalidArgumentError, match="needs a vchannel"):
            w.append_async(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel=""))
        last = w.append(msg(1))
        with w.read(ReadOption()) as s:
            got = []
            while not got or got[-1] != last.message_id:
                m = s.recv(timeout=5)
                if m.message_type is MessageType.INSERT:
                    got.append(m.message_id)
        assert got == [last.message_id]  # msg(0) of the refused group was not stored


def test_append_results_and_truncate(fb: FakeBuilder) -> None:
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    m = msg(0)
    r = w.append(m)
    assert m.time_tick == r.time_tick > 0  # stamped in place
    assert r.last_confirmed_message_id is not None and r.last_confirmed_message_id <= r.message_id
    assert r.txn_ctx is None
    with w.begin_txn("v1") as t:
        rb = t.append(msg(1))
        assert rb.txn_ctx is not None and rb.txn_ctx == t.txn_ctx
    w.truncate(r.message_id)
    assert fb.openers[0].truncated == [r.message_id]
    assert w.get_latest_mvcc_timestamp("v1") >= rb.time_tick
    w.close()
    op.close()


def test_fenced_backend_makes_the_wal_unavailable(fb: FakeBuilder) -> None:
    from wal.errors import FencedError

    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    # A scanner open while p0 is appended: the write-ahead buffer keeps it, and its tick (never persisted here:
    # nothing owns the channel after the fence) releases it to the read below. With no scanner open, the buffer
    # keeps nothing, and a read after the fence sees p0 once the new owner's first tick is in the backend.
    early = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    w.append(msg(0))

    def fence(_ms):
        raise FencedError("term 2 owns p1")

    fb.openers[0].append_hook = fence
    with pytest.raises(FencedError):
        w.append(msg(1))
    assert not w.is_available() and w.available().is_set()
    fb.openers[0].append_hook = None
    with pytest.raises(FencedError):  # fenced for ever
        w.append(msg(2))
    with w.read(ReadOption()) as s:  # reads still work
        assert [bytes(m.payload) for m in data(s, 1)] == [b"p0"]
    early.close()
    w.close()
    op.close()


def test_lifetime_calls_stop_and_wait() -> None:
    from wal.adaptor._lifetime import Lifetime

    lt = Lifetime("t")
    entered = threading.Event()
    release = threading.Event()

    def call() -> None:
        with lt.call():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=call)
    t.start()
    assert entered.wait(5)
    assert not lt.wait(timeout=0.05)  # in flight
    assert lt.stop() and not lt.stop()  # the first stop owns the close
    with pytest.raises(ShutdownError):
        with lt.call():
            pass
    threading.Timer(0.05, release.set).start()
    assert lt.wait(timeout=5)
    assert not lt._calls  # the refused call left nothing behind
    t.join(5)


# An interrupt landing in a weakref callback (a thread ending) is "ignored" by Python: expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_lifetime_interrupts_at_any_bytecode_never_leave_a_call_counted() -> None:
    """A Ctrl-C can land between any two bytecodes of the main thread, inside the lifetime's own code too; none
    may leave a finished call counted (close() would wait for it for ever). Real signals at random moments (a
    timer thread sends SIGUSR1, whose handler raises KeyboardInterrupt) into a loop of calls. The counter under a
    condition it replaced left a call counted, or the condition's lock held, in ~30% of such trials."""
    import random
    import signal

    from wal.adaptor._lifetime import Lifetime

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()
    rng = random.Random(5)
    old = signal.signal(signal.SIGUSR1, interrupt)
    trials = left = stuck = 0
    try:
        # At least 1.5 s and at least 50 trials: on a busy machine a trial (two timer threads) can take 30 ms and
        # more, and a loop bounded by time alone ran fewer (1 run in 12 beside two CPU hogs); a failed trial ends it.
        end = time.monotonic() + 1.5
        while (time.monotonic() < end or trials < 50) and not (left or stuck):
            lt = Lifetime("t")
            timer = threading.Timer(rng.uniform(1e-4, 2e-3), signal.pthread_kill, (main, signal.SIGUSR1))
            # A trial blocked in a lock: interrupted again by wall time, and counted as hung. 5 s, not 1: a trial that
            # a busy machine slowed must not count as hung (nor be interrupted outside the try below).
            rescue = threading.Timer(5.0, signal.pthread_kill, (main, signal.SIGUSR1))
            try:
                timer.start()
                rescue.start()
                try:
                    for _ in range(200_000):
                        with lt.call():
                            pass
                except KeyboardInterrupt:
                    pass
                stuck += not rescue.is_alive()
                rescue.cancel()
                timer.join()
            except KeyboardInterrupt:  # landed in the handler's own except clause
                rescue.cancel()
                timer.join()
            trials += 1
            left += bool(lt._calls)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert (left, stuck) == (0, 0), f"of {trials} interrupted trials, {left} left a call counted, {stuck} hung"
    assert trials >= 50


def test_close_from_a_done_callback_while_another_thread_closes_does_not_deadlock(fb: FakeBuilder) -> None:
    """One thread closes the WAL (and waits for the append thread to end) while a done callback run by that
    append thread closes it too: the second close must return, not wait for the first."""
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    first_close_started = threading.Event()
    second_returned = threading.Event()

    ran_in: list[str] = []

    def close_again(_: object) -> None:
        ran_in.append(threading.current_thread().name)
        first_close_started.wait(5)
        time.sleep(0.1)  # the first close is now waiting for this thread
        w.close()
        second_returned.set()

    f = w.append_async(MutableMessage(MessageType.INSERT, b"x", vchannel="v1"))  # a lone append: the thread runs it
    f.add_done_callback(close_again)

    def close_first() -> None:
        first_close_started.set()
        w.close()

    closer = threading.Thread(target=close_first, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close deadlocked with a close from a done callback"
    assert second_returned.is_set()
    assert ran_in and ran_in[0].startswith("wal-append"), ran_in  # the scenario: the callback ran in that thread
    assert f.result(1).message_id is not None
    op.close()


def test_a_txn_block_that_ended_its_txn_itself_exits_cleanly(fb: FakeBuilder) -> None:
    """``with w.begin_txn(...) as t: ... t.commit()`` raised InvalidTxnStateError on leaving the block (its exit
    committed again); after a failed commit, a rollback said the txn was "committed or rolled back"."""
    from wal.errors import InvalidTxnStateError, TxnExpiredError

    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.01)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    with w.begin_txn("v") as t:
        t.append(MutableMessage(MessageType.INSERT, b"a"))
        t.commit()
    assert t.finished
    with w.begin_txn("v") as t:
        t.rollback()
    t = w.begin_txn("v", keepalive=0.02)
    t.append(MutableMessage(MessageType.INSERT, b"b"))
    time.sleep(0.2)  # expires
    with pytest.raises(TxnExpiredError):
        t.commit()
    with pytest.raises(InvalidTxnStateError, match="commit failed"):
        t.rollback()
    w.close()
    op.close()


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_bad_timeout_of_commit_or_rollback_leaves_the_txn_usable(fb: FakeBuilder, end: str) -> None:
    """A refused timeout marked the txn as ended ("its commit failed") before anything was written: it could be
    neither committed nor rolled back, and stayed open in the WAL until its keepalive ran out (holding back every
    last-confirmed ID, retention, and close). Found by review 11b."""
    op = adapt_impls_to_builder(fb).build(time_tick_interval=0.01)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    t = w.begin_txn("v", keepalive=3600)
    t.append(MutableMessage(MessageType.INSERT, b"a"))
    for bad in (-1, 0, float("nan")):
        with pytest.raises(InvalidArgumentError, match=f"{end} timeout"):
            getattr(t, end)(timeout=bad)
        assert not t.finished
    ended = getattr(t, end)(timeout=5)
    assert t.finished
    r = w.append(MutableMessage(MessageType.INSERT, b"after"))
    assert not r.last_confirmed_message_id < ended.message_id  # no open txn holds it back at its begin
    w.close()
    op.close()


def test_an_append_timeout_of_0_is_refused(fb: FakeBuilder) -> None:
    """It always raised WALTimeoutError, with the message stored anyway (review 11b: 50 of 50)."""
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    with pytest.raises(InvalidArgumentError, match="append timeout must be a positive"):
        w.append(MutableMessage(MessageType.INSERT, b"x"), timeout=0)
    with pytest.raises(InvalidArgumentError, match="append timeout must be a positive"):
        w.append_messages([MutableMessage(MessageType.INSERT, b"x")], timeout=0)
    assert w.append(MutableMessage(MessageType.INSERT, b"y"), timeout=5).message_id is not None
    w.close()
    op.close()


def test_bad_arguments_of_reads_and_appends_are_wal_errors(fb: FakeBuilder) -> None:
    """Each raised a bare AttributeError or TypeError (or was accepted and failed later, in recv)."""
    from wal.options import DeliverFilter, DeliverPolicy

    for bad in (
        {"deliver_policy": "all"},
        {"deliver_filters": [None]},
        {"deliver_filters": DeliverFilter.time_tick_gt(1)},  # one filter, not a list
        {"deliver_filters": "x"},
        {"vchannel": 3},
        {"name": b"s"},
    ):
        with pytest.raises(InvalidArgumentError):
            ReadOption(**bad)  # type: ignore[arg-type]
    ReadOption(DeliverPolicy.latest(), (DeliverFilter.time_tick_gt(1),), "v", "s")  # a tuple is a list too
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    with pytest.raises(InvalidMessageError):
        w.append_messages(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError):
        w.append_messages(MutableMessage(MessageType.INSERT, b"one"))  # type: ignore[arg-type]
    rs = w.append_messages(MutableMessage(MessageType.INSERT, b"%d" % i) for i in range(3))  # type: ignore[arg-type]
    assert len(rs) == 3
    t = w.begin_txn("v")
    with pytest.raises(InvalidMessageError):
        t.append(None)  # type: ignore[arg-type]
    t.rollback()
    w.close()
    with pytest.raises(ShutdownError):
        w.append_messages([])  # a closed WAL says so, even for nothing to append
    op.close()


@pytest.mark.parametrize("bad", ["one short", "None"])
def test_a_backend_returning_the_wrong_ids_gets_a_clear_error(fb: FakeBuilder, bad: str) -> None:
    """``append_batch`` must return one ID per message; anything else used to surface as a bare StopIteration
    (or "NoneType has no len()") from deep inside the adaptor."""
    op = adapt_impls_to_builder(fb).build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    backend = fb.openers[0].wals[-1]
    orig = backend.append_batch
    backend.append_batch = (  # type: ignore[method-assign]
        (lambda msgs: orig(msgs)[:-1]) if bad == "one short" else (lambda msgs: [orig(msgs)][1:] or None)
    )
    for call in (lambda: w.append_messages([msg(1), msg(2)]), lambda: w.append(msg(3))):
        with pytest.raises(WALError, match=r"fakewal backend.s append_batch returned .*\(a bug in the backend\)"):
            call()
    backend.append_batch = orig  # type: ignore[method-assign]
    assert w.append(msg(4)).message_id is not None  # the WAL goes on
    op.close()


@pytest.mark.parametrize(
    "how, vchannel",
    [("begin_txn", ""), ("begin_txn", None), ("begin_txn", 5), ("begin_txn", b"v"), ("BEGIN_TXN", "")],
)
def test_a_txn_without_a_vchannel_is_refused(fb: FakeBuilder, how: str, vchannel: object) -> None:
    # begin_txn("") (or None) made a txn "for every vchannel", which every vchannel's reader got, while
    # ReadOption(vchannel="") is refused; a Milvus-style BEGIN_TXN without a vchannel did the same.
    with adapt_impls_to_builder(fb).build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        before = len(w.txn_manager)  # type: ignore[attr-defined]
        with pytest.raises(InvalidArgumentError, match="vchannel"):
            if how == "begin_txn":
                w.begin_txn(vchannel)  # type: ignore[arg-type]
            else:
                w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel=vchannel))  # type: ignore[arg-type]
        assert len(w.txn_manager) == before  # type: ignore[attr-defined]  # no txn left open
        with w.begin_txn("v1") as t:  # the WAL goes on
            t.append(msg(1))


def _set_attr(name: str, value: object) -> Callable[[MutableMessage], object]:
    return lambda m: setattr(m, name, value)


_YEAR_3000 = 32503680000000 << 18  # a hybrid tick (ms << 18) in the year 3000


@pytest.mark.parametrize("how", ["append", "append_async", "append_messages", "txn"])
@pytest.mark.parametrize(
    "stamp",
    [
        pytest.param(_set_attr("not_persisted", True), id="not_persisted"),  # acknowledged, never stored
        pytest.param(_set_attr("barrier_time_tick", 1 << 64), id="barrier-2**64"),  # every later append failed
        pytest.param(_set_attr("barrier_time_tick", (1 << 64) - 2), id="barrier-near-2**64"),
        pytest.param(_set_attr("barrier_time_tick", _YEAR_3000), id="barrier-year-3000"),  # ticks moved there
        pytest.param(_set_attr("barrier_time_tick", "x"), id="barrier-str"),  # a TypeError, in the future
        pytest.param(_set_attr("barrier_time_tick", -5), id="barrier-negative"),  # ignored, silently
        pytest.param(_set_attr("barrier_time_tick", math.nan), id="barrier-nan"),
    ],
)
def test_stamps_a_program_sets_wrongly_are_refused_at_the_call(
    fb: FakeBuilder, how: str, stamp: Callable[[MutableMessage], object]
) -> None:
    with adapt_impls_to_builder(fb).build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        m = msg(1)
        stamp(m)
        with pytest.raises(InvalidArgumentError):
            if how == "append":
                w.append(m)
            elif how == "append_async":
                w.append_async(m)  # raises itself: nothing reaches the queue
            elif how == "append_messages":
                w.append_messages([msg(0), m])
            else:
                with w.begin_txn("v1") as t:
                    t.append(m)
        r = w.append(msg(2))  # the WAL goes on, its clock where it was
        assert physical_ms(r.time_tick) < time.time() * 1000 + 60_000
        with w.read(ReadOption()) as s:
            assert [bytes(x.payload) for x in data(s, 1)] == [b"p2"]  # nothing of the refused append was stored


@pytest.mark.parametrize("bad", [1 << 64, _YEAR_3000, -1, "x", math.nan, 1.5, True, None])
def test_with_barrier_time_tick_refuses_what_cannot_be_a_barrier(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="barrier"):
        MutableMessage(MessageType.INSERT, b"").with_barrier_time_tick(bad)  # type: ignore[arg-type]
    now = compose_ts(int(time.time() * 1000))
    assert MutableMessage(MessageType.INSERT, b"").with_barrier_time_tick(now + 5).barrier_time_tick == now + 5


@pytest.mark.parametrize("vchannel", [None, "", 5, ["v1"], b"v1"])
def test_get_latest_mvcc_timestamp_needs_a_vchannel_name(fb: FakeBuilder, vchannel: object) -> None:
    # None and "" answered with the broadcast writes' tick only, below the vchannel writes a reader waits for
    # (no error); a list raised a bare TypeError
    with adapt_impls_to_builder(fb).build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        r = w.append(msg(1))
        with pytest.raises(InvalidArgumentError, match="vchannel"):
            w.get_latest_mvcc_timestamp(vchannel)  # type: ignore[arg-type]
        assert w.get_latest_mvcc_timestamp("v1") >= r.time_tick


def _opener_of(backend: str, fb: FakeBuilder, tmp_path: object) -> Any:
    """An opener of the fake backend (through the adaptor), of memory or of localfs."""
    from wal import registry

    if backend == "fake":
        return adapt_impls_to_builder(fb).build()
    if backend == "memory":
        return registry.must_get_builder("memory").build()
    return registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 16)


@pytest.mark.parametrize("backend", ["fake", "memory", "localfs"])
@pytest.mark.parametrize("how", ["append", "append_async", "append_messages"])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set_attr("message_type", 77), id="type-77"),  # stored, delivered as a bare int
        pytest.param(_set_attr("message_type", 2), id="type-int-2"),
        pytest.param(_set_attr("message_type", ["x"]), id="type-list"),  # a bare TypeError
        pytest.param(_set_attr("vchannel", None), id="vchannel-None"),  # delivered with vchannel None
        pytest.param(_set_attr("vchannel", 5), id="vchannel-int"),
        pytest.param(lambda m: m.properties.__setitem__("_vc", "x"), id="reserved-key"),  # shown to readers
        pytest.param(lambda m: m.properties.__setitem__("k", 1), id="int-value"),  # memory: every reader ended
        pytest.param(lambda m: m.properties.__setitem__("k", "\ud800"), id="surrogate-value"),
        pytest.param(_set_attr("properties", [("k", "v")]), id="properties-list"),
        # review 13g: these failed in the append thread with a bare TypeError / UnicodeEncodeError / AttributeError
        pytest.param(_set_attr("payload", "p1"), id="payload-str"),
        pytest.param(_set_attr("payload", 5), id="payload-int"),
        pytest.param(_set_attr("vchannel", "\ud800"), id="vchannel-surrogate"),  # localfs
        pytest.param(_set_attr("txn_ctx", "t1"), id="txn-ctx-str"),
    ],
)
def test_a_message_changed_after_it_was_made_is_checked_at_append(
    fb: FakeBuilder, tmp_path: object, backend: str, how: str, change: Callable[[MutableMessage], object]
) -> None:
    op = _opener_of(backend, fb, tmp_path)
    with op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        m = msg(1)
        change(m)
        with pytest.raises(WALError):
            if how == "append":
                w.append(m)
            elif how == "append_async":
                w.append_async(m)  # raises itself: nothing reaches the queue
            else:
                w.append_messages([msg(0), m])
        w.append(msg(2))
        with w.read(ReadOption()) as s:  # nothing of it was stored, and readers read on
            got = data(s, 1)
            assert [(bytes(x.payload), x.message_type, x.vchannel, dict(x.properties)) for x in got] == [
                (b"p2", MessageType.INSERT, "v1", {"id": "2"})
            ]


@pytest.mark.parametrize("backend", ["fake", "memory", "localfs"])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set_attr("payload", "p9"), id="payload-str"),
        pytest.param(_set_attr("vchannel", "\ud800"), id="vchannel-surrogate"),
    ],
)
def test_a_bad_message_pipelined_with_others_fails_its_own_call_only(
    fb: FakeBuilder, tmp_path: object, backend: str, change: Callable[[MutableMessage], object]
) -> None:
    # Review 13g: checked only in the append thread, one such message failed every append of its batch (other
    # producers' too) with a bare error; memory stored the batch's messages before it while every future failed,
    # and its readers then hung.
    op = _opener_of(backend, fb, tmp_path)
    with op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        futures = []
        for i in range(40):
            m = MutableMessage(MessageType.INSERT, b"p%d" % i, vchannel="v1")  # no properties: the fast path
            if i == 20:
                change(m)
                with pytest.raises(WALError):
                    w.append_async(m)
                continue
            futures.append(w.append_async(m))
        results = [f.result(timeout=30) for f in futures]
        assert len({r.message_id for r in results}) == 39
        with w.read(ReadOption()) as s:
            assert [bytes(x.payload) for x in data(s, 39)] == [b"p%d" % i for i in range(40) if i != 20]


def test_a_buffer_assigned_as_payload_after_the_message_was_made_is_copied_at_append(fb: FakeBuilder) -> None:
    # as the constructor copies it: the caller changing its buffer afterwards must not change what readers get
    with adapt_impls_to_builder(fb).build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        m = MutableMessage(MessageType.INSERT, b"", vchannel="v1")
        buf = bytearray(b"abc")
        m.payload = buf
        w.append(m)
        buf[:] = b"xyz"
        with w.read(ReadOption()) as s:
            assert [bytes(x.payload) for x in data(s, 1)] == [b"abc"]


@pytest.mark.parametrize("mtype", [77, 2, "INSERT"])
def test_txn_append_of_a_message_whose_type_was_changed_is_refused_and_the_txn_goes_on(
    fb: FakeBuilder, mtype: object
) -> None:
    # review 13g: Txn.append read message_type.is_system first, a bare AttributeError for a type set afterwards
    with adapt_impls_to_builder(fb).build() as op, op.open(OpenOption(PChannelInfo("p1", 1))) as w:
        txn = w.begin_txn("v1")
        bad = msg(1)
        bad.message_type = mtype  # type: ignore[assignment]
        with pytest.raises(InvalidArgumentError, match="message_type"):
            txn.append(bad)
        txn.append(msg(2))
        txn.commit()
        with w.read(ReadOption()) as s:
            (t,) = data(s, 1)
            assert [bytes(x.payload) for x in t.messages] == [b"p2"]
