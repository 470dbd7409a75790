"""``WriteAheadBuffer(on_demand=True)``: messages are kept only while someone reads the buffer. What it does not
keep is a gap that evicts every reader positioned before it: a reader may have to read the backend again, but it
never reads past a message it did not get.
"""

from __future__ import annotations

import pytest
from _utility_msgs import UID, FakeClock, data, tick

from wal.errors import WALTimeoutError
from wal.message import ImmutableMessage
from wal.utility import EvictedError, WriteAheadBuffer, WriteAheadBufferReader

MiB = 1 << 20


def on_demand(clock: FakeClock, asked: list[int] | None = None, keepalive: float = 30.0) -> WriteAheadBuffer:
    return WriteAheadBuffer(
        "od", 64 * MiB, keepalive, tick(1, mid=1), now=clock, on_demand=True,
        on_wanted=None if asked is None else (lambda: asked.append(1)),
    )


def tts(msgs: list[ImmutableMessage]) -> list[int]:
    return [m.time_tick for m in msgs]


def test_nothing_is_kept_while_nobody_reads_and_a_reader_before_the_gap_is_evicted() -> None:
    clock = FakeClock()
    asked: list[int] = []
    b = on_demand(clock, asked)
    assert not b.wants_messages()
    b.append_batch_tick([data(2), data(3)], 4, UID(1))
    b.append_batch_tick([data(5)], 6, UID(1))
    assert len(b) == 1  # the first tick only
    with pytest.raises(EvictedError):
        b.read_from_exclusive_time_tick(1, timeout=0)  # messages 2, 3, 5 were not kept
    assert asked == [1]  # the writer is asked for a persisted tick, once for this gap
    with pytest.raises(EvictedError):
        b.read_from_exclusive_time_tick(4, timeout=0)
    assert asked == [1]
    # The read made it keep the next batches: a reader from the newest tick sees them.
    assert b.wants_messages()
    b.append_batch_tick([data(7), data(8)], 9, UID(1))
    assert tts(b.read_from_exclusive_time_tick(6, timeout=0).next_batch(10, timeout=0)) == [7, 8]


def reader_at_newest(b: WriteAheadBuffer, clock: FakeClock) -> WriteAheadBufferReader:
    """A reader that has read everything up to the newest tick (3), after which the clock moves 11 s on."""
    b.read_from_exclusive_time_tick(1, timeout=0)  # at the newest tick: nothing to read yet, a read all the same
    b.append_batch_tick([data(2)], 3, UID(1))
    r = b.read_from_exclusive_time_tick(1, timeout=0)
    assert tts(r.next_batch(10, timeout=0)) == [2]
    assert tts(r.next_batch(10, timeout=0)) == [3]  # the newest (not stored) tick
    clock.t += 11  # keepalive is 10 s: nobody read since
    return r


def test_a_reader_that_reads_again_after_the_writer_skipped_a_batch_is_evicted_not_given_a_hole() -> None:
    """The race: the writer asks, nobody reads, so it hands over nothing for its batch (``mark_gap``); a reader
    then reads (and is waiting at the newest tick); the batch's tick comes. The reader must not see that tick
    after nothing."""
    clock = FakeClock()
    b = on_demand(clock, keepalive=10.0)
    r = reader_at_newest(b, clock)
    assert not b.wants_messages()
    b.mark_gap(5)  # messages 4 and 5 written, not handed over
    with pytest.raises(WALTimeoutError):
        r.next(timeout=0)  # the reader reads: from now on the buffer wants the next batches
    assert b.wants_messages()
    b.append_batch_tick([], 6, UID(1))  # the skipped batch's tick
    with pytest.raises(EvictedError):
        r.next(timeout=0)
    b.append_batch_tick([data(7)], 8, UID(1))
    assert tts(b.read_from_exclusive_time_tick(6, timeout=0).next_batch(10, timeout=0)) == [7]  # after the gap


def test_a_gap_above_the_next_tick_also_drops_the_ticks_after_it() -> None:
    """A tick may confirm less than the skipped batch (an append still in flight): the gap then stays until a
    tick covers it, so a batch kept in between does not make the missing messages look read."""
    clock = FakeClock()
    b = on_demand(clock, keepalive=10.0)
    r = reader_at_newest(b, clock)
    b.mark_gap(6)  # skipped messages 4, 5, 6
    with pytest.raises(WALTimeoutError):
        r.next(timeout=0)  # wanted again
    b.append_batch_tick([], 5, UID(1))  # confirms up to 5 only
    with pytest.raises(EvictedError):
        r.next(timeout=0)
    b.append_batch_tick([data(7)], 8, UID(1))  # 6 is still missing: this batch is dropped too
    assert len(b) == 1
    with pytest.raises(EvictedError):
        b.read_from_exclusive_time_tick(5, timeout=0)
    b.append_batch_tick([data(9)], 10, UID(1))  # the gap is over: kept
    assert tts(b.read_from_exclusive_time_tick(8, timeout=0).next_batch(10, timeout=0)) == [9]


def test_it_stops_keeping_keepalive_seconds_after_the_last_read() -> None:
    clock = FakeClock()
    b = on_demand(clock, keepalive=10.0)
    r = reader_at_newest(b, clock)  # read at t, clock now t + 11
    b.append_batch_tick([data(4)], 5, UID(1))  # nobody read for 11 s: not kept
    assert len(b) == 1
    with pytest.raises(EvictedError):
        r.next_batch(10, timeout=0)
    # That read (evicted) made it keep the next batch again, a persisted tick's as a not-persisted one's.
    b.append([data(6)], tick(7))
    assert tts(b.read_from_exclusive_time_tick(5, timeout=0).next_batch(10, timeout=0)) == [6, 7]


def test_a_waiting_reader_keeps_it_wanted_however_long_it_waits() -> None:
    clock = FakeClock()
    b = on_demand(clock, keepalive=1.0)
    assert not b.wants_messages()
    b.read_from_exclusive_time_tick(1, timeout=0)
    assert b.wants_messages()
    clock.t += 100
    assert not b.wants_messages()
    b._waiting += 1  # what a reader blocked in _wait counts (under the lock)
    try:
        assert b.wants_messages()
    finally:
        b._waiting -= 1


def test_the_default_buffer_keeps_everything() -> None:
    clock = FakeClock()
    b = WriteAheadBuffer("all", 64 * MiB, 10.0, tick(1, mid=1), now=clock)
    assert b.wants_messages() and not on_demand(clock).wants_messages()  # nobody has read either
    b.append_batch_tick([data(2)], 3, UID(1))
    assert tts(b.read_from_exclusive_time_tick(1, timeout=0).next_batch(10, timeout=0)) == [2]
