"""``WriteAheadBuffer.append_batch_tick``: the per-batch tick kept as two fields and its messages held back from
the queue until something reads. No reader may tell it from ``append`` with the same not-persisted tick.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from _utility_msgs import UID, data, tick

from wal.errors import InvalidArgumentError, ShutdownError, WALTimeoutError
from wal.message import ImmutableMessage, MessageType
from wal.utility import EvictedError, TimeTickViolationError, WriteAheadBuffer
from wal.utility._write_ahead_buffer import PENDING_MAX

MiB = 1 << 20


def batch_tick_of(tt: int, lc: int) -> ImmutableMessage:
    """What ``append_batch_tick(msgs, tt, UID(lc))`` stands for, as a message for ``append``."""
    return ImmutableMessage(
        message_id=UID(lc), message_type=MessageType.TIME_TICK, payload=b"", time_tick=tt,
        last_confirmed_message_id=UID(lc), not_persisted=True,
    )


def same(a: ImmutableMessage, b: ImmutableMessage) -> bool:
    return (a.message_type, a.time_tick, a.message_id, a.last_confirmed_message_id, a.not_persisted, a.payload) == (
        b.message_type, b.time_tick, b.message_id, b.last_confirmed_message_id, b.not_persisted, b.payload
    )


@pytest.mark.parametrize("seed", range(10))
def test_batch_tick_reads_exactly_like_append(seed: int) -> None:
    """Twin buffers, one fed by ``append`` only, the other by ``append_batch_tick`` for not-persisted ticks (and
    ``append`` for persisted ones): readers opened at random moments and positions read the same sequence from
    both, every message once and in tick order, whatever is still pending when they start."""
    rng = random.Random(seed)
    eager = WriteAheadBuffer("e", 64 * MiB, 3600.0, tick(1, mid=1))
    lazy = WriteAheadBuffer("l", 64 * MiB, 3600.0, eager.last_time_tick_message)
    readers: list[tuple[object, object, list[ImmutableMessage], list[ImmutableMessage]]] = []
    tt = 1
    for _ in range(400):
        action = rng.random()
        if action < 0.6:
            msgs = []
            for _ in range(rng.choice([0, 1, 1, 1, 2, 5, PENDING_MAX // 2, PENDING_MAX + 3])):
                tt += rng.randint(1, 3)
                msgs.append(data(tt, rng.randint(0, 20)))
            tt += rng.randint(0 if msgs else 1, 2)
            if rng.random() < 0.85:
                lc = rng.randint(1, 10**6)
                eager.append(msgs, batch_tick_of(tt, lc))
                lazy.append_batch_tick(msgs, tt, UID(lc))
            else:
                t = tick(tt)
                eager.append(msgs, t)
                lazy.append(msgs, t)
            assert lazy.last_time_tick == eager.last_time_tick == tt
        elif action < 0.7:
            start = rng.randint(1, tt)
            try:
                re = eager.read_from_exclusive_time_tick(start, timeout=0)
            except WALTimeoutError:
                with pytest.raises(WALTimeoutError):
                    lazy.read_from_exclusive_time_tick(start, timeout=0)
                continue
            readers.append((re, lazy.read_from_exclusive_time_tick(start, timeout=0), [], []))
        else:
            for re, rl, oute, outl in readers:
                n = rng.randint(1, 2 * PENDING_MAX)
                for r, out in ((re, oute), (rl, outl)):
                    for _ in range(n):
                        try:
                            out.append(r.next(timeout=0))  # type: ignore[attr-defined]
                        except WALTimeoutError:
                            break
        assert same(lazy.last_time_tick_message, eager.last_time_tick_message)
    assert readers
    for _, _, oute, outl in readers:
        assert len(oute) == len(outl) and all(same(a, b) for a, b in zip(oute, outl, strict=True))
        data_tts = [m.time_tick for m in outl if m.message_type is not MessageType.TIME_TICK]
        assert data_tts == sorted(set(data_tts))  # each message once, in tick order
    assert len(lazy) == len(eager) and lazy.size == eager.size
    lazy._queue._check()


def test_batch_tick_is_built_once_when_asked() -> None:
    wab = WriteAheadBuffer("p", MiB, 30.0, tick(10))
    wab.append_batch_tick([data(11)], 12, UID(7))
    assert wab._last_tick is None and wab._pending  # nothing built or queued yet
    t = wab.last_time_tick_message
    assert same(t, batch_tick_of(12, 7)) and wab.last_time_tick_message is t
    r = wab.read_from_exclusive_time_tick(10, timeout=0)
    assert [m.time_tick for m in (r.next(0), r.next(0))] == [11, 12]  # the message, then the served tick
    assert not wab._pending


def test_batch_tick_rules_are_those_of_append() -> None:
    wab = WriteAheadBuffer("p", MiB, 30.0, tick(10))
    wab.append_batch_tick([data(11)], 12, UID(1))
    with pytest.raises(InvalidArgumentError):
        wab.append_batch_tick([], 12, UID(1))  # not above the last tick
    with pytest.raises(InvalidArgumentError):
        wab.append_batch_tick([data(12)], 14, UID(1))  # at the last tick: outside (12, 14]
    with pytest.raises(InvalidArgumentError):
        wab.append_batch_tick([data(13), data(15)], 14, UID(1))  # above the new tick
    for bad in ([data(13), data(13)], [data(13), data(15), data(14)]):
        with pytest.raises(TimeTickViolationError):
            wab.append_batch_tick(bad, 16, UID(1))
    assert wab.last_time_tick == 12 and len(wab) == 2  # nothing of the refused batches
    wab.close()
    with pytest.raises(ShutdownError):
        wab.append_batch_tick([], 20, UID(1))


def test_pending_messages_are_bounded_and_evicted_once_queued() -> None:
    now = [1000.0]
    wab = WriteAheadBuffer("p", MiB, 1.0, tick(1), now=lambda: now[0])
    for i in range(3 * PENDING_MAX):
        wab.append_batch_tick([data(2 * i + 2, 10)], 2 * i + 3, UID(1))
        assert len(wab._pending) < PENDING_MAX
    now[0] += 5.0  # everything expired: only the last entry stays once the pending ones are queued
    wab.append_batch_tick([data(10_000, 10)], 10_001, UID(1))
    assert wab._pending and len(wab) == 1
    with pytest.raises(EvictedError):
        wab.read_from_exclusive_time_tick(2, timeout=0)


def test_waiting_reader_is_woken_by_a_batch_tick() -> None:
    wab = WriteAheadBuffer("p", MiB, 30.0, tick(10))
    got: list[int] = []

    def reader() -> None:
        r = wab.read_from_exclusive_time_tick(10, timeout=5)
        got.extend(m.time_tick for m in (r.next(5), r.next(5)))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)  # let it block
    wab.append_batch_tick([data(11)], 12, UID(3))
    t.join(3)
    assert not t.is_alive() and got == [11, 12]
