"""The dispatcher takes a batch of futures only without a Python loop (it counts the groups queued): queues that
mix futures and groups, filled while a batch blocks, must still give every entry its own outcomes, in order.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest

from wal._types import AppendResult
from wal.adaptor._dispatcher import AppendDispatcher
from wal.message import IntMessageID, MessageType, MutableMessage


class ID(IntMessageID):
    WAL_NAME = "disptest-mixed"


def m(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i)


@pytest.mark.timeout(120)
def test_mixed_futures_and_groups_in_order_with_own_results() -> None:
    seen: list[int] = []
    batches: list[int] = []
    gate = threading.Event()

    def process(ms: Sequence[MutableMessage], units: Sequence[int] = ()) -> list[AppendResult | BaseException]:
        gate.wait(10)
        batches.append(len(ms))
        seen.extend(int(x.payload) for x in ms)
        return [AppendResult(ID(int(x.payload))) for x in ms]

    ready = threading.Event()
    d = AppendDispatcher("t", process, max_inflight=100_000, max_batch=50, ready=ready, period=10)
    rng = random.Random(7)
    results: dict[int, int] = {}
    order: list[int] = []
    threads: list[threading.Thread] = []
    futs = []
    i = 0
    for round_ in range(40):
        if round_ % 3 == 1:  # a synchronous group from another thread, queued among the futures
            base, size = i, rng.randint(1, 30)
            i += size
            order.extend(range(base, base + size))

            def run(base: int = base, size: int = size) -> None:
                for k, r in enumerate(d.run_group([m(base + j) for j in range(size)], timeout=30)):
                    results[base + k] = r.message_id.value  # type: ignore[attr-defined]

            queued = len(d._queue)
            t = threading.Thread(target=run)
            t.start()
            threads.append(t)
            while len(d._queue) == queued and t.is_alive():  # queued before the next futures (FIFO)
                threading.Event().wait(0.001)
        else:
            for _ in range(rng.randint(1, 120)):
                futs.append((i, d.submit_one(m(i))))
                order.append(i)
                i += 1
    ready.set()
    gate.set()
    for k, f in futs:
        assert f.result(10).message_id == ID(k)
    for t in threads:
        t.join(30)
    assert all(results[k] == k for k in order if k not in dict(futs))
    assert seen == order  # FIFO across futures and groups
    assert max(batches) <= 50 + 30  # a group may exceed max_batch only by its own size
    assert d._groups == 0
    d.close()
