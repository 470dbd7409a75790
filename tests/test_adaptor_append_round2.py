"""The append path's second round of shortcuts: the chain bound straight to timetick when only the built-ins run,
the one-message paths, and the per-batch tick left as fields in the write-ahead buffer. Each must read as before.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy


class _Counter:
    """A named user interceptor (so the chain times it) that counts what passes."""

    name = "counter"

    def __init__(self) -> None:
        self.seen = 0

    def build(self, param: Any) -> _Counter:
        return self

    def do_append(self, m: MutableMessage, nxt: Any) -> Any:
        if m.message_type is not MessageType.TIME_TICK:
            self.seen += 1
        return nxt(m)

    def close(self) -> None:
        pass


def msg(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i, None, "v1")


@pytest.fixture
def wal_of(tmp_path: Any) -> Iterator[Any]:
    openers: list[Any] = []
    wals: list[Any] = []

    def make(*interceptors: Any, **opts: Any) -> Any:
        op = registry.must_get_builder("localfs", *interceptors).build(
            root=str(tmp_path / str(len(openers))), sync="never", **{"segment_bytes": 1 << 20, **opts}
        )
        openers.append(op)
        w = op.open(OpenOption(channel=PChannelInfo("r2", 1)))
        wals.append(w)
        return w

    yield make
    for w in wals:
        w.close()
    for op in openers:
        op.close()


def test_builtins_only_bind_timetick_directly_and_user_interceptors_keep_the_chain(wal_of: Any) -> None:
    plain = wal_of()
    assert isinstance(plain._append_chain, functools.partial)  # no redo, lambda or timing layer
    counter = _Counter()
    user = wal_of(counter)
    assert not isinstance(user._append_chain, functools.partial)
    for w in (plain, user):
        rs = [w.append(msg(i)) for i in range(5)] + w.append_messages([msg(i) for i in range(5, 8)])
        ticks = [r.time_tick for r in rs]
        assert ticks == sorted(set(ticks)) and all(r.last_confirmed_message_id <= r.message_id for r in rs)
    assert counter.seen == 8 and user._chain.timings["counter"][0] > 0


@pytest.mark.parametrize("reader_first", [True, False])
def test_reader_opened_after_appends_sees_every_message_once_in_order(wal_of: Any, reader_first: bool) -> None:
    """A reader opened later from the start, and one tailing from the newest tick, each see every message once,
    in tick order: when a reader was there during the appends, whose messages wait pending in the write-ahead
    buffer, and when none was, so that the buffer kept nothing (``on_demand``)."""
    w = wal_of(time_tick_interval=5.0)  # no periodic tick: everything after the first batch is pending
    early = w.read(ReadOption(deliver_policy=DeliverPolicy.latest())) if reader_first else None
    first = [w.append(msg(i)) for i in range(100)]
    if reader_first:
        assert w._wab._pending  # the shortcut is in use
    else:
        assert not w._wab._pending and len(w._wab) == 1  # nothing kept but the first tick
    latest = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    everything = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    more: list[Any] = []
    t = threading.Thread(target=lambda: more.extend(w.append(msg(100 + i)) for i in range(50)))
    t.start()
    t.join(10)
    assert len(more) == 50

    def data(s: Any, n: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < n:
            m = s.recv(timeout=5)
            if m.message_type is not MessageType.TIME_TICK:
                out.append(m)
        return out

    got_all = data(everything, 150)
    assert [m.message_id for m in got_all] == [r.message_id for r in first + more]
    assert [m.payload for m in got_all] == [b"%d" % i for i in range(150)]
    got_latest = data(latest, 50)
    assert [m.message_id for m in got_latest] == [r.message_id for r in more]
    assert [m.time_tick for m in got_latest] == sorted({m.time_tick for m in got_latest})
    assert everything.stats["to_tailing"] == 1  # it caught up, then switched to the buffer
    latest.close()
    everything.close()
    if early is not None:
        assert [m.message_id for m in data(early, 150)] == [r.message_id for r in first + more]
        early.close()
