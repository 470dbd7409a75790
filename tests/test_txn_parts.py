"""Transaction sessions and the txn manager (milvus-tests §I.5)."""

from __future__ import annotations

import threading
import time

import pytest

from wal.errors import InvalidArgumentError, InvalidTxnStateError, TxnExpiredError, WALTimeoutError
from wal.interceptors.timetick import HybridClock
from wal.interceptors.txn import TxnManager, TxnSession
from wal.message import TxnContext, TxnState, add_physical_ms

EXP = add_physical_ms(0, 10)  # begin at 0 plus a 10 ms keepalive


def new_session(txn_id: int = 1) -> TxnSession:
    return TxnSession(TxnContext(txn_id, 0.010), 0)


def test_session_begin_and_expiry() -> None:
    s = new_session()
    assert s.state is TxnState.BEGIN
    assert not s.is_expired_or_done(0)
    assert not s.is_expired_or_done(EXP - 1)
    assert s.is_expired_or_done(EXP)
    s.begin_rollback()
    assert s.state is TxnState.ROLLBACKED
    assert s.is_expired_or_done(0)


def test_session_expiry_is_sticky() -> None:
    s = new_session()
    s.begin_done()
    assert s.state is TxnState.IN_FLIGHT
    with pytest.raises(TxnExpiredError):
        s.add_new_message(EXP)
    with pytest.raises(TxnExpiredError):
        s.add_new_message(0)
    with pytest.raises(TxnExpiredError):
        s.request_commit_and_wait(0)


def test_session_commit() -> None:
    s = new_session()
    with pytest.raises(InvalidTxnStateError):
        s.add_new_message(0)  # not begun yet
    s.begin_done()
    s.add_new_message(0)
    s.add_new_message_done_and_keepalive(5)
    assert s.expired_time_tick == add_physical_ms(5, 10)  # keepalive extended from the last body tick
    s.request_commit_and_wait(0)
    assert s.state is TxnState.ON_COMMIT
    with pytest.raises(InvalidTxnStateError):
        s.add_new_message(1)
    s.commit_done()
    assert s.state is TxnState.COMMITTED
    assert s.is_expired_or_done(0)
    with pytest.raises(InvalidTxnStateError):
        s.commit_done()


def test_session_commit_waits_for_in_flight_body() -> None:
    s = new_session()
    s.begin_done()
    s.add_new_message(0)
    with pytest.raises(WALTimeoutError):
        s.request_commit_and_wait(0, timeout=0.005)
    with pytest.raises(TxnExpiredError):
        s.request_commit_and_wait(EXP)

    s = TxnSession(TxnContext(2, 5.0), 0)
    s.begin_done()
    s.add_new_message(0)
    s.add_new_message(1)
    done = threading.Event()

    def commit() -> None:
        s.request_commit_and_wait(2, timeout=5)
        done.set()

    th = threading.Thread(target=commit)
    th.start()
    s.add_new_message_done_and_keepalive(1)
    assert not done.wait(0.02)
    s.add_new_message_fail()
    assert done.wait(3)
    th.join()
    assert s.state is TxnState.ON_COMMIT


def test_session_rollback() -> None:
    s = new_session()
    s.begin_done()
    with pytest.raises(TxnExpiredError):
        s.request_rollback(EXP)
    s = new_session()
    s.begin_done()
    s.request_rollback(0)
    assert s.state is TxnState.ON_ROLLBACK
    assert not s.is_expired_or_done(0)
    with pytest.raises(InvalidTxnStateError):
        s.request_rollback(0)
    s.rollback_done()
    assert s.state is TxnState.ROLLBACKED
    assert s.is_expired_or_done(0)


def test_session_cleanups_run_once() -> None:
    s = new_session()
    calls: list[int] = []
    s.register_cleanup(lambda: calls.append(1))
    s.register_cleanup(lambda: calls.append(2))
    s.begin_done()
    s.request_commit_and_wait(0)
    s.commit_done()
    s.cleanup()
    assert calls == [1, 2]


# -- manager ---------------------------------------------------------------------------------------------------


def test_manager_sessions_close_after_cleanup() -> None:
    m = TxnManager(HybridClock())
    remaining = [20]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def dec() -> None:
        with lock:
            remaining[0] -= 1

    def run(i: int) -> None:
        try:
            s = m.begin_new_txn(0, keepalive=(i + 1) / 1000)
            s.begin_done()
            assert m.get_session(s.txn_ctx.txn_id) is s
            s.register_cleanup(dec)
            if i % 3 == 0:
                s.request_commit_and_wait(0)
                s.commit_done()
            elif i % 3 == 1:
                s.request_rollback(0)
                s.rollback_done()
        except BaseException as e:
            errors.append(e)

    ths = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert not errors, errors
    assert len(m) == 20

    closed = threading.Event()
    result: list[bool] = []

    def close() -> None:
        result.append(m.graceful_close())
        closed.set()

    th = threading.Thread(target=close)
    th.start()
    assert not closed.wait(0.01)
    m.cleanup_txn_until(add_physical_ms(0, 10))
    assert not closed.wait(0.01)
    assert len(m) == 3  # txns 11, 14, 17: left open, not expired yet
    m.cleanup_txn_until(add_physical_ms(0, 20))
    assert closed.wait(3)
    th.join()
    assert result == [True]
    assert remaining[0] == 0
    with pytest.raises(TxnExpiredError):
        m.begin_new_txn(1)


def test_manager_keepalive_and_lookup() -> None:
    m = TxnManager(HybridClock(), default_keepalive=7.0)
    with pytest.raises(InvalidArgumentError):
        m.begin_new_txn(1, keepalive=0.0005)
    assert m.begin_new_txn(1, keepalive=None).txn_ctx.keepalive == 7.0
    assert m.begin_new_txn(1, keepalive=0).txn_ctx.keepalive == 7.0
    assert m.begin_new_txn(1, keepalive=0.001).txn_ctx.keepalive == 0.001
    with pytest.raises(TxnExpiredError):
        m.get_session(12345)
    assert m.graceful_close(timeout=0.01) is False
    m.cleanup_txn_until(add_physical_ms(1, 10_000))
    assert m.graceful_close(timeout=1) is True


def test_manager_txn_ids_unique_across_restarts() -> None:
    clock = HybridClock()
    ids = [TxnManager(clock).begin_new_txn(1).txn_ctx.txn_id for _ in range(50)]
    assert len(set(ids)) == 50
    restarted = TxnManager(HybridClock(last_time_tick=clock.last_time_tick, now_ms=lambda: 0))
    assert restarted.begin_new_txn(1).txn_ctx.txn_id > max(ids)


def test_manager_cleanup_may_call_back_into_manager() -> None:
    m = TxnManager(HybridClock())
    s = m.begin_new_txn(0, keepalive=0.001)
    seen: list[int] = []
    s.register_cleanup(lambda: seen.append(len(m)))
    t0 = time.monotonic()
    m.cleanup_txn_until(add_physical_ms(0, 1))
    assert seen == [0]
    assert time.monotonic() - t0 < 3


def test_a_txn_begun_while_the_wal_closes_is_refused_with_shutdown_error() -> None:
    """It said TxnExpiredError, which reads as the caller's txn having timed out; the WAL is closing."""
    from wal.errors import ShutdownError

    m = TxnManager(HybridClock())
    m.graceful_close(0.01)
    with pytest.raises(ShutdownError, match="closing"):
        m.begin_new_txn(1)


def test_a_txn_expires_after_its_keepalive_while_the_wall_clock_is_behind_the_last_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DESIGN: a txn not committed within its keepalive expires. With the wall clock stepped back an hour, the
    ticks stood still (the last one plus one) and a commit a second after a 0.2 s keepalive went through."""
    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    wall_offset, elapsed_offset = [0], [0]
    real_wall, real_elapsed = time.time_ns, time.monotonic_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_wall() + wall_offset[0])
    monkeypatch.setattr(time, "monotonic_ns", lambda: real_elapsed() + elapsed_offset[0])
    with registry.must_get_builder("memory").build() as opener:
        with opener.open(OpenOption(channel=PChannelInfo(name="p", term=1))) as w:
            w.append(MutableMessage(MessageType.INSERT, b"a", vchannel="v"))
            wall_offset[0] = -3600 * 10**9
            txn = w.begin_txn(vchannel="v", keepalive=0.2)
            txn.append(MutableMessage(MessageType.INSERT, b"b", vchannel="v"))
            held = w.append(MutableMessage(MessageType.INSERT, b"c", vchannel="v")).last_confirmed_message_id
            elapsed_offset[0] = 10**9  # a second passes (the wall clock, an hour behind, cannot tell)
            for _ in range(3):  # the open txn no longer holds the last-confirmed ID (truncation, retention) back
                r = w.append(MutableMessage(MessageType.INSERT, b"d", vchannel="v"))
            assert r.last_confirmed_message_id > held
            with pytest.raises(TxnExpiredError):
                txn.commit()


def _count_calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[int]:
    calls = [0]
    orig = getattr(cls, name)

    def counted(self: object, *a: object) -> object:
        calls[0] += 1
        return orig(self, *a)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_manager_cleanup_does_not_look_at_every_open_txn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleanup runs after every batch; it looked at every open session, so an append cost O(open txns)."""
    m = TxnManager(HybridClock())
    for _ in range(1000):
        m.begin_new_txn(0, keepalive=60).begin_done()
    done = m.begin_new_txn(0, keepalive=60)
    done.begin_done()
    done.request_commit_and_wait(0)
    done.commit_done()
    calls = _count_calls(monkeypatch, TxnSession, "is_expired_or_done")
    for i in range(100):
        m.cleanup_txn_until(add_physical_ms(0, i))
    assert len(m) == 1000  # the committed one is gone, none expired
    assert calls[0] <= 10  # 100,000 before


def test_manager_heap_stays_bounded_by_the_open_txns() -> None:
    """The heap of deadlines kept an entry for every txn begun until its deadline came, and was cleared only when no
    session was open: with a txn always open and a long keepalive, the WAL held one entry per txn begun within a
    keepalive (an hour at 1,000 txns a second: 3.6 M entries)."""
    m = TxnManager(HybridClock())
    m.begin_new_txn(0, keepalive=3600).begin_done()
    for i in range(5000):
        s = m.begin_new_txn(0, keepalive=3600)
        s.begin_done()
        s.request_commit_and_wait(0)
        s.commit_done()
        m.cleanup_txn_until(add_physical_ms(0, i))
    assert len(m) == 1
    assert len(m._deadlines) <= 200  # 5,001 before


def test_manager_cleanup_forgets_exactly_what_a_full_scan_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random begins, renewals, commits, rollbacks and cleanups: after each cleanup the open sessions are those a
    look at every one (the code before the heap) keeps."""
    import random

    rng = random.Random(7)
    m = TxnManager(HybridClock())
    live: list[TxnSession] = []
    tick = 0
    for _ in range(3000):
        op = rng.random()
        tick = add_physical_ms(tick, rng.randrange(0, 4))
        if op < 0.3:
            s = m.begin_new_txn(tick, keepalive=rng.choice([0.002, 0.005, 0.02]))
            s.begin_done()
            live.append(s)
        elif op < 0.6 and live:
            s = rng.choice(live)
            try:
                s.add_new_message(tick)
            except (TxnExpiredError, InvalidTxnStateError):
                continue
            s.add_new_message_done_and_keepalive(tick)
        elif op < 0.7 and live:
            s = rng.choice(live)
            try:
                s.request_commit_and_wait(tick)
            except (TxnExpiredError, InvalidTxnStateError):
                continue
            s.commit_done()
        elif op < 0.8 and live:
            s = rng.choice(live)
            try:
                s.request_rollback(tick)
            except (TxnExpiredError, InvalidTxnStateError):
                continue
            s.rollback_done()
        else:
            at = add_physical_ms(tick, rng.randrange(-3, 3))
            want = {t for t, s in m._sessions.items() if not s.is_expired_or_done(at)}
            m.cleanup_txn_until(at)
            assert set(m._sessions) == want
            live = [s for s in live if s.txn_id in want]
