"""Deterministic regressions for what the state machine (test_reliability_model.py) found.

Issue #6 b: ``truncate(x)`` deleted the begin (and body) of a committed txn whose commit is at or after ``x``, so
the TXN message with ID ``>= x`` could no longer be assembled and readers silently lost it. The state machine hit it
on memory (exact cut) by truncating at a plain append's last-confirmed ID, which was a commit's ID; localfs hits
it when a segment boundary falls inside the txn. The rule now (README "Truncation"): a txn is kept whole when its
commit is at or after ``x``, or when it is still open; what lies wholly before ``x`` may still go.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy


@pytest.fixture(params=["memory", "localfs"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    opts: dict[str, Any] = {"time_tick_interval": 0.05}
    if request.param == "localfs":
        opts.update(root=str(tmp_path), segment_bytes=4096)
    op = registry.must_get_builder(request.param).build(**opts)
    yield op
    op.close()


def _open(op: Any, term: int = 1) -> Any:
    return op.open(OpenOption(channel=PChannelInfo(name="p1", term=term)))


def _msg(key: str, size: int = 0) -> MutableMessage:
    # Large payloads let a txn span several 4 KiB localfs segments, so whole-segment deletion can cut inside it.
    return MutableMessage(MessageType.INSERT, key.encode() + b"." * size, {"k": key}, "v1")


def _read_all(w: Any, want_last: Any) -> list[tuple[str, tuple[str, ...]]]:
    """(type, keys) of every user message until the one with ID ``want_last`` (ticks skipped)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            m = s.recv(timeout=max(0.001, deadline - time.monotonic()))
            if m.message_type is MessageType.TXN:
                out.append(("TXN", tuple(x.properties["k"] for x in m.messages)))
            elif m.message_type is MessageType.INSERT:
                out.append(("INSERT", (m.properties["k"],)))
            if m.message_id == want_last:
                break
    finally:
        s.close()
    return out


def _fill(w: Any, n: int) -> None:
    for i in range(n):
        w.append(_msg(f"pre{i}", 1500))


def test_truncate_at_a_commit_keeps_the_whole_txn(opener: Any) -> None:
    w = _open(opener)
    _fill(w, 6)
    t = w.begin_txn("v1", keepalive=30.0)
    for i in range(4):
        t.append(_msg(f"b{i}", 1500))  # 4 x 1.5 KiB: the begin and the commit are in different localfs segments
    c = t.commit()
    last = w.append(_msg("after")).message_id
    w.truncate(c.message_id)
    got = _read_all(w, last)
    assert ("TXN", ("b0", "b1", "b2", "b3")) in got, got
    assert got[-2:] == [("TXN", ("b0", "b1", "b2", "b3")), ("INSERT", ("after",))]
    # Still a truncation: the plain messages wholly before the txn may go (memory drops them exactly).
    if w.wal_name == "memory":
        assert got[0] == ("TXN", ("b0", "b1", "b2", "b3")), got


def test_truncate_at_a_last_confirmed_id_that_is_a_commit(opener: Any) -> None:
    """The state machine's shrunk case: truncate at the last-confirmed ID of a plain append (the commit before
    it), after a reopen; a read-all must still hold the txn."""
    w = _open(opener)
    w.append(_msg("a"))
    t = w.begin_txn("v1", keepalive=30.0)
    t.append(_msg("t1", 1500))
    out = w.append(_msg("outside", 1500))  # appended while the txn is open
    c = t.commit()
    w.close()
    w = _open(opener, term=2)
    w.truncate(c.message_id)
    last = w.append(_msg("z")).message_id
    got = _read_all(w, last)
    assert got[-3:] == [("INSERT", ("outside",)), ("TXN", ("t1",)), ("INSERT", ("z",))], got
    assert out.message_id < c.message_id


def test_truncate_inside_an_open_txn_keeps_it(opener: Any) -> None:
    """Truncating at a body message's ID, or at a plain message appended while the txn is open: the txn
    commits later and must still be delivered whole."""
    w = _open(opener)
    _fill(w, 3)
    t = w.begin_txn("v1", keepalive=30.0)
    body = t.append(_msg("b0", 1500))
    plain = w.append(_msg("mid", 1500))
    t.append(_msg("b1", 1500))
    w.truncate(body.message_id)
    w.truncate(plain.message_id)
    c = t.commit()
    got = _read_all(w, c.message_id)
    assert got[-2:] == [("INSERT", ("mid",)), ("TXN", ("b0", "b1"))], got


def test_truncate_still_drops_what_lies_wholly_before(opener: Any) -> None:
    """No txn around the cut: the cut is where the caller asked (memory keeps nothing before it)."""
    w = _open(opener)
    _fill(w, 12)
    rs = [w.append(_msg(f"k{i}")) for i in range(5)]
    time.sleep(0.2)  # a few ticks: the last-confirmed ID passes rs[2]
    w.truncate(rs[2].message_id)
    got = _read_all(w, rs[-1].message_id)
    assert got[-3:] == [("INSERT", (f"k{i}",)) for i in range(2, 5)]
    if w.wal_name == "memory":
        assert got == [("INSERT", (f"k{i}",)) for i in range(2, 5)], got
    else:
        assert len(got) < 17, got  # whole segments before the cut are gone
