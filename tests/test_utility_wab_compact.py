"""The write-ahead buffer's compact entries: plain messages stored as tuples of atoms (untracked by the cyclic
garbage collector) and rebuilt, equal in every field, when a reader reads them.
"""

from __future__ import annotations

import gc
import itertools
from typing import Any

from _utility_msgs import UID

from wal.message import ImmutableMessage, ImmutableTxnMessage, IntMessageID, MessageType, TxnContext
from wal.utility import WriteAheadBuffer
from wal.utility._wab_compact import compact_batch, expand, id_class_of
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
    import pytest

    from wal.utility._wab_queue import WABQueue

    q = WABQueue(MiB, 60.0, first_tick(), lambda: 0.0)
    q.push([msg(2)])
    with pytest.raises(OverflowError):
        q.push([msg(3), msg(1 << 64)])
    assert len(q._msgs) == len(q._tts) == len(q._sizes) == len(q._expire) == 2
    q.push([msg(4)])
    q._check()
