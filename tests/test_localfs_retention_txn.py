"""Retention never deletes a segment a transaction still needs (``localfs/_retention.py``): it deleted a txn's
begin while the txn was open, and the committed txn was then lost for every reader (DESIGN invariant 5)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy


def _ins(payload: bytes) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, payload, vchannel="v")


def _segments(root: Path) -> list[str]:
    return sorted(f for f in os.listdir(root / "p1") if f.endswith(".seg"))


def _delivered(w: Any) -> list[Any]:
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    out = []
    try:
        while True:
            m = s.recv(2)
            if m.not_persisted:
                return out
            if m.message_type is not MessageType.TIME_TICK:
                out.append(m)
    finally:
        s.close()


@pytest.mark.parametrize("bound", [{"retention_bytes": 16384}, {"retention_seconds": 0}])
def test_a_txn_open_across_rolls_is_delivered_after_its_commit(tmp_path: Path, bound: dict[str, int]) -> None:
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096, **bound)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    t = w.begin_txn("v", keepalive=60)
    t.append(_ins(b"body-1"))
    for _ in range(30):  # 12 rolls: the bound alone would delete the begin's segment
        w.append(_ins(b"plain" * 100))
    t.append(_ins(b"body-2"))
    t.commit()
    assert len(_segments(tmp_path)) > 4  # kept while the txn was open
    for _ in range(20):
        w.append(_ins(b"after" * 100))
    w.close()
    w = op.open(OpenOption(PChannelInfo("p1", 2)))
    got = _delivered(w)
    txns = [m for m in got if m.message_type is MessageType.TXN]
    if txns:  # the txn's segments may be deleted once it ended: then neither its TXN nor its parts come back
        assert [bytes(b.payload) for b in txns[0]] == [b"body-1", b"body-2"]
    assert not [m for m in got if m.txn_ctx is not None and m.message_type is not MessageType.TXN]
    w.close()
    op.close()


def test_the_txn_is_delivered_after_rolls_while_it_was_open(tmp_path: Path) -> None:
    """The reviewer's case, read before the writer closes (on reopen, retention may delete the begin of a txn
    committed long ago, as any old data: see _retention.py)."""
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096, retention_bytes=16384)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    t = w.begin_txn("v", keepalive=60)
    t.append(_ins(b"body-1"))
    for _ in range(30):
        w.append(_ins(b"plain" * 100))
    t.append(_ins(b"body-2"))
    t.commit()
    ro = op.open(OpenOption(PChannelInfo("p1", 1, AccessMode.RO)))
    s = ro.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    got = []
    while not got or got[-1].message_type is not MessageType.TXN:
        m = s.recv(5)
        if m.message_type is not MessageType.TIME_TICK:
            got.append(m)
    assert [bytes(b.payload) for b in got[-1]] == [b"body-1", b"body-2"]
    assert sum(m.message_type is MessageType.INSERT for m in got) == 30
    op.close()


def test_retention_still_deletes_without_txns_and_catches_up_after_one(tmp_path: Path) -> None:
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096, retention_bytes=16384)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    for _ in range(60):
        w.append(_ins(b"x" * 600))
    assert len(_segments(tmp_path)) <= 5
    futs = [w.append_async(_ins(b"y" * 600)) for _ in range(200)]  # batches spanning many segments
    for f in futs:
        f.result()
    for _ in range(20):  # the floor is a batch behind: the next rolls delete what the batch's own could not
        w.append(_ins(b"x" * 600))
    assert len(_segments(tmp_path)) <= 5
    t = w.begin_txn("v", keepalive=60)
    t.append(_ins(b"t"))
    for _ in range(60):
        w.append(_ins(b"x" * 600))
    assert len(_segments(tmp_path)) > 10  # held back by the open txn
    t.commit()
    for _ in range(40):
        w.append(_ins(b"x" * 600))
    assert len(_segments(tmp_path)) <= 5
    op.close()


def test_retention_keeps_its_bound_while_short_txns_overlap_all_the_time(tmp_path: Path) -> None:
    """A first version deleted only at a boundary with no txn open at all: under three threads of short txns it
    never deleted (47 segments after 2 s, 345 after 16 s, against a bound of 4)."""
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096, retention_bytes=16384)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    stop = threading.Event()
    committed: list[int] = []

    def txns() -> None:
        while not stop.is_set():
            with w.begin_txn("v", keepalive=60) as t:
                for _ in range(3):
                    t.append(_ins(b"b" * 200))
            committed.append(1)

    threads = [threading.Thread(target=txns) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(committed) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(committed) >= 300
    assert len(_segments(tmp_path)) <= 6  # the bound (4), plus the active segment and one a txn held
    w.close()
    w = op.open(OpenOption(PChannelInfo("p1", 2)))
    got = _delivered(w)
    assert got and all(m.message_type is MessageType.TXN for m in got)  # whole txns only, no loose parts
    assert all(len(list(m)) == 3 for m in got)
    op.close()


def test_starting_from_a_deleted_id_goes_on_at_the_oldest_kept_one_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    ids = [w.append(_ins(b"%d" % i + b"x" * 600)).message_id for i in range(40)]
    w.truncate(ids[30])
    first_kept = int(_segments(tmp_path)[0].split(".")[0])
    assert first_kept > ids[5].value
    with caplog.at_level("WARNING", logger="wal.walimpls.localfs._scanner"):
        s = w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(ids[5])))
        m = s.recv(5)
        while m.message_type is not MessageType.INSERT:
            m = s.recv(5)
        s.close()
    assert m.message_id.value == first_kept
    assert f"message ID {ids[5].value} was deleted; starting at the oldest kept one, {first_kept}" in caplog.text
    op.close()


def test_starting_from_id_0_of_a_log_that_deleted_nothing_warns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # IDs start at 1: ID 0 was never there to delete (`wal dump --from 0` warned "message ID 0 was deleted").
    from wal.walimpls.localfs import LocalFSMessageID

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append(_ins(b"a"))
    with caplog.at_level("WARNING", logger="wal.walimpls.localfs._scanner"):
        s = w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(LocalFSMessageID(0))))
        m = s.recv(5)
        while m.message_type is not MessageType.INSERT:
            m = s.recv(5)
        s.close()
    assert bytes(m.payload) == b"a"
    assert "was deleted" not in caplog.text
    op.close()


def test_truncate_reads_nothing_below_the_oldest_kept_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # truncate's txn probes (adaptor/_truncate.py) started below the oldest kept message, at the ID given or at a
    # deleted last-confirmed ID, and localfs warned "scanner 'truncate-probe': message ID .. was deleted" about a
    # scanner the user never opened. Truncating at or below the oldest kept message is a no-op.
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096)
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    rs = w.append_messages([_ins(b"z" * 200) for _ in range(100)])  # one batch: all share an early last-confirmed
    w.truncate(rs[60].message_id)
    kept = _segments(tmp_path)
    with caplog.at_level("WARNING", logger="wal"):
        w.truncate(rs[3].message_id)  # below the oldest kept message
        assert _segments(tmp_path) == kept
        w.truncate(rs[90].message_id)  # above it, but the last-confirmed ID of rs[90] is deleted
    assert len(_segments(tmp_path)) < len(kept)
    assert "was deleted" not in caplog.text and "truncate-probe" not in caplog.text
    assert [m.message_id for m in _delivered(w)][-10:] == [r.message_id for r in rs[-10:]]
    op.close()


def test_a_txn_whose_body_was_deleted_under_a_slow_reader_is_not_delivered_in_part(tmp_path: Path) -> None:
    """A follower had read a txn's begin when a truncate (or retention) deleted the segment with the rest of its
    body: it went on at the oldest segment kept (saying so) and delivered the TXN at its commit with part of its
    body, as if the txn had been that. A txn is all or nothing: the part kept is not delivered either."""
    opener = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096,
                                                        time_tick_interval=0.01)
    with opener, opener.open(OpenOption(channel=PChannelInfo(name="c", term=1))) as w:
        ro = opener.open(OpenOption(channel=PChannelInfo(name="c", access_mode=AccessMode.RO)))
        t = w.begin_txn(vchannel="v", keepalive=30.0)
        t.append(_ins(b"b1" * 1500))  # fills the first segment
        s = ro.read(ReadOption(deliver_policy=DeliverPolicy.all()))
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while s.mode == "catchup" and time.monotonic() < deadline:  # until it has read the begin and b1
            try:
                got.append(s.recv(timeout=0.2))
            except TimeoutError:
                break
        t.append(_ins(b"b2" * 1500))  # the second segment
        t.append(_ins(b"b3"))  # the third, with the commit and a message after it
        t.commit()
        cut = w.append(_ins(b"after"))
        w.truncate(cut.message_id)  # deletes the segments before the third
        while True:
            m = s.recv(timeout=5)
            if m.message_type is not MessageType.TIME_TICK:
                got.append(m)
            if m.message_type is MessageType.INSERT and bytes(m.payload) == b"after":
                break
        s.close()
        ro.close()
    txns = [m for m in got if m.message_type is MessageType.TXN]
    assert [len(m.messages) for m in txns] in ([], [3]), [[bytes(x.payload)[:2] for x in m.messages] for m in txns]
