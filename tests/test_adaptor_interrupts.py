"""What an interrupt (Ctrl-C, or SystemExit raised in an interceptor) leaves behind: never a lock held for good, a
silent stall, or an acknowledged message lost (docs/ARCHITECTURE.md, "Interrupts")."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from _adaptor_fakes import FakeBuilder, data, msg
from _interrupts import interrupt_at_line, returns_within, run_interrupted, sigusr1_interrupts

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.adaptor import adapt_impls_to_builder
from wal.errors import WALError
from wal.message import MessageType


@pytest.fixture
def fb() -> FakeBuilder:
    return FakeBuilder()


class _InterruptOn:
    """A user interceptor (inside the time-tick one) that raises ``exc`` once, for the first message of ``kind``
    (and payload ``payload``, if given): what a Ctrl-C landing in the chain does to the bookkeeping around it."""

    def __init__(self, exc: type[BaseException], kind: MessageType, payload: bytes | None = None) -> None:
        self.exc, self.kind, self.payload, self.fired = exc, kind, payload, threading.Event()

    def build(self, param):
        return self

    def do_append(self, m, nxt):
        if (
            not self.fired.is_set()
            and m.message_type is self.kind
            and (self.payload is None or bytes(m.payload) == self.payload)
        ):
            self.fired.set()
            raise self.exc()
        return nxt(m)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("how", ["append", "append_async"])
def test_an_interrupt_inside_the_chain_makes_the_wal_unavailable_and_loses_no_acknowledged_message(
    fb: FakeBuilder, how: str
) -> None:
    """A KeyboardInterrupt raised inside the interceptor chain leaves the time-tick bookkeeping cut short (an
    acker allocated, never acked): before, appends went on being acknowledged while tailing readers, held back
    by that acker, never received them. Now the WAL is done and says so: later appends and reads fail with an
    error caused by the interrupt, open scanners end with it, and a reopened WAL has every acknowledged message."""
    boom = _InterruptOn(KeyboardInterrupt, MessageType.INSERT, b"p1")
    op = adapt_impls_to_builder(fb, boom).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    s = w.read(ReadOption())
    w.append(msg(0))  # acknowledged just before: in the same tick period
    if how == "append":  # run inline, in this thread: the interrupt reaches its caller
        with pytest.raises(KeyboardInterrupt):
            w.append(msg(1))
    else:  # a lone future, run by the append thread: its future fails (never raises KeyboardInterrupt elsewhere)
        with pytest.raises(WALError) as failed:
            w.append_async(msg(1)).result(5)
        assert isinstance(failed.value.__cause__, KeyboardInterrupt)
    assert boom.fired.is_set()
    assert not w.is_available() and w.available().is_set()
    for attempt in (lambda: w.append(msg(2)), lambda: w.append_async(msg(2)).result(5)):
        with pytest.raises(WALError) as err:
            attempt()
        assert isinstance(err.value.__cause__, KeyboardInterrupt), err.value
    with pytest.raises(WALError) as err:
        w.read(ReadOption())
    assert isinstance(err.value.__cause__, KeyboardInterrupt)
    with pytest.raises(WALError) as err:
        while True:  # what it released before, if anything, then the error: never a silent wait
            assert bytes(s.recv(1).payload) == b"p0"
    assert isinstance(err.value.__cause__, KeyboardInterrupt) and s.done().is_set()
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 2.0
    with op.open(OpenOption(PChannelInfo("p1", 2))) as w2, w2.read(ReadOption()) as s2:
        assert bytes(data(s2, 1)[0].payload) == b"p0"
    op.close()


def test_a_base_exception_in_the_periodic_tick_stops_writes_and_leaves_the_append_thread_alive(
    fb: FakeBuilder,
) -> None:
    """SystemExit raised while the append thread runs the periodic tick (here by a user interceptor) cut the tick
    bookkeeping short and, before, ended the thread: queued appends then waited for ever. Now the thread lives
    on and fails them, and the WAL is unavailable."""
    boom = _InterruptOn(SystemExit, MessageType.TIME_TICK)
    op = adapt_impls_to_builder(fb, boom).build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    s = w.read(ReadOption())
    w.append(msg(0))  # data since the last persisted tick: the next periodic tick is persisted, through the chain
    assert boom.fired.wait(5)
    deadline = time.monotonic() + 5
    while w.is_available() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not w.is_available()
    f = w.append_async(msg(1))  # a lone append_async: the thread takes it
    with pytest.raises(WALError) as err:
        f.result(5)
    assert isinstance(err.value.__cause__, SystemExit)
    with pytest.raises(WALError):
        while True:  # p0, if it was released before, then the error
            assert bytes(s.recv(1).payload) == b"p0"
    w.close()
    with op.open(OpenOption(PChannelInfo("p1", 2))) as w2, w2.read(ReadOption()) as s2:
        assert bytes(data(s2, 1)[0].payload) == b"p0"
    op.close()


# An interrupt landing in a weakref callback (a thread ending) is "ignored" by Python: expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_real_interrupts_while_pipelining_never_hold_an_acknowledged_message_back_from_readers(
    backend: str, tmp_path
) -> None:
    """Real Ctrl-Cs at random moments while the main thread pipelines appends (it runs batches, with their
    time-tick bookkeeping, and periodic ticks itself): afterwards the WAL either still writes and a tailing reader
    receives every message whose append was acknowledged, or it says it stopped (``is_available()``) and the
    reader ends with the interrupt's error; in both cases a reopened WAL reads every acknowledged message back.
    Before, an interrupt between a tick's allocation and its acknowledgement held every later message back from
    readers, though appends went on being acknowledged. (On localfs most land in the write or fdatasync.)"""
    import random

    rng = random.Random(7)
    opts: dict = {"time_tick_interval": 0.005, "max_append_batch": 8}
    if backend == "localfs":
        opts.update(root=str(tmp_path), segment_bytes=1 << 20)
    op = registry.must_get_builder(backend).build(**opts)
    rounds = stopped = 0
    problems: list[str] = []
    try:
        with sigusr1_interrupts() as main:
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                rounds += 1
                w = op.open(OpenOption(PChannelInfo(f"fz{rounds}", 1)))
                s = w.read(ReadOption())
                futs: list = []

                def pipeline() -> None:
                    for i in range(5_000):
                        futs.append(w.append_async(msg(i)))

                run_interrupted(main, rng.uniform(1e-4, 4e-3), pipeline)
                acked = set()
                for f in futs:
                    try:
                        acked.add(f.result(5).message_id)
                    except WALError:
                        pass
                try:  # later appends: acknowledged (the WAL writes on) or refused (it said it stopped)
                    acked.add(w.append(msg(-1)).message_id)
                except WALError:
                    if w.is_available():
                        problems.append(f"round {rounds}: an append failed, yet the WAL says it is available")
                stopped += not w.is_available()
                seen, err = _ids_received(s, acked)
                if err is not None and (w.is_available() or not isinstance(err.__cause__, KeyboardInterrupt)):
                    problems.append(f"round {rounds}: reader failed with {err!r}")
                if not acked <= seen and w.is_available():
                    problems.append(f"round {rounds}: {len(acked - seen)} of {len(acked)} acknowledged not received")
                if not returns_within(w.close, 5):
                    problems.append(f"round {rounds}: close hangs")
                    break
                # Every acknowledged message is in the log: a reopened WAL (next term) reads them all back.
                with op.open(OpenOption(PChannelInfo(f"fz{rounds}", 2))) as w2, w2.read(ReadOption()) as s2:
                    back, _ = _ids_received(s2, acked)
                if not acked <= back:
                    problems.append(f"round {rounds}: {len(acked - back)} of {len(acked)} acknowledged lost")
                if backend == "localfs":
                    shutil.rmtree(tmp_path / f"fz{rounds}", ignore_errors=True)  # 1 MiB preallocated per channel
    finally:
        op.close()
    print(f"{rounds} rounds, the WAL stopped in {stopped}")
    assert not problems, problems[:5]
    assert rounds >= 10 and stopped >= 1, (rounds, stopped)


def _ids_received(s, want: set, seconds: float = 3.0) -> tuple[set, BaseException | None]:
    """IDs of the data messages ``s`` delivers until it has all of ``want``, ``seconds`` pass, or it fails with a
    ``WALError`` (returned)."""
    seen: set = set()
    deadline = time.monotonic() + seconds
    while not want <= seen:
        try:
            got = s.recv(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return seen, None
        except WALError as e:
            return seen, e
        if got.message_type is not MessageType.TIME_TICK:
            seen.add(got.message_id)
    return seen, None


def _wab_lock(w):
    return w._wab._lock, w._wab._cond


def _dispatcher_room(w):
    return w._dispatcher._lock, w._dispatcher._has_room


def _txn_manager(w):
    return w._txns._lock, w._txns._cond


def _localfs_writer(w):
    return w._impls._lock, w._impls._cv  # the close waits on it for the flush in progress


@pytest.mark.parametrize(
    ("backend", "where"),
    [("memory", _wab_lock), ("memory", _dispatcher_room), ("memory", _txn_manager), ("localfs", _localfs_writer)],
)
def test_a_ctrl_c_while_a_wait_takes_its_lock_back_never_releases_another_threads_hold(
    backend, where, tmp_path
) -> None:
    """A thread notified in ``Condition.wait`` takes the lock back; with a plain Lock a real Ctrl-C can cut that
    short, and ``with lock`` then released the lock *another* thread held (its own exit then failed with
    "release unlocked lock"; in the write-ahead buffer that left a batch pushed but reported failed, and the WAL
    refused every later append while it said it was available). The WAL's conditions use RLocks, whose
    re-acquire cannot be interrupted. The main thread waits on each real condition; a second thread holds its
    lock, notifies, interrupts the main thread, holds on, then lets go."""
    extra = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    op = registry.must_get_builder(backend).build(time_tick_interval=30, **extra)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    lock, cond = where(w)
    holder: list[str] = []
    with sigusr1_interrupts() as main:

        def hold() -> None:
            time.sleep(0.2)  # the main thread waits on the condition by now
            try:
                with lock:
                    cond.notify_all()  # it wakes and blocks taking the lock back
                    time.sleep(0.1)
                    import signal

                    signal.pthread_kill(main, signal.SIGUSR1)
                    time.sleep(0.2)
                holder.append("released")
            except BaseException as e:  # what the holder's exit raised is the finding
                holder.append(f"{type(e).__name__}: {e}")

        t = threading.Thread(target=hold)
        t.start()
        got = None
        try:
            with lock:
                cond.wait(5)
        except KeyboardInterrupt:
            got = "interrupted"
        except BaseException as e:
            got = f"{type(e).__name__}: {e}"
        t.join()
    assert holder == ["released"] and got == "interrupted", (holder, got)
    assert returns_within(lambda: lock.acquire() and lock.release(), 1)  # free for everyone
    w.append(msg(0))  # and the WAL works on
    w.close()
    op.close()


def test_a_second_interrupt_while_the_wal_stops_is_repaired_by_the_periodic_work(fb: FakeBuilder) -> None:
    """Stopping after an interrupt is one store (the error) and then the visible part (unavailable, scanners
    ended, buffer closed). A second Ctrl-C cutting the visible part short left a WAL that refused appends while it
    said it was available and whose scanners waited silently for ever; the periodic work now finishes it."""
    boom = _InterruptOn(KeyboardInterrupt, MessageType.INSERT, b"p1")
    op = adapt_impls_to_builder(fb, boom).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    s = w.read(ReadOption())
    real_set = w._unavailable.set
    second = [0]

    def set_interrupted() -> None:
        if not second[0]:
            second[0] = 1
            raise KeyboardInterrupt  # the second Ctrl-C, landing as the WAL makes its stop visible
        real_set()

    w._unavailable.set = set_interrupted
    with pytest.raises(KeyboardInterrupt):
        w.append(msg(1))
    assert second[0] == 1
    assert not w.is_available()  # decided by the one store, whatever came after it
    with pytest.raises(WALError) as err:
        while True:
            s.recv(2)  # ends with the error within a tick period or two, instead of timing out
    assert isinstance(err.value.__cause__, KeyboardInterrupt)
    assert w.available().is_set()
    w.close()
    op.close()


def test_a_close_cut_short_by_an_interrupt_is_finished_by_the_next_close() -> None:
    """A Ctrl-C inside the first close left the backend open and its channel locked, and every later close
    returned at once: the channel could not be reopened until the process ended. The next close finishes it."""
    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(msg(0))
    real = w._close_scanners
    calls = [0]

    def close_scanners_interrupted() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        real()

    w._close_scanners = close_scanners_interrupted
    with pytest.raises(KeyboardInterrupt):
        w.close()
    assert not w.is_available()
    assert returns_within(w.close, 5)
    assert calls[0] == 2
    with op.open(OpenOption(PChannelInfo("c", 2))) as w2, w2.read(ReadOption()) as s2:  # the channel is free
        assert bytes(data(s2, 1)[0].payload) == b"p0"
    w.close()  # a third close: nothing left to do
    op.close()


def test_closing_a_wal_an_interrupt_stopped_does_not_wait_for_its_transactions(fb: FakeBuilder) -> None:
    """A transaction open when the WAL stopped can never commit or roll back; close used to wait the whole
    graceful-close timeout for it."""
    boom = _InterruptOn(KeyboardInterrupt, MessageType.INSERT, b"p1")
    op = adapt_impls_to_builder(fb, boom).build(time_tick_interval=0.05)  # graceful close waits up to 3 s
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    t = w.begin_txn("v1")
    t.append(msg(0))
    with pytest.raises(KeyboardInterrupt):
        w.append(msg(1))
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 1.0
    op.close()


@pytest.mark.parametrize(
    "where",
    [
        ("WriteAheadBuffer._fold", "q.evict()"),  # as the push returns: the batch is queued, the pending list empty
        ("WABQueue.push", "self._msgs += store"),  # just before it changes anything
    ],
)
def test_a_ctrl_c_in_a_readers_fold_of_the_buffer_never_queues_a_batch_twice(where: tuple[str, str]) -> None:
    """Readers fold the write-ahead buffer's pending messages into its queue in their own thread. A Ctrl-C
    between the push and the clearing of the pending list left them queued and pending: the next fold queued them
    twice, out of order, and from then on every tailing reader died and appends failed while the WAL said it was
    available (seen with real signals by a review's fuzzer, about once in 14,000 interrupted ``recv`` calls). The
    push now empties the list in the step that queues it; an interrupt lands before or after both, and the WAL
    goes on: every message is delivered once, in order."""
    from wal.utility._wab_queue import WABQueue
    from wal.utility._write_ahead_buffer import WriteAheadBuffer

    owner, line = where[0].split(".")
    func = getattr({"WriteAheadBuffer": WriteAheadBuffer, "WABQueue": WABQueue}[owner], line)
    op = registry.must_get_builder("memory").build(time_tick_interval=0.01)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    s = w.read(ReadOption())
    w.append(msg(0))
    assert bytes(data(s, 1)[0].payload) == b"p0"
    for i in range(1, 4):
        w.append(msg(i))  # pending in the buffer, folded when a reader looks
    assert w._wab._pending
    with interrupt_at_line(func, where[1]) as fired, pytest.raises(KeyboardInterrupt):
        while True:
            s.recv(1)
    assert fired[0]
    for i in range(4, 6):
        w.append(msg(i))
    assert w.is_available()
    assert [bytes(m.payload) for m in data(s, 5)] == [b"p1", b"p2", b"p3", b"p4", b"p5"]
    with w.read(ReadOption()) as s2:  # a new reader, from the start: each once
        assert [bytes(m.payload) for m in data(s2, 6)] == [b"p%d" % i for i in range(6)]
    w.close()
    op.close()


def test_a_scanner_close_cut_short_never_makes_later_refusals_or_closes_wait(fb: FakeBuilder) -> None:
    """A second Ctrl-C inside the scanner close that stopping the WAL runs left the scanner closing but never
    done; a later close of it waited for ``done`` for ever, and every refused append (which redoes the stop) hung
    with it, as did the WAL's close."""
    from wal.adaptor._scanner import ScannerAdaptor

    boom = _InterruptOn(KeyboardInterrupt, MessageType.INSERT, b"p1")
    op = adapt_impls_to_builder(fb, boom).build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    s = w.read(ReadOption())
    w.append(msg(0))
    with interrupt_at_line(ScannerAdaptor.close, "self._done.set()") as fired, pytest.raises(KeyboardInterrupt):
        w.append(msg(1))  # the first Ctrl-C in the chain, the second as the WAL ends its scanner
    assert fired[0] and not s.done().is_set()
    out: list[object] = []

    def append_elsewhere() -> None:
        try:
            w.append(msg(2))
        except WALError as e:
            out.append(e)

    assert returns_within(append_elsewhere, 5), "a refused append hangs"
    assert isinstance(out[0], WALError)
    assert returns_within(w.close, 5), "close hangs"
    assert s.done().is_set()
    op.close()


def test_a_memory_backend_close_cut_short_is_finished_by_the_next_close() -> None:
    """The memory backend marked itself closed first; a close cut short after that left the channel taken by
    the closed writer, and the next close returned at once: reopening raised WALLockedError."""
    from wal.walimpls.memory._backend import MemoryWAL

    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(msg(0))
    with interrupt_at_line(MemoryWAL.close, "for s in scanners") as fired, pytest.raises(KeyboardInterrupt):
        w.close()
    assert fired[0]
    assert returns_within(w.close, 5)
    with op.open(OpenOption(PChannelInfo("c", 2))) as w2, w2.read(ReadOption()) as s2:
        assert bytes(data(s2, 1)[0].payload) == b"p0"
    op.close()


def test_a_close_cut_short_while_the_append_thread_drains_waits_for_the_drain_when_finished() -> None:
    """In 3.11 a ``Thread.join`` a Ctrl-C cuts short marks the thread ended, so the close that finished the
    interrupted one went on (final tick, buffer, backend and interceptors closed) while the append thread was
    still writing what was queued: those appends failed with ShutdownError instead of being written. Closers now
    wait for the thread's own end event. A real signal lands in the first close while a slow backend drains."""
    op = registry.must_get_builder("memory").build(max_append_batch=1)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    d = w._dispatcher
    process = d._process_futures

    def slow(msgs):  # 20 ms a batch
        time.sleep(0.02)
        return process(msgs)

    d._process_futures = slow
    d._may_run_inline = lambda: False  # the append thread runs every batch (as for a producer in an event loop)
    futs = [w.append_async(msg(i)) for i in range(30)]
    with sigusr1_interrupts() as main:
        import signal

        timer = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1))
        timer.start()
        try:
            w.close()  # joins the drain (~0.6 s): the signal lands in it
        except KeyboardInterrupt:
            pass
        timer.join()
    w.close()
    assert all(f.exception(5) is None for f in futs), [f.exception(0) for f in futs if f.exception(0)][:3]
    with op.open(OpenOption(PChannelInfo("c", 2))) as w2, w2.read(ReadOption()) as s2:
        assert len(data(s2, 30)) == 30
    op.close()


@pytest.mark.parametrize(
    ("sync", "line"),
    [
        ("always", "self._close_scanners()"),  # after the flush is drained
        ("interval", "self._syncer_done.wait()"),  # while the syncer may still be in its fdatasync
        ("always", "self._write_close_summary()"),
        ("always", "self._close_fds()"),  # files half closed, the channel still locked
    ],
)
def test_a_localfs_close_cut_short_is_finished_by_the_next_close(tmp_path, sync: str, line: str) -> None:
    """localfs's close marked itself closing first and returned at once when called again; a Ctrl-C inside it
    left its files open and the channel locked (a review: 8 of 4,517 interrupted closes with sync="always", 222
    of 7,102 with "interval"), and reopening it in the same process raised WALLockedError."""
    from wal.walimpls.localfs._wal import LocalFSWAL

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, sync=sync)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    for i in range(3):
        w.append(msg(i))
    with interrupt_at_line(LocalFSWAL._close_steps, line) as fired, pytest.raises(KeyboardInterrupt):
        w.close()
    assert fired[0]
    assert returns_within(w.close, 5)
    with op.open(OpenOption(PChannelInfo("c", 2))) as w2, w2.read(ReadOption()) as s2:
        assert [bytes(m.payload) for m in data(s2, 3)] == [b"p0", b"p1", b"p2"]
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_an_append_thread_that_fails_stops_the_wal_instead_of_stranding_appends(backend, tmp_path) -> None:
    """The append thread ending on an error of its own (a bug; found with an option the OS wait could not take)
    left queued futures pending for ever while ``is_available()`` said True. Now they and every later append fail
    with an error caused by it, the WAL says it is unavailable, and a reopened WAL reads every acknowledged
    message back."""
    extra = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    op = registry.must_get_builder(backend).build(time_tick_interval=0.05, **extra)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    acked = [w.append(msg(i)).message_id for i in range(5)]
    d = w._dispatcher

    def broken(timeout=None):
        raise OverflowError("timeout value is too large")

    with d._lock:
        d._has_work.wait = broken  # the thread's next wait fails
        d._has_work.notify()
    assert d._exited.wait(5), "the thread ended"
    f = w.append_async(msg(99))
    with pytest.raises(WALError) as err:
        f.result(timeout=5)
    assert isinstance(err.value.__cause__, OverflowError)
    assert not w.is_available()
    with pytest.raises(WALError):
        w.append(msg(100), timeout=5)
    assert returns_within(w.close, 5)
    w2 = op.open(OpenOption(PChannelInfo("c", 2)))
    s = w2.read(ReadOption())
    got = []
    while len(got) < len(acked):
        m = s.recv(5)
        if m.message_type is MessageType.INSERT:
            got.append(m.message_id)
    assert got == acked
    s.close()
    w2.close()
    op.close()


def test_an_opener_close_cut_short_is_finished_by_the_next_opener_close(tmp_path) -> None:
    """A Ctrl-C inside the opener's close (here: in a WAL's backend close) left that WAL's channel locked, and the
    opener's next close returned at once although the README says it finishes the close."""
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(msg(0))
    real = w._impls.close
    calls = [0]

    def close_interrupted() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        real()

    w._impls.close = close_interrupted
    with pytest.raises(KeyboardInterrupt):
        op.close()
    assert returns_within(op.close, 5)
    assert calls[0] == 2
    op2 = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    with op2, op2.open(OpenOption(PChannelInfo("c", 2))) as w2, w2.read(ReadOption()) as s2:  # the channel is free
        assert bytes(data(s2, 1)[0].payload) == b"p0"
    op.close()  # a third close: nothing left to do
    assert calls[0] == 2
