"""The append dispatcher: FIFO batches, periodic work, merged sync triggers (the port of milvus-tests §I.6's
inspector/notifier: one thread per WAL instead of a process-wide inspector).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from wal._types import AppendResult
from wal.adaptor._dispatcher import AppendDispatcher
from wal.errors import ShutdownError
from wal.message import IntMessageID, MessageType, MutableMessage


class ID(IntMessageID):
    WAL_NAME = "disptest"


def m(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i)


def test_fifo_batches_and_results() -> None:
    seen: list[bytes] = []
    batches: list[int] = []

    def process(ms: Sequence[MutableMessage]) -> list[AppendResult | BaseException]:
        batches.append(len(ms))
        time.sleep(0.001)
        out: list[AppendResult | BaseException] = []
        for x in ms:
            seen.append(bytes(x.payload))
            out.append(ValueError("odd") if int(x.payload) % 2 else AppendResult(ID(int(x.payload))))
        return out

    ready = threading.Event()
    d = AppendDispatcher("t", process, max_inflight=1000, max_batch=64, ready=ready, period=10)
    futs = [d.submit_one(m(i)) for i in range(300)]
    ready.set()
    for i, f in enumerate(futs):
        if i % 2:
            assert isinstance(f.exception(5), ValueError)
        else:
            assert f.result(5).message_id == ID(i)
    assert seen == [b"%d" % i for i in range(300)]
    assert max(batches) > 1 and max(batches) <= 64
    d.close()
    with pytest.raises(ShutdownError):
        d.submit_one(m(0))


def test_triggers_merge_and_periodic_runs() -> None:
    calls: list[bool] = []
    gate = threading.Event()

    def periodic(persisted: bool) -> None:
        gate.wait(5)
        calls.append(persisted)

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", lambda ms: [], max_inflight=10, max_batch=10, ready=ready, periodic=periodic, period=60)
    d.trigger(False)  # the thread runs it and blocks in the gate
    time.sleep(0.1)
    d.trigger(True)
    d.trigger(False)  # merged with the pending True
    gate.set()
    deadline = time.monotonic() + 3
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert calls == [False, True]
    d.close()

    ticks: list[bool] = []
    d = AppendDispatcher("t", lambda ms: [], max_inflight=10, max_batch=10, ready=ready, periodic=ticks.append,
                         period=0.02)
    time.sleep(0.3)
    d.close()
    assert len(ticks) >= 5 and not any(ticks)


def test_close_without_ready_fails_queued() -> None:
    ready = threading.Event()
    d = AppendDispatcher("t", lambda ms: [], max_inflight=10, max_batch=10, ready=ready)
    f = d.submit_one(m(1))
    d.close()
    assert isinstance(f.exception(2), ShutdownError)


def _ids(ms: Sequence[MutableMessage]) -> list[AppendResult | BaseException]:
    return [ValueError(bytes(x.payload)) if bytes(x.payload).startswith(b"-") else AppendResult(ID(int(x.payload)))
            for x in ms]


def test_run_group_inline_without_future_and_first_error_raised() -> None:
    """``run_group`` with nothing queued runs in the caller's thread and returns the results directly."""
    threads: list[str] = []

    def process(ms: Sequence[MutableMessage]) -> list[AppendResult | BaseException]:
        threads.append(threading.current_thread().name)
        return _ids(ms)

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", process, max_inflight=100, max_batch=64, ready=ready, period=10)
    try:
        got = d.run_group([m(1), m(2)])
        assert [r.message_id for r in got] == [ID(1), ID(2)]
        assert threads == [threading.current_thread().name]
        with pytest.raises(ValueError, match="-5"):
            d.run_group([m(3), MutableMessage(MessageType.INSERT, b"-5"), MutableMessage(MessageType.INSERT, b"-6")])
        got = d.run_group([m(7)], timeout=5)  # with a timeout: queued, run by the append thread, same results
        assert [r.message_id for r in got] == [ID(7)]
        assert threads[-1] != threading.current_thread().name
    finally:
        d.close()
    with pytest.raises(ShutdownError):
        d.run_group([m(8)])


def test_queued_groups_get_their_own_results_and_share_batches() -> None:
    """Many synchronous callers at once: every one gets its own results, in its own order; groups queued while a
    batch runs share later batches (several groups per batch), and nothing hangs."""
    batches: list[int] = []

    def process(ms: Sequence[MutableMessage]) -> list[AppendResult | BaseException]:
        batches.append(len(ms))
        time.sleep(0.002)  # a backend write + sync
        return _ids(ms)

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", process, max_inflight=1000, max_batch=64, ready=ready, period=10)
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            for i in range(20):
                v = k * 1000 + i
                r = d.run_group([m(v)])
                assert r[0].message_id == ID(v)
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    d.close()
    assert not errors
    assert not any(t.is_alive() for t in ts)
    assert sum(batches) == 8 * 20
    assert max(batches) >= 3  # groups of different callers shared a batch


def test_run_group_timeout_when_queued_behind_a_slow_batch() -> None:
    gate = threading.Event()

    def process(ms: Sequence[MutableMessage]) -> list[AppendResult | BaseException]:
        gate.wait(5)
        return _ids(ms)

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", process, max_inflight=100, max_batch=64, ready=ready, period=10)
    try:
        blocker = d.submit_one(m(1))
        with pytest.raises(TimeoutError):
            d.run_group([m(2)], timeout=0.1)
        gate.set()
        assert blocker.result(5).message_id == ID(1)
    finally:
        gate.set()
        d.close()
