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
