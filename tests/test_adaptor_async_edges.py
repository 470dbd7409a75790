"""Scanners and futures at their asyncio and multi-thread edges: cancelled ``async for``, ``recv(timeout)`` while
another thread pulls, ``recv`` after ``close``, done callbacks that wait, append or raise ``SystemExit``."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.adaptor._future import AppendFuture
from wal.errors import ShutdownError, WALError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy


def ins(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i, {"i": str(i)}, vchannel="v1")


def _data(m: Any) -> bool:
    return m.message_type is MessageType.INSERT


@pytest.fixture(params=["memory", "localfs"])
def wal_pair(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[Any, Any]]:
    b = registry.must_get_builder(request.param)
    if request.param == "localfs":
        op = b.build(root=str(tmp_path), segment_bytes=1 << 20, time_tick_interval=0.02)
    else:
        op = b.build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    yield op, w
    op.close()


def test_a_cancelled_async_for_loses_no_message(wal_pair: tuple[Any, Any]) -> None:
    """``asyncio.wait_for`` around each step: the worker thread used to pop a message for a step already
    cancelled, and it was gone (1-13 of 100 delivered)."""
    _op, w = wal_pair
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    n = 60

    async def producer() -> None:
        for i in range(n):
            await asyncio.to_thread(w.append, ins(i))
            await asyncio.sleep(0.003)

    async def consumer() -> list[str]:
        got: list[str] = []
        it = s.__aiter__()
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            try:
                m = await asyncio.wait_for(it.__anext__(), 0.002)
            except TimeoutError:
                continue  # the step was cancelled: the next one must still get every message
            if _data(m):
                got.append(m.properties["i"])
        return got

    async def main() -> list[str]:
        got, _ = await asyncio.gather(consumer(), producer())
        return got

    assert asyncio.run(main()) == [str(i) for i in range(n)]
    s.close()


def test_a_cancelled_task_then_a_new_async_for_on_the_same_scanner(wal_pair: tuple[Any, Any]) -> None:
    _op, w = wal_pair
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))

    async def consume(out: list[str]) -> None:
        async for m in s:
            if _data(m):
                out.append(m.properties["i"])

    async def main() -> list[str]:
        got: list[str] = []
        t = asyncio.create_task(consume(got))
        await asyncio.to_thread(w.append, ins(0))
        await asyncio.sleep(0.3)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.to_thread(w.append, ins(1))  # acknowledged after the cancellation
        t = asyncio.create_task(consume(got))
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        t.cancel()
        return got

    assert asyncio.run(main()) == ["0", "1"]
    s.close()


def test_async_for_uses_its_own_thread_not_the_loops_default_executor(wal_pair: tuple[Any, Any]) -> None:
    """Idle ``async for`` loops used to hold the default executor's workers: ``to_thread`` then waited ~150 ms."""
    op, _w = wal_pair
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))  # quiet: a waiting recv takes its whole 0.2 s
    loop_default_workers = min(32, (os.cpu_count() or 1) + 4)
    scanners = [ro.read(ReadOption(deliver_policy=DeliverPolicy.latest())) for _ in range(loop_default_workers + 2)]

    async def idle(s: Any) -> None:
        async for _m in s:
            pass

    async def main() -> float:
        tasks = [asyncio.create_task(idle(s)) for s in scanners]
        await asyncio.sleep(0.3)
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            await asyncio.to_thread(lambda: None)
            worst = max(worst, time.monotonic() - t0)
        for s in scanners:
            s.close()
        await asyncio.gather(*tasks)
        return worst

    assert asyncio.run(main()) < 0.1  # not waiting for a scanner's 0.2 s recv to give its worker back


def test_recv_timeout_holds_while_another_thread_is_blocked_in_recv(wal_pair: tuple[Any, Any]) -> None:
    """A read-only WAL's recv(0.05) used to wait for ever behind another thread's recv(None)."""
    op, w = wal_pair
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    for on in (w, ro):
        s = on.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
        ended: list[BaseException] = []

        def block(s: Any = s, ended: list[BaseException] = ended) -> None:
            try:
                while True:
                    s.recv(None)  # ticks on the RW WAL: keep pulling
            except BaseException as e:
                ended.append(e)

        blocked = threading.Thread(target=block, daemon=True)
        blocked.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            while True:  # ticks may come on the RW WAL: only the time to the timeout matters
                s.recv(0.05)
        assert time.monotonic() - t0 < 2.0
        s.close()
        blocked.join(5)
        assert not blocked.is_alive() and isinstance(ended[0], ShutdownError)


def test_recv_after_close_raises_instead_of_serving_what_was_released(wal_pair: tuple[Any, Any]) -> None:
    _op, w = wal_pair
    w.append_messages([ins(i) for i in range(200)])
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    assert _data(next(m for m in iter(lambda: s.recv(5), None) if _data(m)))  # a batch is released now
    s.close()
    with pytest.raises(ShutdownError):
        s.recv(1)
    served = 0
    for _m in s:
        served += 1
    assert served == 0


def test_iteration_stops_at_close_inside_the_loop(wal_pair: tuple[Any, Any]) -> None:
    _op, w = wal_pair
    w.append_messages([ins(i) for i in range(200)])
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    after = 0
    for m in s:
        if s.done().is_set():
            after += 1
        if _data(m):
            s.close()
    assert after == 0


def test_a_done_callback_in_the_append_thread_refuses_to_wait_for_itself() -> None:
    """Callbacks run in the WAL's append thread, which alone would run the awaited append: ``result()`` there
    used to wait for ever (or its whole timeout, stalling every producer). Forced into that thread: a producer in
    an asyncio loop's thread never runs batches inline."""
    op = registry.must_get_builder("memory").build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    out: list[Any] = []
    done = threading.Event()

    def cb(_f: Any) -> None:
        t0 = time.monotonic()
        try:
            w.append_async(ins(2)).result(timeout=5)
            out.append(None)
        except WALError as e:
            out.append(e)
        out.append((threading.current_thread().name, time.monotonic() - t0))
        done.set()

    async def submit() -> None:  # in a loop thread: the batch runs in the WAL's append thread
        w.append_async(ins(1)).add_done_callback(cb)

    asyncio.run(submit())
    assert done.wait(10)
    assert out[1][0].startswith("wal-append")
    assert isinstance(out[0], WALError) and "would wait for itself" in str(out[0])
    assert out[1][1] < 1.0  # refused at once, not after the timeout
    t0 = time.monotonic()
    w.append(ins(3))
    assert time.monotonic() - t0 < 2.0  # producers are not stalled
    op.close()


def test_a_done_callback_appending_with_a_timeout_runs_inline_in_the_append_thread() -> None:
    """``append(m, timeout=1)`` from a callback used to be queued behind its own thread: a timeout every time."""
    op = registry.must_get_builder("memory").build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    out: list[Any] = []
    done = threading.Event()

    def cb(_f: Any) -> None:
        try:
            out.append(w.append(ins(2), timeout=1.0))
        except BaseException as e:
            out.append(e)
        out.append(threading.current_thread().name)
        done.set()

    async def submit() -> None:
        w.append_async(ins(1)).add_done_callback(cb)

    asyncio.run(submit())
    assert done.wait(10)
    assert out[1].startswith("wal-append")
    assert out[0].message_id is not None
    op.close()


def test_a_callback_raising_system_exit_does_not_skip_the_others_nor_stop_the_wal() -> None:
    op = registry.must_get_builder("memory").build(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ran: list[int] = []

    def bad(_f: Any) -> None:
        raise SystemExit(3)

    async def main() -> list[Any]:
        futs = [w.append_async(ins(i)) for i in range(6)]  # in a loop thread: settled in the append thread
        futs[0].add_done_callback(bad)
        for i, f in enumerate(futs[1:], 1):
            f.add_done_callback(lambda _f, i=i: ran.append(i))
        return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futs)), 5)

    results = asyncio.run(main())
    assert len(results) == 6
    assert sorted(ran) == [1, 2, 3, 4, 5]
    assert w.is_available()
    assert w.append(ins(9)).message_id is not None
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_closing_the_wal_from_a_callback_stores_what_it_had_accepted(backend: str, tmp_path: Any) -> None:
    """A close from any other thread drains the accepted appends; one from a callback in the append thread used
    to fail them (about 2,000 of 5,000 with ShutdownError)."""
    b = registry.must_get_builder(backend)
    op = b.build(root=str(tmp_path), segment_bytes=1 << 20) if backend == "localfs" else b.build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    closed_in: list[str] = []

    def close_it(_f: Any) -> None:
        closed_in.append(threading.current_thread().name)
        w.close()

    async def submit() -> list[Any]:  # in a loop thread: batches, and so callbacks, run in the append thread
        futs = [w.append_async(ins(0))]
        futs[0].add_done_callback(close_it)
        futs += [w.append_async(ins(i)) for i in range(1, 3000)]
        return futs

    futs = asyncio.run(submit())
    outcomes = [f.exception(10) for f in futs]
    assert closed_in and closed_in[0].startswith("wal-append")
    accepted = [e for f, e in zip(futs, outcomes, strict=True) if isinstance(f, AppendFuture)]  # else refused
    assert len(accepted) > 1 and not [e for e in accepted if e is not None]
    op2 = b.build(root=str(tmp_path), segment_bytes=1 << 20) if backend == "localfs" else op
    w2 = op2.open(OpenOption(PChannelInfo("p1", 2)))
    stored = 0
    s = w2.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    while True:
        m = s.recv(5)
        if m.not_persisted:
            break
        stored += _data(m)
    assert stored == len(accepted)
    op2.close()
    op.close()


def test_a_step_cancelled_at_its_periodic_yield_loses_nothing() -> None:
    """``async for`` yields to the loop every 256 released messages; it used to pop the message first, so a step
    cancelled in that yield lost it (every 256th message)."""
    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    n = 1500
    w.append_messages([ins(i) for i in range(n)])

    async def main() -> list[int]:
        s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
        it = s.__aiter__()
        got: list[int] = []
        cancelled = 0
        while len(got) < n and cancelled < 2000:
            t = asyncio.ensure_future(it.__anext__())
            await asyncio.sleep(0)  # the step runs until it first suspends
            if not t.done():
                t.cancel()  # as asyncio.wait_for or a task group would cancel a slow step
            try:
                m = await t
            except asyncio.CancelledError:
                cancelled += 1
                continue
            if _data(m):
                got.append(int(m.properties["i"]))
        s.close()
        assert cancelled >= n // 256  # the yields were hit
        return got

    assert asyncio.run(main()) == list(range(n))
    op.close()
