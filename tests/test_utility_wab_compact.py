"""The write-ahead buffer's compact entries: plain messages stored as tuples of atoms (untracked by the cyclic
garbage collector) and rebuilt, equal in every field, when a reader reads them.
"""

from __future__ import annotations

import gc
import itertools
from typing import Any

import pytest
from _utility_msgs import UID

from wal.message import ImmutableMessage, ImmutableTxnMessage, IntMessageID, MessageType, MutableMessage, TxnContext
from wal.utility import TimeTickViolationError, WriteAheadBuffer
from wal.utility._wab_compact import compact_batch, compact_written, expand, id_class_of
from wal.utility._wab_queue import ENTRY_OVERHEAD, WABQueue
from wal.utility._write_ahead_buffer import PENDING_MAX

MiB = 1 << 20
_ids = itertools.count(10)


class SID(IntMessageID):
    """Like the backends' IDs: slotted, no state of its own (the buffer can rebuild it from its value)."""

    __slots__ = ()
    WAL_NAME = "test-compact"


class ExtraSID(IntMessageID):
    __slots__ = ("shard",)
    WAL_NAME = "test-compact-extra"


def first_tick() -> ImmutableMessage:
    return ImmutableMessage(message_id=SID(1), message_type=MessageType.TIME_TICK, payload=b"", time_tick=1)


def msg(tt: int, *, lc: int = 5, mtype: MessageType = MessageType.INSERT, vchannel: str = "v1", term: int = 3,
        props: dict[str, str] | None = None, mid: IntMessageID | None = None) -> ImmutableMessage:
    return ImmutableMessage(
        message_id=mid if mid is not None else SID(next(_ids)), message_type=mtype, payload=b"p%d" % tt,
        properties=props, vchannel=vchannel, time_tick=tt, last_confirmed_message_id=SID(lc), wal_term=term,
    )


def fields(m: ImmutableMessage) -> tuple[Any, ...]:
    return (
        type(m), type(m.message_id), m.message_id, m.message_type, type(m.message_type), bytes(m.payload),
        m.vchannel, m.time_tick, type(m.last_confirmed_message_id), m.last_confirmed_message_id, m.txn_ctx,
        m.wal_term, m.not_persisted, dict(m.properties),
    )


def test_id_class_of_only_rebuildable_classes() -> None:
    assert id_class_of(first_tick()) is SID
    assert id_class_of(msg(2, mid=UID(7))) is None  # no __slots__: instances may carry a __dict__
    assert id_class_of(msg(2, mid=ExtraSID(7))) is None  # state of its own: object.__new__ + value is not enough


def test_batch_tick_stores_compact_untracked_entries_read_back_equal() -> None:
    wab = WriteAheadBuffer("c", 64 * MiB, 3600.0, first_tick())
    types = [MessageType.INSERT, MessageType.DELETE, MessageType.FLUSH]
    msgs = [
        msg(10 + i, lc=5 if i % 3 else 10 + i, mtype=types[i % 3], vchannel=f"v{i % 4}", term=i % 2 + 1)
        for i in range(PENDING_MAX * 2)  # more than PENDING_MAX: straight to the queue
    ]
    msgs[0] = msg(10, lc=5, mid=SID(999))  # lc != id
    want = [fields(m) for m in msgs]
    wab.append_batch_tick(msgs, 10 + len(msgs), SID(5))
    entries = wab._queue._msgs[1:]
    assert len(entries) == len(msgs) and all(type(e) is tuple for e in entries)
    gc.collect()
    assert not any(gc.is_tracked(e) for e in entries)  # what the compact form is for
    r = wab.read_from_exclusive_time_tick(1, timeout=1.0)
    got = [r.next(timeout=1.0) for _ in range(10)]
    got += r.next_batch(len(msgs), timeout=1.0)
    assert [fields(m) for m in got[: len(msgs)]] == want
    assert got[0].last_confirmed_message_id == SID(5) and got[0].message_id == SID(999)


def test_small_batches_compact_when_folded() -> None:
    wab = WriteAheadBuffer("c", 64 * MiB, 3600.0, first_tick())
    a, b = [msg(2), msg(3)], [msg(4)]
    want = [fields(m) for m in a + b]
    wab.append_batch_tick(a, 3, SID(1))
    wab.append_batch_tick(b, 5, SID(1))
    r = wab.read_from_exclusive_time_tick(1, timeout=1.0)  # folds the pending messages into the queue
    assert all(type(e) is tuple for e in wab._queue._msgs[1:])
    assert [fields(r.next(timeout=1.0)) for _ in range(3)] == want


def test_mixed_snapshot_rebuilds_every_compact_entry() -> None:
    """Persisted ticks (kept as messages) between compact batches: a batch read over the snapshot must rebuild
    the compact entries in the middle too, not only when one sits at an end."""
    wab = WriteAheadBuffer("c", 64 * MiB, 3600.0, first_tick())
    tt = 2
    t0 = ImmutableMessage(message_id=SID(2), message_type=MessageType.TIME_TICK, payload=b"", time_tick=tt)
    wab.append([], t0)  # the snapshot starts and ends with a message entry, compact ones only in the middle
    want: list[tuple[Any, ...]] = [fields(t0)]
    for _ in range(3):
        batch = [msg(tt + k) for k in range(1, PENDING_MAX + 2)]
        tt += PENDING_MAX + 2
        t = ImmutableMessage(message_id=SID(next(_ids)), message_type=MessageType.TIME_TICK, payload=b"",
                             time_tick=tt, last_confirmed_message_id=SID(5))
        want += [fields(m) for m in batch] + [fields(t)]
        wab.append(batch, t)
    r = wab.read_from_exclusive_time_tick(1, timeout=1.0)
    got = r.next_batch(10_000, timeout=1.0)
    assert [fields(m) for m in got] == want
    snap = wab._queue.snapshot_from_offset(1)
    assert snap is not None and [fields(m) for m in snap.to_list()] == want


def test_batches_it_cannot_rebuild_are_kept_as_they_are() -> None:
    cls = SID
    with_props = [msg(2), msg(3, props={"k": "v"})]
    assert compact_batch(with_props, cls) is with_props
    foreign = [msg(2), msg(3, mid=UID(4))]
    assert compact_batch(foreign, cls) is foreign
    begin = msg(2)
    commit = msg(4, mtype=MessageType.COMMIT_TXN)
    txn = ImmutableTxnMessage(begin, [msg(3)], commit)
    assert compact_batch([txn], cls) == [txn]
    assert compact_batch([msg(2)], None) != [] and type(compact_batch([msg(2)], None)[0]) is ImmutableMessage
    wab = WriteAheadBuffer("c", 64 * MiB, 3600.0, first_tick())
    wab.append_batch_tick(with_props, 3, SID(1))
    r = wab.read_from_exclusive_time_tick(1, timeout=1.0)
    assert r.next(timeout=1.0) is with_props[0]
    assert dict(r.next(timeout=1.0).properties) == {"k": "v"}


def test_txn_context_is_carried() -> None:
    ctx = TxnContext(txn_id=42, keepalive=5.0)
    m = ImmutableMessage(message_id=SID(3), message_type=MessageType.INSERT, payload=b"x", time_tick=2,
                         txn_ctx=ctx)
    (e,) = compact_batch([m], SID)
    assert expand(e, SID).txn_ctx is ctx


def test_a_rebuilt_message_sets_every_slot_of_the_original() -> None:
    """``expand`` builds messages slot by slot (no __init__): a slot added to ImmutableMessage and not to the
    compact form would be missing from every rebuilt message (AttributeError) or differ here."""
    m = msg(7, props=None)
    (entry,) = compact_batch([m], SID)
    assert entry.__class__ is tuple
    rebuilt = expand(entry, SID)
    for name in ImmutableMessage.__slots__:
        assert getattr(rebuilt, name) == getattr(m, name), name


def test_a_time_tick_too_large_for_the_queue_leaves_it_unchanged() -> None:
    """The queue keeps time ticks in a typed array, which rejects a number out of range only when filled: the
    push must fail before touching anything, so its parallel sequences stay in step (found by review)."""
    q = WABQueue(MiB, 60.0, first_tick(), lambda: 0.0)
    q.push([msg(2)])
    with pytest.raises(OverflowError):
        q.push([msg(3), msg(1 << 64)])
    assert len(q._msgs) == len(q._tts) == len(q._sizes) == len(q._expire) == 2
    q.push([msg(4)])
    q._check()


def written(n: int, tt: int = 10, **kw: Any) -> tuple[list[MutableMessage], list[IntMessageID]]:
    """``n`` mutable messages stamped as the time-tick interceptor stamps them, and the IDs they were written at."""
    msgs = []
    for i in range(n):
        m = MutableMessage(MessageType.INSERT if i % 2 else MessageType.DELETE, b"w%d" % i, None, f"v{i % 3}", **kw)
        m.time_tick = tt + i
        m.with_last_confirmed(SID(5))
        m.wal_term = 2
        msgs.append(m)
    return msgs, [SID(next(_ids)) for _ in msgs]


def test_compact_written_entries_stand_for_the_written_messages() -> None:
    ctx = TxnContext(txn_id=7, keepalive=5.0)
    msgs, ids = written(5, txn_ctx=ctx)
    entries = compact_written(msgs, ids, SID)
    assert entries is not None and all(type(e) is tuple for e in entries)
    assert [fields(expand(e, SID)) for e in entries] == [
        fields(m.into_immutable(r)) for m, r in zip(msgs, ids, strict=True)
    ]


def test_compact_written_declines_what_the_buffer_cannot_rebuild() -> None:
    def case(change: Any) -> list[Any] | None:
        msgs, ids = written(4)
        change(msgs, ids)
        return compact_written(msgs, ids, SID)

    assert case(lambda msgs, ids: None) is not None
    assert case(lambda msgs, ids: ids.__setitem__(2, UID(3))) is None  # an ID of another class
    assert case(lambda msgs, ids: msgs[3].with_last_confirmed(UID(3))) is None  # a last-confirmed one too
    assert case(lambda msgs, ids: msgs[1].with_last_confirmed_use_message_id()) is None  # "self"
    assert case(lambda msgs, ids: msgs[0].properties.update(k="v")) is None  # properties are not carried
    msgs, ids = written(2)
    assert compact_written(msgs, ids, None) is None
    assert compact_written([], [], SID) is None
    with pytest.raises(ValueError):
        compact_written(msgs, ids[:1], SID)


def test_compact_written_with_the_shared_last_confirmed_id() -> None:
    lc = SID(5)
    msgs, ids = written(4)
    for m in msgs:
        m.with_last_confirmed(lc)
    shared = compact_written(msgs, ids, SID, lc)
    assert shared is not None and shared == compact_written(msgs, ids, SID)  # the same entries as the slow path
    msgs[2].with_last_confirmed(SID(5))  # restamped by someone else: an equal ID, not the batch's object
    assert compact_written(msgs, ids, SID, lc) is None
    msgs[2].with_last_confirmed(lc)
    assert compact_written(msgs, ids, SID, UID(5)) is None  # a shared ID the buffer cannot rebuild
    msgs[1].properties.update(k="v")
    assert compact_written(msgs, ids, SID, lc) is None


def test_compact_push_is_all_or_nothing() -> None:
    """A batch of compact entries only (the append path's) has its ticks checked and range-checked like any."""
    q = WABQueue(MiB, 60.0, first_tick(), lambda: 0.0)
    msgs, ids = written(3, tt=10)
    (a, b, c) = compact_written(msgs, ids, SID) or []
    with pytest.raises(TimeTickViolationError):
        q.push([a, c, b], compact=True)  # out of order
    with pytest.raises(TimeTickViolationError):
        q.push([a, a], compact=True)  # a data tick never repeats
    with pytest.raises(TimeTickViolationError):
        q.push([(*a[:4], 0, *a[5:])], compact=True)  # at or below the last tick (1)
    with pytest.raises(OverflowError):
        q.push([a, b, (*c[:4], 1 << 64, *c[5:])], compact=True)
    assert len(q._msgs) == len(q._tts) == len(q._sizes) == len(q._expire) == 1 and q.size == ENTRY_OVERHEAD
    q.push([a, b, c], compact=True)
    q._check()
    assert q._msgs[1:] == [a, b, c] and q.size == len(b"w0w1w2") + 4 * ENTRY_OVERHEAD and q.last_time_tick == 12


def test_push_of_compact_entries_and_messages_together() -> None:
    """What a fold pushes after a mixed batch: compact entries next to messages (a repeated tick, properties)."""
    q = WABQueue(MiB, 60.0, first_tick(), lambda: 0.0)
    msgs, ids = written(2, tt=10)
    a, b = compact_written(msgs, ids, SID) or []
    tick = ImmutableMessage(message_id=SID(50), message_type=MessageType.TIME_TICK, payload=b"", time_tick=10)
    props = msg(12, props={"k": "v"})
    plain = msg(13)
    batch: list[Any] = [a, tick, b, props, plain]
    want = [fields(expand(a, SID)), fields(tick), fields(expand(b, SID)), fields(props), fields(plain)]
    with pytest.raises(TimeTickViolationError):
        q.push([a, msg(10), b], compact=True)  # a data message may not repeat a tick
    assert len(q) == 1
    q.push(batch, compact=True)
    q._check()
    assert [type(e) for e in q._msgs[1:]] == [tuple, ImmutableMessage, tuple, ImmutableMessage, ImmutableMessage]
    assert q.size == 2 + 2 + props.estimate_size() + len(plain.payload) + 6 * ENTRY_OVERHEAD
    snap = q.snapshot_from_offset(1)
    assert snap is not None and [fields(m) for m in snap.to_list()] == want
    wab = WriteAheadBuffer("c", 64 * MiB, 3600.0, first_tick())
    wab.append_batch_tick([a, tick, b], 11, SID(1))  # a small batch, repeated tick: straight to the queue
    wab.append_batch_tick([props, plain], 13, SID(1))  # pending
    r = wab.read_from_exclusive_time_tick(1, timeout=1.0)
    assert [fields(m) for m in r.next_batch(10, timeout=1.0)] == want
