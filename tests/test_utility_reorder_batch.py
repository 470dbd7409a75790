"""ReorderBuffer.push_many (the scanner's run-at-a-time path) against push() one by one, and TxnBuffer's no-txn path."""

from __future__ import annotations

import random

import pytest
from _utility_msgs import UID, data

from wal.message import ImmutableMessage, MessageID, MessageType, TxnContext
from wal.utility import DuplicateMessageError, ReorderBuffer, TimeTickViolationError, TxnBuffer


def _one_by_one(rb: ReorderBuffer, msgs: list[ImmutableMessage]) -> int:
    dropped = 0
    for m in msgs:
        try:
            rb.push(m)
        except (DuplicateMessageError, TimeTickViolationError):
            dropped += 1
    return dropped


def _keys(msgs: list[ImmutableMessage]) -> list[tuple[int, int]]:
    return [(m.time_tick, m.message_id.value) for m in msgs]  # type: ignore[attr-defined]


def test_in_order_run_is_held_until_its_tick() -> None:
    rb = ReorderBuffer()
    run = [data(10 + i, size=3, mid=i + 1) for i in range(100)]
    assert rb.push_many(run) == 0
    assert len(rb) == 100 and rb.bytes == 300
    out = rb.pop_until(59)
    assert _keys(out) == [(10 + i, i + 1) for i in range(50)]
    assert len(rb) == 50 and rb.bytes == 150
    assert rb.pop_until(1000) == run[50:]
    assert len(rb) == 0 and rb.bytes == 0


def test_duplicates_and_late_messages_are_dropped_and_counted() -> None:
    rb = ReorderBuffer()
    first = [data(10 + i, mid=i + 1) for i in range(10)]
    assert rb.push_many(first) == 0
    assert rb.push_many(first[5:]) == 5  # a source switch reads the tail again: all held already
    assert len(rb) == 10
    assert rb.pop_until(14) == first[:5]
    # below the released tick, and exactly at it but already released: both dropped
    assert rb.push_many([data(3, mid=100), first[4]]) == 2
    # a new message at exactly the released tick is still accepted
    assert rb.push_many([data(14, mid=101)]) == 0
    assert _keys(rb.pop_until(100)) == [(14, 101), *_keys(first[5:])]


class KeyID(MessageID):
    """An ID ordered by MessageID's generic comparisons (a backend whose IDs are not IntMessageIDs)."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    @property
    def wal_name(self) -> str:
        return "test-key"

    def marshal(self) -> str:
        return str(self.value)

    def _order_key(self) -> tuple[int, int]:
        return (0, self.value)


@pytest.mark.parametrize("id_cls", [UID, KeyID])
@pytest.mark.parametrize("seed", range(8))
def test_push_many_matches_push(seed: int, id_cls: type[UID] | type[KeyID]) -> None:
    """Random runs, in and out of order, with repeats and late messages: same drops, same release order. IDs of
    IntMessageID's order are compared by value in push_many's in-order check, others by their own order."""
    rng = random.Random(seed)
    a, b = ReorderBuffer(), ReorderBuffer()
    seen: list[ImmutableMessage] = []
    next_id = 1
    popped_to = 0
    out_a: list[ImmutableMessage] = []
    out_b: list[ImmutableMessage] = []
    for _ in range(60):
        run: list[ImmutableMessage] = []
        tt = popped_to + rng.randint(-2, 3)
        for _ in range(rng.randint(0, 40)):
            r = rng.random()
            if r < 0.1 and seen:
                run.append(rng.choice(seen))  # a repeat (same object: same ID and tick)
            else:
                tt += rng.choice([0, 1, 1, 2]) if r < 0.85 else -rng.randint(1, 5)
                m = data(max(tt, 0), size=1, mid=next_id)
                m.message_id = id_cls(next_id)
                next_id += 1
                seen.append(m)
                run.append(m)
        assert a.push_many(run) == _one_by_one(b, run)
        assert len(a) == len(b) and a.bytes == b.bytes
        if rng.random() < 0.4:
            popped_to += rng.randint(0, 6)
            out_a += a.pop_until(popped_to)
            out_b += b.pop_until(popped_to)
            assert _keys(out_a) == _keys(out_b)
    out_a += a.pop_until(1 << 40)
    out_b += b.pop_until(1 << 40)
    assert _keys(out_a) == _keys(out_b)
    assert len({m.message_id for m in out_a}) == len(out_a)
    ticks = [m.time_tick for m in out_a]
    assert ticks == sorted(ticks)


def test_out_of_order_run_is_sorted() -> None:
    rb = ReorderBuffer()
    assert rb.push_many([data(5, mid=1), data(9, mid=2), data(7, mid=3), data(7, mid=4)]) == 0
    assert [m.message_id for m in rb.pop_until(8)] == [UID(1), UID(3), UID(4)]
    assert rb.push_many([data(8, mid=5), data(10, mid=6)]) == 0
    assert [m.message_id for m in rb.pop_until(100)] == [UID(5), UID(2), UID(6)]


def test_txn_buffer_passes_plain_messages_through_unchanged() -> None:
    b = TxnBuffer()
    msgs = [data(i) for i in range(5)]
    assert b.handle_immutable_messages(msgs, 10) is msgs  # no txn anywhere: nothing to copy
    ctx = TxnContext(txn_id=7, keepalive=10.0)
    with_txn = [data(11), data(12, mtype=MessageType.BEGIN_TXN, txn=ctx), data(13, txn=ctx)]
    out = b.handle_immutable_messages(with_txn, 13)
    assert out == with_txn[:1] and len(b) == 1
    later = [data(14)]
    assert b.handle_immutable_messages(later, 14) == later  # an open txn: the slow path, same result
