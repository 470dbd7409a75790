"""The time-tick interceptor, the sync operator and tick messages (milvus-tests §I.7, §I.8), with fakes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from wal.errors import InvalidTxnStateError, TxnExpiredError, WALTimeoutError
from wal.interceptors import AppendOutcome
from wal.interceptors.timetick import AckManager, HybridClock, MVCCManager
from wal.interceptors.timetick._interceptor import TimeTickInterceptor
from wal.interceptors.timetick._message import new_time_tick_message
from wal.interceptors.timetick._sync_operator import SyncMode, TimeTickSyncOperator
from wal.interceptors.txn import TxnManager
from wal.message import IntMessageID, MessageID, MessageType, MutableMessage, TxnContext
from wal.utility import WriteAheadBuffer


class ID(IntMessageID):
    WAL_NAME = "tttest"


class World:
    """A time-tick interceptor and sync operator over a fake backend (a list), like the adaptor wires them."""

    def __init__(self, now_ms: list[int] | None = None) -> None:
        self.now = now_ms if now_ms is not None else [1_000]
        self.clock = HybridClock(0, now_ms=lambda: self.now[0])
        first = new_time_tick_message(self.clock.allocate(), None, True).into_immutable(ID(0))
        self.log: list[MutableMessage] = []
        self.wab = WriteAheadBuffer("t", 1 << 20, 30.0, first)
        self.mvcc = MVCCManager(first.time_tick)
        self.ack = AckManager(self.clock, ID(0))
        self.txns = TxnManager(self.clock, 10.0)
        self.ic = TimeTickInterceptor(self.ack, self.txns, self.mvcc, self.clock)
        self.backend_calls = 0
        self.op = TimeTickSyncOperator(
            self.ack, self.txns, self.mvcc, self.wab, self.append_tick, self.ic.take_written
        )
        self.first = first

    def final(self, ms: Sequence[MutableMessage]) -> list[AppendOutcome]:
        out: list[AppendOutcome] = []
        for m in ms:
            if m.not_persisted:
                assert m.last_confirmed_message_id is not None
                out.append(m.last_confirmed_message_id)
                continue
            self.backend_calls += 1
            self.log.append(m)
            out.append(ID(len(self.log)))
        return out

    def append_tick(self, m: MutableMessage) -> MessageID:
        r = self.ic.do_append_batch([m], self.final)[0]
        assert not isinstance(r, BaseException)
        return r

    def append(self, *ms: MutableMessage) -> list[AppendOutcome]:
        out = self.ic.do_append_batch(ms, self.final)
        self.op.sync(SyncMode.BATCH)
        return out


def ins(v: str = "v1", ctx: TxnContext | None = None) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"x", vchannel=v, txn_ctx=ctx)


def test_tick_message() -> None:
    """I.8."""
    p = new_time_tick_message(10, ID(3), True)
    assert p.message_type is MessageType.TIME_TICK and not p.not_persisted and p.vchannel == ""
    assert p.into_immutable(ID(5)).last_confirmed_message_id == ID(3)
    n = new_time_tick_message(10, ID(3), False)
    assert n.not_persisted and n.into_immutable(ID(3)).last_confirmed_message_id == ID(3)
    s = new_time_tick_message(10, None, True)
    assert s.into_immutable(ID(9)).last_confirmed_message_id == ID(9)


def test_sync_operator_persists_only_after_data() -> None:
    """I.7: an idle sync is not persisted but feeds the buffer; a forced one is persisted."""
    w = World()
    new_ts = w.clock.allocate()
    with pytest.raises(WALTimeoutError):
        w.wab.read_from_exclusive_time_tick(new_ts, timeout=0.02)
    w.now[0] += 1
    t = w.op.sync(SyncMode.PERIODIC)
    assert t is not None and t.not_persisted and w.backend_calls == 0
    r = w.wab.read_from_exclusive_time_tick(new_ts, timeout=0.02)
    assert r.next(0.02).time_tick > new_ts
    t = w.op.sync(SyncMode.FORCE)
    assert t is not None and t.is_persisted and w.backend_calls == 1
    # Data written: the batch sync is not persisted, the next periodic one is, the one after is not.
    w.append(ins())
    assert w.backend_calls == 2
    assert w.op.sync(SyncMode.PERIODIC).is_persisted  # type: ignore[union-attr]
    assert w.backend_calls == 3
    assert w.op.sync(SyncMode.PERIODIC).not_persisted  # type: ignore[union-attr]
    assert w.backend_calls == 3


def test_ticks_strictly_increase_and_lc_is_behind() -> None:
    w = World()
    outs = w.append(*(ins() for _ in range(10)))
    msgs = w.log[-10:]
    tts = [m.time_tick for m in msgs]
    assert tts == sorted(set(tts)) and tts[0] > w.first.time_tick
    for m, mid in zip(msgs, outs, strict=True):
        assert isinstance(mid, MessageID)
        assert m.last_confirmed_message_id is not None and m.last_confirmed_message_id <= mid
    # Everything acknowledged reached the buffer, in order.
    r = w.wab.read_from_exclusive_time_tick(w.first.time_tick, timeout=0.1)
    got = r.next_batch(100, 0.1)
    assert [m.time_tick for m in got if m.message_type is MessageType.INSERT] == tts


def test_txn_lifecycle_and_last_confirmed_holds_at_open_begin() -> None:
    w = World()
    [b] = w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="v1"))
    assert isinstance(b, MessageID)
    ctx = w.log[-1].txn_ctx
    assert ctx is not None and ctx.keepalive == 10.0
    w.append(ins(ctx=ctx))
    for _ in range(3):
        w.append(ins())
    # The begin is open: later messages' last-confirmed IDs do not pass it.
    w.append(ins())
    assert w.log[-1].last_confirmed_message_id is not None and w.log[-1].last_confirmed_message_id < b
    [c] = w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v1", txn_ctx=ctx))
    assert isinstance(c, MessageID)
    w.append(ins())
    w.append(ins())
    assert w.log[-1].last_confirmed_message_id is not None and w.log[-1].last_confirmed_message_id > b
    # The txn is over: body and second commit are refused.
    [e] = w.append(ins(ctx=ctx))
    assert isinstance(e, TxnExpiredError | InvalidTxnStateError)
    [e] = w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v1", txn_ctx=ctx))
    assert isinstance(e, TxnExpiredError | InvalidTxnStateError)


def test_txn_expiry_and_unknown_txn() -> None:
    w = World()
    w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="v1", txn_ctx=TxnContext(-1, 0.05)))
    ctx = w.log[-1].txn_ctx
    assert ctx is not None and ctx.keepalive == 0.05
    w.now[0] += 100  # 100 ms later: past the keepalive
    [e] = w.append(ins(ctx=ctx))
    assert isinstance(e, TxnExpiredError)
    [e] = w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v1", txn_ctx=ctx))
    assert isinstance(e, TxnExpiredError)
    [e] = w.append(MutableMessage(MessageType.ROLLBACK_TXN, b"", vchannel="v1", txn_ctx=TxnContext(12345, 1)))
    assert isinstance(e, TxnExpiredError)
    w.op.sync(SyncMode.PERIODIC)
    assert len(w.txns) == 0  # expired sessions are cleaned up by the tick


def test_rollback_and_mvcc() -> None:
    w = World()
    w.append(ins("a"))
    tt_a = w.log[-1].time_tick
    # After the batch sync, the write is covered by a tick: confirmed.
    tt, confirmed = w.mvcc.get_mvcc_of_vchannel("a")
    assert confirmed and tt >= tt_a
    w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="b"))
    ctx = w.log[-1].txn_ctx
    w.append(ins("b", ctx))
    [rb] = w.append(MutableMessage(MessageType.ROLLBACK_TXN, b"", vchannel="b", txn_ctx=ctx))
    assert isinstance(rb, MessageID)
    w.op.sync(SyncMode.PERIODIC)
    assert len(w.txns) == 0


def test_single_message_path() -> None:
    w = World()
    mid = w.ic.do_append(ins(), lambda m: ID(99))
    assert mid == ID(99)
    with pytest.raises(TxnExpiredError):
        w.ic.do_append(ins(ctx=TxnContext(5, 1.0)), lambda m: ID(100))


@pytest.mark.parametrize("barrier", [1 << 64, 1 << 63, (1 << 63) - 1, 1 << 62, -1, 1.5])
def test_a_barrier_that_is_not_a_u64_time_tick_is_refused_before_it_reaches_the_clock(barrier: object) -> None:
    """The clock jumps to a barrier: one at 2**64 left every later tick unstorable (the memory backend stored them,
    then its channel could not be opened again: a bare OverflowError in the write-ahead buffer); one just below 2**63
    took the next tick to 2**63, a txn ID localfs cannot store (an i64)."""
    from wal import OpenOption, PChannelInfo, registry
    from wal.errors import InvalidArgumentError

    with registry.must_get_builder("memory").build() as opener:
        with opener.open(OpenOption(channel=PChannelInfo(name="p", term=1))) as w:
            m = MutableMessage(MessageType.INSERT, b"a", vchannel="v")
            with pytest.raises(InvalidArgumentError, match="barrier"):
                m.with_barrier_time_tick(barrier)  # type: ignore[arg-type]
            w.append(m)
            assert w.append(MutableMessage(MessageType.INSERT, b"b", vchannel="v")).time_tick < 1 << 64
        with opener.open(OpenOption(channel=PChannelInfo(name="p", term=2))) as w:
            assert w.append(MutableMessage(MessageType.INSERT, b"c", vchannel="v")).time_tick < 1 << 64


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_wall_clock_past_year_3084_for_a_moment_leaves_the_wal_working(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ticks are ``ms << 18``: a clock past 2**46 ms moved the WAL's clock past the u64 for good (localfs refused every
    later append until a reopen, the memory backend stored them and then could not open the channel again); past
    2**45 ms, past the i64 txn IDs (drawn from the clock) localfs stores: no txn could ever begin again."""
    import time

    from wal import OpenOption, PChannelInfo, registry

    real, offset = time.time_ns, [0]
    monkeypatch.setattr(time, "time_ns", lambda: real() + offset[0])
    options: dict[str, object] = {"root": str(tmp_path), "segment_bytes": 1 << 16} if backend == "localfs" else {}
    with registry.must_get_builder(backend).build(**options) as opener:
        with opener.open(OpenOption(channel=PChannelInfo(name="p", term=1))) as w:
            ticks = [w.append(MutableMessage(MessageType.INSERT, b"a", vchannel="v")).time_tick]
            offset[0] = (2**45 + 1_000) * 10**6 - real()
            ticks += [w.append(MutableMessage(MessageType.INSERT, b"b", vchannel="v")).time_tick for _ in range(3)]
            with w.begin_txn(vchannel="v") as txn:  # its ID is a tick: localfs stores it as an i64
                txn.append(MutableMessage(MessageType.INSERT, b"t", vchannel="v"))
            offset[0] = 0
            ticks += [w.append(MutableMessage(MessageType.INSERT, b"c", vchannel="v")).time_tick for _ in range(3)]
        with opener.open(OpenOption(channel=PChannelInfo(name="p", term=2))) as w:
            ticks.append(w.append(MutableMessage(MessageType.INSERT, b"d", vchannel="v")).time_tick)
            with w.begin_txn(vchannel="v") as txn:
                txn.append(MutableMessage(MessageType.INSERT, b"t", vchannel="v"))
    assert ticks == sorted(set(ticks)) and ticks[-1] < 1 << 63
