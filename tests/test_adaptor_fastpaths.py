"""The append hot path's shortcuts: the shared-condition future completed in bulk, inline group appends,
ticks allocated per batch, and the write-ahead buffer's cheap checks. Each must behave as the slow path did.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wal import OpenOption, PChannelInfo, registry
from wal._types import AppendResult
from wal.adaptor._dispatcher import AppendDispatcher
from wal.adaptor._future import (
    AllSucceeded,
    Appended,
    AppendFuture,
    complete_all,
    complete_appended,
    future_class,
    new_condition,
    new_future,
)
from wal.errors import WALError
from wal.interceptors.timetick import HybridClock
from wal.message import IntMessageID, MessageType, MutableMessage
from wal.utility import WriteAheadBuffer
from wal.utility._wab_queue import ENTRY_OVERHEAD


class ID(IntMessageID):
    WAL_NAME = "fasttest"


def m(i: int, vchannel: str = "v1") -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i, None, vchannel)


# -- AppendFuture ------------------------------------------------------------------------------------------------
def _fut(c: threading.Condition) -> AppendFuture[int]:
    return new_future(future_class(c))


def test_future_results_errors_timeouts_and_no_cancel() -> None:
    c = new_condition()
    ok, bad, late = _fut(c), _fut(c), _fut(c)
    assert isinstance(ok, cf.Future) and ok.running() and not ok.done()
    assert not ok.cancel()  # queued appends cannot be withdrawn
    complete_all(c, [ok, bad], [7, ValueError("boom")])
    assert ok.done() and ok.result() == 7 and ok.exception() is None
    with pytest.raises(ValueError, match="boom"):
        bad.result()
    assert isinstance(bad.exception(), ValueError)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        late.result(0.05)  # other futures' wake-ups must not end the wait early or late
    assert time.monotonic() - t0 >= 0.04
    complete_all(c, [ok, late], [99, 3])  # a finished future is never settled twice
    assert ok.result() == 7 and late.result() == 3


def test_future_wakes_waiter_despite_other_futures_notifying() -> None:
    c = new_condition()
    target, other = _fut(c), _fut(c)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(target.result(5)))
    t.start()
    time.sleep(0.02)
    complete_all(c, [other], [1])  # wakes the waiter, whose future is not done: it must wait on
    time.sleep(0.02)
    assert not got
    complete_all(c, [target], [2])
    t.join(5)
    assert got == [2]


def test_future_callbacks_wait_as_completed_and_asyncio() -> None:
    c = new_condition()
    a, b = _fut(c), _fut(c)
    seen: list[int] = []
    a.add_done_callback(lambda f: seen.append(f.result()))
    threading.Timer(0.02, lambda: complete_all(c, [a, b], [1, 2])).start()
    done, not_done = cf.wait([a, b], timeout=5)
    assert done == {a, b} and not not_done and seen == [1]
    b.add_done_callback(lambda f: seen.append(f.result()))  # already done: runs at once
    assert seen == [1, 2]
    x, y = _fut(c), _fut(c)
    threading.Timer(0.02, lambda: complete_all(c, [y, x], [20, 10])).start()
    pair: list[cf.Future[int]] = [x, y]
    assert sorted(f.result() for f in cf.as_completed(pair, timeout=5)) == [10, 20]

    z = _fut(c)

    async def main() -> int:
        threading.Timer(0.02, lambda: complete_all(c, [z], [5])).start()
        return await asyncio.wrap_future(z)

    assert asyncio.run(main()) == 5


def test_future_is_settled_only_by_the_wal_and_all_succeeded_skips_nothing_it_must_do() -> None:
    c = new_condition()
    f, g, h = _fut(c), _fut(c), _fut(c)
    assert f._condition is c and g._condition is c
    with pytest.raises(cf.InvalidStateError):
        f.set_result(1)
    with pytest.raises(cf.InvalidStateError):
        f.set_exception(ValueError("x"))
    seen: list[int] = []
    g.add_done_callback(lambda fut: seen.append(fut.result()))  # a callback and a waiter share one slot
    waiter = threading.Thread(target=lambda: seen.append(100 + h.result(5)))
    waiter.start()
    time.sleep(0.02)
    outs = AllSucceeded([1, 2, 3])
    threading.Timer(0.01, lambda: complete_all(c, [f, g, h], outs)).start()
    done, _ = cf.wait([f, g, h], timeout=5)
    waiter.join(5)
    assert done == {f, g, h} and f.result() == 1 and sorted(seen) == [2, 103]
    assert "state=finished returned int" in repr(f)


def test_appended_futures_build_their_results_when_read() -> None:
    """A batch that all succeeded settles its futures with the fields of each result (``Appended``); the
    AppendResult is built on the first read, the same object afterwards, equal to what the eager path builds."""
    from wal.message import TxnContext

    c = new_condition()
    futs = [_fut(c) for _ in range(4)]
    msgs = [m(i) for i in range(4)]
    for i, x in enumerate(msgs):
        x.time_tick = 100 + i
    msgs[1].last_confirmed_message_id = ID(1)
    msgs[2].txn_ctx = TxnContext(7, 5.0)
    ids = [ID(10 + i) for i in range(4)]
    seen: list[AppendResult] = []
    futs[3].add_done_callback(lambda f: seen.append(f.result()))
    waiter = threading.Thread(target=lambda: seen.append(futs[0].result(5)))
    waiter.start()
    time.sleep(0.02)
    deferred: list[AppendFuture[object]] = []
    complete_appended(c, futs, Appended(ids, msgs), deferred)
    waiter.join(5)
    assert deferred == [futs[3]] and len(seen) == 1  # the callback is left to the caller, as complete_all does
    for f in deferred:
        f._invoke_callbacks()  # type: ignore[attr-defined]
    want = [
        AppendResult(ids[0], 100, ids[0], None, None),
        AppendResult(ids[1], 101, ID(1), None, None),
        AppendResult(ids[2], 102, ids[2], msgs[2].txn_ctx, None),
        AppendResult(ids[3], 103, ids[3], None, None),
    ]
    got = [f.result() for f in futs]
    assert got == want and all(type(r) is AppendResult for r in got)
    assert all(f.result() is r for f, r in zip(futs, got, strict=True))  # built once
    assert seen == [want[0], want[3]]
    assert all(f.exception() is None and f.done() and not f.cancelled() for f in futs)
    assert "state=finished returned AppendResult" in repr(_settled_lazily(c))

    z = _fut(c)

    async def main() -> object:
        threading.Timer(0.02, lambda: complete_appended(c, [z], Appended([ID(3)], [m(3)]))).start()
        return await asyncio.wrap_future(z)

    r = asyncio.run(main())
    assert type(r) is AppendResult and r.message_id == ID(3) and r.last_confirmed_message_id == ID(3)


def _settled_lazily(c: threading.Condition) -> AppendFuture[object]:
    f = _fut(c)
    complete_appended(c, [f], Appended([ID(1)], [m(1)]))
    return f


def test_pipelined_results_are_built_on_read_and_match_the_log(full_wal: object) -> None:
    """Through a WAL: every append_async result (built on read) names the message as the log holds it."""
    from wal import ReadOption

    w = full_wal
    futs = [w.append_async(m(i)) for i in range(2500)]  # type: ignore[attr-defined]
    rs = [f.result(10) for f in futs]
    assert all(type(r) is AppendResult and r.txn_ctx is None and r.extra is None for r in rs)
    assert all(f.result() is r for f, r in zip(futs, rs, strict=True))
    by_id = {}
    with w.read(ReadOption()) as s:  # type: ignore[attr-defined]
        while len(by_id) < len(rs):
            x = s.recv(timeout=5)
            if x.message_type is MessageType.INSERT:
                by_id[x.message_id] = x
    for i, r in enumerate(rs):
        x = by_id[r.message_id]
        assert bytes(x.payload) == b"%d" % i and x.time_tick == r.time_tick
        assert r.last_confirmed_message_id == x.last_confirmed_message_id


def test_a_queued_future_never_holds_its_message() -> None:
    gate = threading.Event()

    def process(ms: Sequence[MutableMessage], units: Sequence[int] = ()) -> list[AppendResult | BaseException]:
        gate.wait(5)
        return [AppendResult(ID(int(x.payload))) for x in ms]

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", process, max_inflight=100, max_batch=64, ready=ready, period=10)
    msg = m(5)
    f = d.submit_one(msg)
    assert all(x is not msg for x in gc.get_referents(f))  # queued: the message waits beside it
    gate.set()
    assert f.result(5).message_id == ID(5)
    assert all(x is not msg for x in gc.get_referents(f))
    d.close()


# -- dispatcher: inline groups --------------------------------------------------------------------------------------
def test_group_runs_inline_when_idle_and_queued_when_busy() -> None:
    threads: list[str] = []
    gate = threading.Event()
    slow_running = threading.Event()

    def process(ms: Sequence[MutableMessage], units: Sequence[int] = ()) -> list[AppendResult | BaseException]:
        threads.append(threading.current_thread().name)
        if ms[0].payload == b"slow":
            slow_running.set()
            gate.wait(5)
        return [AppendResult(ID(int(x.payload) if x.payload != b"slow" else 0)) for x in ms]

    ready = threading.Event()
    ready.set()
    d = AppendDispatcher("t", process, max_inflight=100, max_batch=64, ready=ready, period=10)
    try:
        got = d.run_group([m(1), m(2)])
        assert [r.message_id for r in got] == [ID(1), ID(2)]
        assert threads == [threading.current_thread().name]  # no hop to the append thread
        slow = MutableMessage(MessageType.INSERT, b"slow")
        t = threading.Thread(target=lambda: d.run_group([slow]), name="slow-caller")
        t.start()
        # An event, not a sleep: a slow-caller thread that a busy machine started late let m(3) through first.
        assert slow_running.wait(10)
        queued = d.submit_one(m(3))  # arrives while the inline batch runs: the append thread takes it after
        g: list[list[AppendResult]] = []
        tg = threading.Thread(target=lambda: g.append(d.run_group([m(4)], timeout=5)))  # timeout: always queued
        tg.start()
        time.sleep(0.05)
        gate.set()
        tg.join(5)
        assert queued.result(5).message_id == ID(3) and g[0][0].message_id == ID(4)
        t.join(5)
        assert threads[1] == "slow-caller" and all(n.startswith("wal-append-") for n in threads[2:])
    finally:
        d.close()


# -- ticks ------------------------------------------------------------------------------------------------------
def test_allocate_many_is_consecutive_and_above_everything_before() -> None:
    c = HybridClock(0, now_ms=lambda: 1000)
    a = c.allocate()
    first = c.allocate_many(5)
    assert first == a + 1
    assert c.allocate() == first + 5
    assert c.last_time_tick == first + 5


@pytest.fixture
def full_wal(tmp_path: object) -> Iterator[object]:
    opener = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, sync="never")
    try:
        w = opener.open(OpenOption(channel=PChannelInfo("fast", 1)))
        try:
            yield w
        finally:
            w.close()
    finally:
        opener.close()


def test_pipelined_appends_keep_call_order_and_strict_ticks(full_wal: object) -> None:
    w = full_wal
    futs = [w.append_async(m(i, f"v{i % 3}")) for i in range(3000)]  # type: ignore[attr-defined]
    rs = [f.result(10) for f in futs]
    ticks = [r.time_tick for r in rs]
    ids = [r.message_id for r in rs]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(r.last_confirmed_message_id <= r.message_id for r in rs)
    r = w.append(m(5000))  # type: ignore[attr-defined]
    assert r.time_tick > ticks[-1] and r.message_id > ids[-1]
    for v in ("v0", "v1", "v2"):  # the MVCC view saw each vchannel's newest write of the batch path
        newest = max(t for i, t in enumerate(ticks) if f"v{i % 3}" == v)
        assert w.get_latest_mvcc_timestamp(v) >= newest  # type: ignore[attr-defined]


def test_concurrent_sync_and_async_appenders_each_keep_their_order(full_wal: object) -> None:
    w = full_wal
    per: dict[int, list[AppendResult]] = {}

    def worker(k: int) -> None:
        out: list[AppendResult] = []
        for i in range(200):
            if k % 2:
                out.append(w.append(m(i)))  # type: ignore[attr-defined]
            else:
                out.append(w.append_async(m(i)).result(10))  # type: ignore[attr-defined]
        per[k] = out

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(per) == 6
    every = [r.time_tick for out in per.values() for r in out]
    assert len(set(every)) == len(every)
    for out in per.values():
        assert [r.time_tick for r in out] == sorted(r.time_tick for r in out)


# -- write-ahead buffer checks ------------------------------------------------------------------------------------
def _imm(tt: int, mtype: MessageType = MessageType.INSERT) -> object:
    x = MutableMessage(mtype, b"p")
    x.with_time_tick(tt)
    if mtype is MessageType.TIME_TICK:
        x.with_last_confirmed_use_message_id()
    return x.into_immutable(ID(tt))


def test_wab_rejects_messages_outside_the_tick_range_or_out_of_order() -> None:
    wab = WriteAheadBuffer("t", 1 << 20, 60.0, _imm(10, MessageType.TIME_TICK))  # type: ignore[arg-type]
    tick = _imm(20, MessageType.TIME_TICK)
    for bad in ([_imm(5)], [_imm(12), _imm(25)], [_imm(15), _imm(12), _imm(18)]):
        with pytest.raises(WALError):
            wab.append(bad, tick)  # type: ignore[arg-type]
        assert len(wab) == 1  # unchanged
    wab.append([_imm(12), _imm(15)], tick)  # type: ignore[list-item, arg-type]
    assert len(wab) == 4
    assert wab.size == 4 * (1 + ENTRY_OVERHEAD)  # four 1-byte payloads, no properties: sizes from the cheap path


def test_same_message_object_twice_in_one_batch_gets_two_ticks() -> None:
    """Stamping is in place; one object appended twice in one group must still get two distinct, increasing ticks,
    and the WAL must keep working afterwards."""
    from wal import OpenOption, PChannelInfo, ReadOption, registry
    from wal.message import MessageType, MutableMessage

    op = registry.must_get_builder("memory").build()
    try:
        w = op.open(OpenOption(PChannelInfo("dup", 1)))
        m = MutableMessage(MessageType.INSERT, b"same", vchannel="v1")
        rs = w.append_messages([m, m, m])
        assert rs[0].time_tick < rs[1].time_tick < rs[2].time_tick
        futs = [w.append_async(m) for _ in range(50)]
        ticks = [f.result(timeout=10).time_tick for f in futs]
        assert ticks == sorted(set(ticks))
        after = w.append(MutableMessage(MessageType.INSERT, b"after", vchannel="v1"))
        with w.read(ReadOption()) as s:
            got = []
            while len(got) < 54:
                x = s.recv(timeout=5)
                if x.message_type is MessageType.INSERT:
                    got.append(x)
        assert [bytes(x.payload) for x in got] == [b"same"] * 53 + [b"after"]
        assert got[-1].message_id == after.message_id
    finally:
        op.close()


# -- counters published per tick, not per append ----------------------------------------------------------------------
def test_append_metrics_are_published_by_the_periodic_tick_while_open() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from wal._metrics import metrics

    if not metrics.enabled:
        pytest.skip("metrics are off (WAL_METRICS=0)")

    def val() -> float:
        return prometheus_client.REGISTRY.get_sample_value("wal_appends_total") or 0.0

    op = registry.must_get_builder("memory").build(time_tick_interval=0.02)
    try:
        w = op.open(OpenOption(PChannelInfo("metrics-tick", 1)))
        before = val()
        w.append(m(1))
        w.append_messages([m(2), m(3)])
        w.append_async(m(4)).result(5)
        deadline = time.monotonic() + 3
        while val() - before < 4 and time.monotonic() < deadline:  # the WAL stays open: the tick publishes them
            time.sleep(0.01)
        assert val() - before >= 4  # (>=: another WAL of this process may publish too)
    finally:
        op.close()


def test_a_refused_message_does_not_fail_the_appends_batched_with_it(tmp_path: Path) -> None:
    """Concurrent appends share one backend batch; a message the backend refuses (too large) must fail alone,
    never the valid messages of other callers in the same batch."""
    import threading

    from wal import OpenOption, PChannelInfo
    from wal.errors import InvalidArgumentError
    from wal.message import MessageType, MutableMessage
    from wal.registry import must_get_builder

    op = must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, max_message_bytes=4096,
                                     time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p", 1)))
    wrong: list[BaseException] = []
    ok = [0]
    stop = threading.Event()

    def good(k: int) -> None:
        while not stop.is_set():
            try:
                w.append(MutableMessage(MessageType.INSERT, b"ok-%d" % k, vchannel="v"))
                ok[0] += 1
            except BaseException as e:
                wrong.append(e)

    refused = [0]

    def bad() -> None:
        for _ in range(200):
            try:
                w.append(MutableMessage(MessageType.INSERT, b"x" * 10_000, vchannel="v"))
            except InvalidArgumentError:
                refused[0] += 1

    ts = [threading.Thread(target=good, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    b = threading.Thread(target=bad)
    b.start()
    b.join(60)
    stop.set()
    for t in ts:
        t.join(30)
    w.close()
    op.close()
    assert refused[0] == 200, "every oversized message is refused"
    assert not wrong, f"{len(wrong)} valid appends failed with another caller's error, e.g. {wrong[0]!r}"
    assert ok[0] > 0


def test_a_group_with_a_refused_message_stores_none_of_it(tmp_path: Path) -> None:
    """``append_messages`` raises the first error of its group and returns no result: had the rest of the group
    been stored, the caller could not know it, and a retry would store it twice. A group with a message the
    backend refuses is therefore written whole or not at all, alone and when batched with other callers' groups
    (which must still be stored whole)."""
    import threading

    from wal import OpenOption, PChannelInfo, ReadOption
    from wal.errors import InvalidArgumentError
    from wal.message import MessageType, MutableMessage
    from wal.registry import must_get_builder

    op = must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, max_message_bytes=4096,
                                     time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p", 1)))

    def m(p: bytes) -> MutableMessage:
        return MutableMessage(MessageType.INSERT, p, vchannel="v")

    with pytest.raises(InvalidArgumentError, match="max_message_bytes"):
        w.append_messages([m(b"alone-1"), m(b"x" * 10_000), m(b"alone-2")])
    stored_ok: list[bytes] = []
    wrong: list[BaseException] = []
    refused = [0]

    def good(k: int) -> None:
        for n in range(150):
            group = [m(b"good-%d-%d-%d" % (k, n, j)) for j in range(3)]
            try:
                rs = w.append_messages(group)
                assert len(rs) == 3
                stored_ok.extend(g.payload for g in group)
            except BaseException as e:
                wrong.append(e)

    def bad() -> None:
        for n in range(150):
            try:
                w.append_messages([m(b"bad-%d-a" % n), m(b"x" * 10_000), m(b"bad-%d-b" % n)])
            except InvalidArgumentError:
                refused[0] += 1

    ts = [threading.Thread(target=good, args=(k,)) for k in range(3)] + [threading.Thread(target=bad)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    w.append(m(b"end"))
    s = w.read(ReadOption())
    got: list[bytes] = []
    while (p := bytes((x := s.recv(10)).payload)) != b"end":
        if x.message_type is MessageType.INSERT:
            got.append(p)
    s.close()
    w.close()
    op.close()
    assert not wrong, wrong[:3]
    assert refused[0] == 150
    leaked = [p for p in got if p.startswith((b"alone", b"bad"))]
    assert not leaked, f"{len(leaked)} messages of refused groups were stored, e.g. {leaked[:3]}"
    assert sorted(got) == sorted(stored_ok)


@pytest.mark.parametrize("timeout", [None, 5.0])  # run inline by the caller; queued for the append thread
def test_a_group_the_txn_rules_refuse_in_part_reports_each_outcome(timeout: float | None) -> None:
    """The transaction rules refuse a message alone (here a body of a txn the WAL does not know), and what the
    group holds besides is stored: append_messages raised only the refusal, so the caller could not tell what was
    stored and a retry duplicated it. It raises PartialAppendError with every message's outcome."""
    from wal import OpenOption, PChannelInfo, ReadOption
    from wal.errors import PartialAppendError, TxnExpiredError
    from wal.message import MessageType, MutableMessage, TxnContext
    from wal.registry import must_get_builder

    op = must_get_builder("memory").build(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("p", 1)))
    orphan = MutableMessage(MessageType.INSERT, b"orphan", txn_ctx=TxnContext(123456789, 1.0))
    group = [MutableMessage(MessageType.INSERT, b"a"), orphan, MutableMessage(MessageType.INSERT, b"b")]
    with pytest.raises(PartialAppendError) as err:
        w.append_messages(group, timeout=timeout)
    results = err.value.results
    assert isinstance(err.value.__cause__, TxnExpiredError) and results[1] is err.value.__cause__
    stored = {r.message_id for r in (results[0], results[2])}  # type: ignore[union-attr]
    end = w.append(MutableMessage(MessageType.INSERT, b"end")).message_id
    s = w.read(ReadOption())
    got = set()
    while (m := s.recv(10)).message_id != end:
        if m.message_type is MessageType.INSERT:
            got.add(m.message_id)
    assert got == stored
    with pytest.raises(TxnExpiredError):  # nothing of a group stored: its own error, as before
        w.append_messages([orphan], timeout=timeout)
    w.close()
    op.close()
