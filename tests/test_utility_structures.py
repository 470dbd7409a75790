"""Reorder buffer, message heap, pending queue and txn buffer (milvus-tests §G)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from _utility_msgs import UID, data

from wal.errors import InvalidArgumentError
from wal.message import ImmutableTxnMessage, MessageType, TxnContext, add_physical_ms, compose_ts
from wal.utility import (
    DuplicateMessageError,
    MessageHeap,
    PendingQueue,
    ReorderBuffer,
    TimeTickViolationError,
    TxnBuffer,
)


def test_reorder_buffer_pops_in_time_tick_order() -> None:
    rb = ReorderBuffer()
    tts = list(range(1, 26))
    random.Random(7).shuffle(tts)
    for i, tt in enumerate(tts):
        rb.push(data(tt, size=i, mid=i))
        assert len(rb) == i + 1
    assert rb.bytes == sum(range(25))
    assert rb.pop_until(0) == []
    expected_counts = [(1, 1), (10, 9), (25, 15)]
    lo = 0
    for until, count in expected_counts:
        got = rb.pop_until(until)
        assert len(got) == count
        assert [m.time_tick for m in got] == list(range(lo + 1, until + 1))
        lo = until
    assert len(rb) == 0
    assert rb.bytes == 0


def test_reorder_buffer_ties_by_message_id() -> None:
    rb = ReorderBuffer()
    for mid in (5, 3, 9, 1):
        rb.push(data(7, mid=mid))
    assert [m.message_id for m in rb.pop_until(7)] == [UID(1), UID(3), UID(5), UID(9)]


def test_reorder_buffer_rejects_duplicates_and_old_ticks() -> None:
    rb = ReorderBuffer()
    rb.push(data(5, mid=1))
    with pytest.raises(DuplicateMessageError):
        rb.push(data(5, mid=1))
    rb.push(data(6, mid=2))
    assert len(rb.pop_until(5)) == 1
    with pytest.raises(TimeTickViolationError):
        rb.push(data(4, mid=3))
    with pytest.raises(InvalidArgumentError):  # both errors are InvalidArgumentError
        rb.push(data(4, mid=4))
    # A message released at exactly the last popped tick is still a duplicate if it comes again.
    with pytest.raises(DuplicateMessageError):
        rb.push(data(5, mid=1))
    rb.push(data(5, mid=5))  # a new message at the last popped tick is fine
    assert [m.message_id for m in rb.pop_until(6)] == [UID(5), UID(2)]


def test_message_heap() -> None:
    h = MessageHeap()
    tts = list(range(1, 26))
    random.Random(3).shuffle(tts)
    for tt in tts:
        h.push(data(tt))
    assert len(h) == 25
    assert h.peek().time_tick == 1
    out = [h.pop().time_tick for _ in range(25)]
    assert out == sorted(out)
    assert len(set(out)) == 25
    with pytest.raises(IndexError):
        h.pop()


def test_pending_queue() -> None:
    q = PendingQueue()
    assert q.bytes == 0
    assert len(q) == 0
    a = data(1, size=1)
    q.add_one(a)
    assert q.bytes == 1
    q.add([data(2, size=2), data(3, size=3)])
    assert q.bytes == 6
    assert len(q) == 3
    assert q.next() is a
    q.unsafe_advance()
    assert q.bytes == 5
    assert [q.next().time_tick for _ in range(1)] == [2]
    q.unsafe_advance()
    q.unsafe_advance()
    assert q.bytes == 0
    with pytest.raises(IndexError):
        q.next()


# -- txn buffer ------------------------------------------------------------------------------------------------

BASE = compose_ts(1_700_000_000_000)


def at(ms: int) -> int:
    return add_physical_ms(BASE, ms)


def test_txn_buffer_passes_plain_messages() -> None:
    b = TxnBuffer()
    out = b.handle_immutable_messages([data(BASE), data(BASE), data(BASE)], at(1))
    assert len(out) == 3
    assert len(b) == 0


def test_txn_buffer_drops_txn_messages_without_begin() -> None:
    b = TxnBuffer()
    t1 = TxnContext(1, 0.201)
    t2 = TxnContext(2, 0.201)
    msgs = [
        data(BASE),
        data(BASE, txn=t1),
        data(BASE),
        data(BASE, txn=t1, mtype=MessageType.ROLLBACK_TXN),
        data(BASE, txn=t2, mtype=MessageType.COMMIT_TXN),
    ]
    out = b.handle_immutable_messages(msgs, at(1))
    assert len(out) == 2
    assert all(m.txn_ctx is None for m in out)
    assert len(b) == 0


def make_uncommitted(b: TxnBuffer, txn_id: int) -> TxnContext:
    ctx = TxnContext(txn_id, 0.201)
    assert b.handle_immutable_messages([data(BASE, txn=ctx, mtype=MessageType.BEGIN_TXN)], at(1)) == []
    assert b.handle_immutable_messages([data(at(100), size=4, txn=ctx)], at(200)) == []
    out = b.handle_immutable_messages([data(at(250)), data(at(300), size=6, txn=ctx)], at(400))
    assert len(out) == 1
    assert out[0].txn_ctx is None
    assert len(b) == 1
    assert b.bytes == 10
    return ctx


def test_txn_buffer_commit() -> None:
    b = TxnBuffer()
    ctx = make_uncommitted(b, 1)
    commit = data(at(500), txn=ctx, mtype=MessageType.COMMIT_TXN)
    out = b.handle_immutable_messages([commit], at(600))
    assert len(out) == 1
    txn = out[0]
    assert isinstance(txn, ImmutableTxnMessage)
    assert txn.message_type is MessageType.TXN
    assert txn.message_id == commit.message_id
    assert txn.time_tick == at(500)
    assert txn.size() == 2
    assert all(m.time_tick == at(500) for m in txn.messages)
    assert len(b) == 0
    assert b.bytes == 0


def test_txn_buffer_rollback() -> None:
    b = TxnBuffer()
    ctx = make_uncommitted(b, 2)
    out = b.handle_immutable_messages([data(at(500), txn=ctx, mtype=MessageType.ROLLBACK_TXN)], at(600))
    assert out == []
    assert len(b) == 0


def test_txn_buffer_expiry() -> None:
    b = TxnBuffer()
    make_uncommitted(b, 2)
    assert b.handle_immutable_messages([], at(500)) == []
    assert len(b) == 1  # last body at +300 plus 201 ms is 501 > 500
    assert b.handle_immutable_messages([], at(501)) == []
    assert len(b) == 0


def test_txn_buffer_ignores_duplicate_begin() -> None:
    b = TxnBuffer()
    ctx = TxnContext(9, 1.0)
    begin = data(BASE, txn=ctx, mtype=MessageType.BEGIN_TXN)
    b.handle_immutable_messages([begin, data(at(1), txn=ctx)], at(2))
    b.handle_immutable_messages([data(at(3), txn=ctx, mtype=MessageType.BEGIN_TXN)], at(4))
    out = b.handle_immutable_messages([data(at(5), txn=ctx, mtype=MessageType.COMMIT_TXN)], at(6))
    assert len(out) == 1
    assert isinstance(out[0], ImmutableTxnMessage)
    assert out[0].begin is begin
    assert out[0].size() == 1


@pytest.mark.parametrize("seed", range(5))
def test_reorder_buffer_random_interleaving(seed: int) -> None:
    """Out-of-order pushes within a window, pops at advancing ticks: every message out once, in tt order."""
    rng = random.Random(seed)
    rb = ReorderBuffer()
    pushed = 0
    out = []
    popped_to = 0
    for mid in range(2000):
        tt = popped_to + rng.randint(0, 20)
        rb.push(data(tt, size=1, mid=mid))
        pushed += 1
        if rng.random() < 0.1:
            popped_to += rng.randint(0, 15)
            out.extend(rb.pop_until(popped_to))
            assert rb.bytes == len(rb)
    out.extend(rb.pop_until(popped_to + 100))
    assert len(out) == pushed
    assert len({m.message_id for m in out}) == pushed
    keys = [(m.time_tick, m.message_id.value) for m in out]  # type: ignore[attr-defined]
    assert keys == sorted(keys)


def test_txn_buffer_expiry_does_not_look_at_every_open_txn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expiry runs at every time tick; it looked at every open txn, so a reader's cost per message was O(open
    txns) (3 s for 3,000 messages with 10,000 txns open)."""
    from wal.message import ImmutableTxnMessageBuilder

    b = TxnBuffer()
    begins = [data(BASE, txn=TxnContext(i, 60.0), mtype=MessageType.BEGIN_TXN) for i in range(1, 1001)]
    b.handle_immutable_messages(begins, at(1))
    calls = [0]
    orig = ImmutableTxnMessageBuilder.expired_time_tick

    def counted(self: ImmutableTxnMessageBuilder) -> int:
        calls[0] += 1
        return orig(self)

    monkeypatch.setattr(ImmutableTxnMessageBuilder, "expired_time_tick", counted)
    for i in range(100):
        assert len(b.handle_immutable_messages([data(at(2 + i))], at(2 + i))) == 1
    assert len(b) == 1000
    assert calls[0] <= 10  # 100,000 before


def test_txn_buffer_heap_stays_bounded_by_the_open_txns() -> None:
    """The heap of deadlines kept an entry for every txn begun until its deadline came, committed or not, and was
    cleared only when no txn was open: with a txn always open (several producers) and a long keepalive, a reader
    held one entry per txn begun within a keepalive (an hour at 1,000 txns a second: 3.6 M entries, ~400 MB)."""
    b = TxnBuffer()
    b.handle_immutable_messages([data(at(1), txn=TxnContext(1, 3600.0), mtype=MessageType.BEGIN_TXN)], at(1))
    for i in range(2, 5002):
        ctx = TxnContext(i, 3600.0)
        out = b.handle_immutable_messages(
            [data(at(i), txn=ctx, mtype=MessageType.BEGIN_TXN), data(at(i), txn=ctx, mtype=MessageType.COMMIT_TXN)],
            at(i),
        )
        assert len(out) == 1
    assert len(b) == 1
    assert len(b._deadlines) <= 200  # 5,001 before


def _full_scan_expiry(open_txns: dict[int, int], msgs: list[tuple[int, int, str]], tt: int) -> None:
    """The model: the buffer's open txns (ID -> last activity tick) after ``msgs``, each expired txn dropped at
    ``tt`` by a look at every one."""
    for tid, mtt, kind in msgs:
        if kind == "begin":
            open_txns.setdefault(tid, mtt)
        elif kind in ("commit", "rollback"):
            open_txns.pop(tid, None)
        elif tid in open_txns:
            open_txns[tid] = max(open_txns[tid], mtt)
    for tid in [t for t, last in open_txns.items() if add_physical_ms(last, KEEPALIVE_MS) <= tt]:
        del open_txns[tid]


KEEPALIVE_MS = 5


def test_txn_buffer_expiry_drops_exactly_what_a_full_scan_would() -> None:
    rng = random.Random(11)
    b = TxnBuffer()
    model: dict[int, int] = {}
    types = {"begin": MessageType.BEGIN_TXN, "body": MessageType.INSERT, "commit": MessageType.COMMIT_TXN,
             "rollback": MessageType.ROLLBACK_TXN}
    ms = 0
    next_id = 1
    for _ in range(2000):
        batch: list[tuple[int, int, str]] = []
        for _ in range(rng.randrange(0, 5)):
            ms += rng.randrange(0, 3)
            if rng.random() < 0.3 or not model:
                tid, kind = next_id, "begin"
                next_id += 1
            else:
                tid, kind = rng.choice(list(model)), rng.choice(["body", "body", "body", "commit", "rollback"])
            batch.append((tid, at(ms), kind))
        ms += rng.randrange(0, 3)
        msgs = [data(mtt, txn=TxnContext(tid, KEEPALIVE_MS / 1000), mtype=types[kind]) for tid, mtt, kind in batch]
        b.handle_immutable_messages(msgs, at(ms))
        _full_scan_expiry(model, batch, at(ms))
        assert set(b._builders) == set(model)


def test_txn_buffer_drops_a_txn_across_a_stretch_of_deleted_messages_only() -> None:
    """``note_gap(x)``: the reader passed over deleted messages up to ``x``. A txn with its begin at or before ``x``
    and its commit after it may have lost body messages there: not delivered (never in part). One wholly before or
    wholly after the stretch is delivered as usual."""
    b = TxnBuffer()
    ctx = [TxnContext(k, 10.0) for k in range(4)]

    def txn(k: int, begin: int, body: int, commit: int) -> list[Any]:
        return [data(at(begin), mid=begin, txn=ctx[k], mtype=MessageType.BEGIN_TXN),
                data(at(body), mid=body, txn=ctx[k]),
                data(at(commit), mid=commit, txn=ctx[k], mtype=MessageType.COMMIT_TXN)]

    msgs = txn(0, 10, 11, 12) + txn(1, 13, 14, 30) + txn(2, 20, 21, 31) + txn(3, 40, 41, 42)
    msgs.sort(key=lambda m: m.time_tick)
    b.note_gap(UID(20))  # IDs ..20 passed over: txn 1 (13..30) and txn 2 (begin 20, commit 31) are broken
    out = b.handle_immutable_messages(msgs, at(50))
    assert [m.message_id for m in out] == [UID(12), UID(42)]


def test_deadline_heap_yields_due_keys_and_trims_to_the_open_ones() -> None:
    from wal.utility import DeadlineHeap
    from wal.utility._deadline_heap import HEAP_SLACK

    h = DeadlineHeap()
    for txn_id, deadline in [(1, 30), (2, 10), (3, 20), (4, 40)]:
        h.push(deadline, txn_id)
    assert list(h.due(5)) == []
    due = []
    for t in h.due(25):  # 3 renewed to 50 while the pass runs: pushed back, not yielded again
        due.append(t)
        if t == 3:
            h.push(50, 3)
    assert due == [2, 3] and len(h) == 3
    assert list(h.due(45)) == [1, 4]
    h.trim(1, lambda: [(50, 3)])  # 1 open, 1 entry: kept as it is
    assert len(h) == 1
    for i in range(10, 10 + 2 + HEAP_SLACK):
        h.push(100, i)  # txns that ended since: their entries stay until trimmed
    h.trim(1, lambda: [(50, 3)])
    assert len(h) == 1 and list(h.due(60)) == [3]
    h.push(70, 5)
    h.trim(0, lambda: [])
    assert len(h) == 0
