"""Write-ahead buffer and its queue (milvus-tests §H). Time is injected where the test is about age."""

from __future__ import annotations

import random
import threading
import time

import pytest
from _utility_msgs import FakeClock, data, tick

from wal.errors import InvalidArgumentError, ShutdownError, WALTimeoutError
from wal.message import ImmutableMessage, MessageType
from wal.utility import EvictedError, TimeTickViolationError, WABQueue, WABSnapshot, WriteAheadBuffer

MiB = 1 << 20


def tts(s: WABSnapshot | None) -> list[int]:
    assert s is not None
    return [m.time_tick for m in s.to_list()]


# -- H.1 queue -------------------------------------------------------------------------------------------------


def test_wab_queue_snapshots_and_size_eviction() -> None:
    q = WABQueue(100, 5.0, tick(99), entry_overhead=0)  # payload bytes only, to count them here
    assert tts(q.snapshot_from_offset(0)) == [99]
    assert q.snapshot_from_exclusive_time_tick(100) is None

    q.push([data(100, 10), data(101, 20), data(103, 30), data(104, 40)])
    q.evict()
    assert q.current_offset == 4
    assert len(q) == 5

    assert tts(q.snapshot_from_exclusive_time_tick(100)) == [101, 103, 104]
    with pytest.raises(EvictedError):
        q.snapshot_from_exclusive_time_tick(98)
    assert tts(q.snapshot_from_exclusive_time_tick(102)) == [103, 104]
    assert q.snapshot_from_exclusive_time_tick(104) is None
    assert q.snapshot_from_exclusive_time_tick(105) is None

    assert tts(q.snapshot_from_offset(1)) == [100, 101, 103, 104]
    assert tts(q.snapshot_from_offset(3)) == [103, 104]
    assert tts(q.snapshot_from_offset(4)) == [104]
    assert q.snapshot_from_offset(5) is None
    with pytest.raises(InvalidArgumentError):
        q.snapshot_from_offset(6)

    s = q.snapshot_from_offset(1)
    q.push([data(105, 60)])
    q.evict()
    assert q.current_offset == 5
    assert len(q) == 2
    assert q.size == 100
    assert tts(s) == [100, 101, 103, 104]  # a snapshot survives eviction
    with pytest.raises(EvictedError):
        q.snapshot_from_offset(3)
    assert tts(q.snapshot_from_offset(4)) == [104, 105]


def test_wab_queue_time_eviction_keeps_last() -> None:
    clock = FakeClock()
    q = WABQueue(100, 0.010, tick(99), now=clock, entry_overhead=0)
    q.push([data(100, 10)])
    q.evict()
    assert q.current_offset == 1
    assert len(q) == 2
    clock.t += 0.020
    q.evict()
    assert len(q) == 1
    assert tts(q.snapshot_from_offset(1)) == [100]
    with pytest.raises(TimeTickViolationError):
        q.push([data(99, 10)])
    with pytest.raises(TimeTickViolationError):
        q.push([data(100, 10)])  # data must be strictly above the last tick
    q.push([tick(100)])  # a tick may repeat it
    assert q.current_offset == 2


def test_wab_queue_compaction_keeps_offsets_and_snapshots() -> None:
    q = WABQueue(50, 60.0, tick(0), entry_overhead=0)
    early = q.snapshot_from_offset(0)
    for tt in range(1, 1001):
        q.push([data(tt, 10)])
        q.evict()
    assert q.current_offset == 1000
    assert len(q) == 5
    assert q.head_offset == 996
    assert tts(q.snapshot_from_offset(996)) == [996, 997, 998, 999, 1000]
    assert tts(q.snapshot_from_exclusive_time_tick(997)) == [998, 999, 1000]
    with pytest.raises(EvictedError):
        q.snapshot_from_offset(995)
    assert tts(early) == [0]


# -- H.2 only idle ticks ---------------------------------------------------------------------------------------


def test_wab_only_idle_ticks() -> None:
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(0))
    with pytest.raises(WALTimeoutError):
        wab.read_from_exclusive_time_tick(100, timeout=0.001)

    got: list[int] = []
    errors: list[BaseException] = []
    started = threading.Event()

    def reader() -> None:
        try:
            started.set()
            r = wab.read_from_exclusive_time_tick(100, timeout=10)
            last = 100
            while last <= 10000:
                m = r.next(timeout=10)
                assert m.message_type is MessageType.TIME_TICK
                assert m.time_tick > last
                last = m.time_tick
                got.append(last)
            with pytest.raises(WALTimeoutError):
                r.next(timeout=0.005)
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=reader)
    th.start()
    started.wait()
    wab.append([], tick(100, persisted=False))
    time.sleep(0.005)
    assert not got  # exclusive: tick 100 is not after 100
    tt = 100
    rng = random.Random(1)
    while tt <= 10000:
        tt += rng.randint(1, 1000)
        wab.append([], tick(tt, persisted=False))
    th.join(10)
    assert not th.is_alive()
    assert not errors, errors
    assert got
    assert got[-1] == tt

    r = wab.read_from_exclusive_time_tick(0)
    m = r.next(timeout=1)
    assert m.message_type is MessageType.TIME_TICK
    assert m.time_tick == tt
    assert wab.last_time_tick == tt


# -- H.3 concurrent appends ------------------------------------------------------------------------------------


def test_wab_concurrent_appends() -> None:
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(1))
    rng = random.Random(5)
    total = 0
    batches: list[tuple[list[ImmutableMessage], ImmutableMessage]] = []
    tt = 100
    while tt <= 10000:
        msgs = []
        for _ in range(rng.randint(1, 10)):
            tt += rng.randint(1, 100)
            msgs.append(data(tt, 8))
        batches.append((msgs, tick(tt)))
        total += len(msgs) + 1
    last_tt = tt

    def writer() -> None:
        for msgs, t in batches:
            wab.append(msgs, t)
            time.sleep(0)

    w = threading.Thread(target=writer)
    r1 = wab.read_from_exclusive_time_tick(1, timeout=5)
    w.start()
    recorded: list[int] = []
    prev = 1
    while True:
        m = r1.next(timeout=5)
        if m.message_type is MessageType.TIME_TICK:
            assert m.time_tick >= prev
        else:
            assert m.time_tick > prev
        prev = m.time_tick
        recorded.append(m.time_tick)
        if m.time_tick >= last_tt and m.message_type is MessageType.TIME_TICK:
            break
    w.join(5)
    assert len(recorded) == total

    idx = len(recorded) // 2
    while recorded[idx + 1] == recorded[idx]:
        idx += 1
    r2 = wab.read_from_exclusive_time_tick(recorded[idx], timeout=1)
    rest = [r2.next(timeout=1).time_tick for _ in range(len(recorded) - idx - 1)]
    assert rest == recorded[idx + 1 :]

    with pytest.raises(EvictedError):
        wab.read_from_exclusive_time_tick(0)
    for r in (r1, r2):
        with pytest.raises(WALTimeoutError):
            r.next(timeout=0.02)
    wab.append([], tick(last_tt + 1, persisted=False))
    for r in (r1, r2):
        m = r.next(timeout=1)
        assert m.message_type is MessageType.TIME_TICK
        assert m.time_tick == last_tt + 1


def test_wab_next_batch_returns_the_snapshot() -> None:
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(1))
    wab.append([data(t) for t in range(2, 12)], tick(11))
    r = wab.read_from_exclusive_time_tick(1)
    assert [m.time_tick for m in r.next_batch(4)] == [2, 3, 4, 5]
    assert [m.time_tick for m in r.next_batch(100)] == [*range(6, 12), 11]
    with pytest.raises(WALTimeoutError):
        r.next_batch(100, timeout=0.001)
    wab.append([data(12)], tick(13))
    assert [m.time_tick for m in r.next_batch(100, timeout=1)] == [12, 13]


# -- H.4 eviction ----------------------------------------------------------------------------------------------


def test_wab_eviction_reader_finishes_snapshot_then_fails() -> None:
    clock = FakeClock()
    wab = WriteAheadBuffer("p", 5 * MiB, 0.050, tick(0), now=clock)
    wab.append([data(t, 8) for t in range(1, 100)], tick(99))
    r = wab.read_from_exclusive_time_tick(0)
    assert r.next().time_tick == 1
    wab.append([data(t, 8) for t in range(100, 200)], tick(199))
    clock.t += 0.060
    wab.append([], tick(200, persisted=False))
    assert len(wab) == 1
    last = 1
    with pytest.raises(EvictedError):
        while True:
            last = r.next(timeout=1).time_tick
    assert last == 99


# -- rules and lifecycle ---------------------------------------------------------------------------------------


def test_wab_append_rules() -> None:
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(10))
    with pytest.raises(InvalidArgumentError):
        wab.append([], tick(10))  # the tick must advance
    with pytest.raises(InvalidArgumentError):
        wab.append([], data(11))  # must be a TIME_TICK
    with pytest.raises(InvalidArgumentError):
        wab.append([data(10)], tick(12))  # messages in (last, tick]
    with pytest.raises(InvalidArgumentError):
        wab.append([data(13)], tick(12))
    wab.append([data(11), data(12)], tick(12, persisted=False))
    assert wab.last_time_tick == 12
    assert len(wab) == 3  # the not-persisted tick is not stored
    r = wab.read_from_exclusive_time_tick(10)
    assert [r.next().time_tick for _ in range(2)] == [11, 12]
    # Nothing stored after 12; the newest tick is 12 too, so the reader waits.
    with pytest.raises(WALTimeoutError):
        r.next(timeout=0.001)
    r12 = wab.read_from_exclusive_time_tick(12)  # queue's last tt equals 12: empty reader at the next offset
    wab.append([data(14)], tick(15))
    assert [r12.next(timeout=1).time_tick for _ in range(2)] == [14, 15]


def test_wab_close_wakes_readers() -> None:
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(1))
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            wab.read_from_exclusive_time_tick(5)
        except BaseException as e:
            errors.append(e)

    wab.append([data(2)], tick(3))
    r = wab.read_from_exclusive_time_tick(1)
    th = threading.Thread(target=blocked)
    th.start()
    time.sleep(0.01)
    wab.close()
    th.join(3)
    assert not th.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], ShutdownError)
    with pytest.raises(ShutdownError):
        r.next()
    with pytest.raises(ShutdownError):
        wab.read_from_exclusive_time_tick(1)
    with pytest.raises(ShutdownError):
        wab.append([], tick(9))


# -- randomized model check ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_wab_readers_never_see_a_gap(seed: int) -> None:
    """Readers at random positions, random eviction: each gets a gap-free run of what was stored, then at most
    an EvictedError; served not-persisted ticks only ever move time forward."""
    rng = random.Random(seed)
    clock = FakeClock()
    wab = WriteAheadBuffer(
        "p", rng.choice([50, 200, 5 * MiB]), rng.choice([0.01, 1.0]), tick(1), now=clock, entry_overhead=0
    )
    stored: list[ImmutableMessage] = [wab.last_time_tick_message]
    readers: list[tuple[int, object, list[ImmutableMessage]]] = []
    tt = 1
    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            msgs = []
            for _ in range(rng.randint(0, 4)):
                tt += rng.randint(1, 3)
                msgs.append(data(tt, rng.randint(0, 20)))
            persisted = rng.random() < 0.6
            tt += rng.randint(0 if msgs else 1, 2)
            t = tick(tt, persisted)
            wab.append(msgs, t)
            wab._queue._check()
            stored.extend(msgs)
            if persisted:
                stored.append(t)
        elif action < 0.6:
            clock.t += rng.choice([0.0, 0.005, 0.02])
        elif action < 0.75:
            start = rng.randint(0, tt)
            try:
                r = wab.read_from_exclusive_time_tick(start, timeout=0)
            except EvictedError:
                assert start < stored[-1].time_tick  # below the oldest kept entry, which is stored
                continue
            except WALTimeoutError:
                assert start >= wab.last_time_tick
                continue
            readers.append((start, r, []))
        else:
            for _, r, out in readers:
                if out and out[-1] is None:
                    continue
                for _ in range(rng.randint(1, 10)):
                    try:
                        out.append(r.next(timeout=0))  # type: ignore[attr-defined]
                    except WALTimeoutError:
                        break
                    except EvictedError:
                        out.append(None)  # type: ignore[arg-type]
                        break
    assert readers
    for start, _, out in readers:
        got = [m for m in out if m is not None]
        real = [m for m in got if not m.not_persisted]
        k = next(i for i, m in enumerate(stored) if m.time_tick > start) if real else 0
        assert real == stored[k : k + len(real)]
        prev = start
        for m in got:
            assert m.time_tick >= prev
            if m.message_type is not MessageType.TIME_TICK or m.not_persisted:
                assert m.time_tick > prev
            prev = m.time_tick


def test_wab_queue_push_order_checked_within_a_batch() -> None:
    q = WABQueue(5 * MiB, 30.0, tick(10), FakeClock())
    with pytest.raises(TimeTickViolationError):
        q.push([data(11), data(13), data(12)])  # out of order inside the batch
    with pytest.raises(TimeTickViolationError):
        q.push([data(11), data(11)])  # a data message never repeats a tick
    assert len(q) == 1  # all or nothing
    q.push([data(11), tick(11), data(12)])  # a tick may repeat the last tick
    assert q.last_time_tick == 12 and len(q) == 4
    q._check()


def test_wab_blocked_reader_is_woken_by_append_after_other_readers_timed_out() -> None:
    """Appends notify only while a reader waits: a reader that timed out must not leave that count wrong."""
    wab = WriteAheadBuffer("p", 5 * MiB, 30.0, tick(10))
    early = wab.read_from_exclusive_time_tick(10)
    for _ in range(3):
        with pytest.raises(WALTimeoutError):
            early.next(timeout=0.01)
    got: list[int] = []

    def reader() -> None:
        got.append(wab.read_from_exclusive_time_tick(10).next(timeout=5).time_tick)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)  # let it block
    wab.append([data(11)], tick(12, persisted=False))
    t.join(3)
    assert not t.is_alive() and got == [11]


def test_wab_counts_each_message_not_only_its_payload() -> None:
    """The buffer counted payload (and property) bytes only, so messages with small or empty payloads were bounded
    by the keepalive alone: a buffer of 1 MiB held 200,000 empty messages (49 MB) through the full adaptor. Each
    message now counts :data:`ENTRY_OVERHEAD` bytes more."""
    cap = 64 * 1024
    q = WABQueue(cap, 3600.0, tick(0))
    for tt in range(1, 20_001):
        q.push([data(tt, 0)])
        q.evict()
    assert len(q) <= cap // 200  # 20,001 before
    assert q.size <= cap
