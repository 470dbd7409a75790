"""Hybrid clock, ack manager, ack details and MVCC manager (milvus-tests §I.2-I.4)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from _utility_msgs import UID, data, tick

from wal.errors import InvalidArgumentError
from wal.interceptors.timetick import AckDetail, AckDetails, Acker, AckManager, HybridClock, MVCCManager
from wal.interceptors.txn import TxnManager
from wal.message import MessageType, MutableMessage, TxnContext, compose_ts, physical_ms


def counter_clock() -> HybridClock:
    """Milvus's fake TSO: 1, 2, 3..."""
    return HybridClock(0, now_ms=lambda: 0)


# -- clock -----------------------------------------------------------------------------------------------------


def test_clock_follows_wall_time_and_never_goes_back() -> None:
    now = [1_000]
    c = HybridClock(0, now_ms=lambda: now[0])
    a = c.allocate()
    assert a == compose_ts(1_000)
    b = c.allocate()
    assert b == a + 1  # same millisecond: logical part
    now[0] = 1_005
    d = c.allocate()
    assert d == compose_ts(1_005)
    now[0] = 900  # wall clock goes back
    e, f = c.allocate(), c.allocate()
    assert d < e < f
    assert physical_ms(f) == 1_005
    now[0] = 2_000
    assert c.allocate() == compose_ts(2_000)


def test_clock_behind_the_last_tick_goes_on_at_half_the_pace_of_elapsed_time() -> None:
    """A wall clock stepped back (or behind a recovered tick) froze the physical part for the length of the step:
    keepalives counted in ticks stood still too. Now it goes on from where it stood at half the monotonic pace, so
    that the wall clock catches up after twice the step and leads again (at the full pace it never would: the ticks
    stayed ahead by the step for good)."""
    wall, elapsed = [10_000], [0]
    c = HybridClock(0, now_ms=lambda: wall[0], elapsed_ms=lambda: elapsed[0])
    a = c.allocate()
    step = 3_600_000
    wall[0] -= step  # stepped back an hour
    b = c.allocate()
    assert b == a + 1
    elapsed[0] += 500
    wall[0] += 500
    d = c.allocate()
    assert physical_ms(d) == 10_250
    first = c.allocate_many(3)
    assert d < first and physical_ms(first + 2) == 10_250
    elapsed[0] += 2**20  # the burst above ran ahead of nothing: the pace holds
    wall[0] += 2**20
    assert physical_ms(c.allocate()) == 10_250 + 2**19
    restarted = HybridClock(compose_ts(10_000 + 2**21, 5), now_ms=lambda: 0, elapsed_ms=lambda: elapsed[0])
    e = restarted.allocate()
    assert e == compose_ts(10_000 + 2**21, 6)
    elapsed[0] += 1_000
    assert physical_ms(restarted.allocate()) == 10_000 + 2**21 + 500


def test_clock_behind_the_last_tick_is_caught_up_by_the_wall_clock_after_twice_the_step() -> None:
    """Ticks allocated steadily (the periodic tick does) while the wall clock is behind: at the full monotonic pace
    they stayed ahead of the wall clock by the step for good; at half the pace it leads again after twice the step."""
    step = 60_000
    wall, elapsed = [1_000_000], [0]
    c = HybridClock(0, now_ms=lambda: wall[0], elapsed_ms=lambda: elapsed[0])
    last = c.allocate()
    wall[0] -= step
    led_at = None
    while elapsed[0] < 4 * step:
        elapsed[0] += 100
        wall[0] += 100
        t = c.allocate()
        assert t > last
        last = t
        if t == compose_ts(wall[0]):
            led_at = elapsed[0]
            break
    assert led_at is not None and abs(led_at - 2 * step) <= 200, led_at


def test_clock_takes_a_wall_clock_past_the_u64_ticks_as_behind() -> None:
    wall, elapsed = [2**46 + 5], [0]
    c = HybridClock(compose_ts(1_000), now_ms=lambda: wall[0], elapsed_ms=lambda: elapsed[0])
    a = c.allocate()
    assert a == compose_ts(1_000) + 1
    elapsed[0] += 20
    assert physical_ms(c.allocate()) == 1_010 and physical_ms(c.allocate_with_barrier(0)) == 1_010
    for ms in (2**46, 2**45):
        fresh = HybridClock(0, now_ms=lambda: ms)
        assert 0 < fresh.allocate() < fresh.allocate_many(5) < 1 << 63


def test_clock_keeps_ticks_below_2_63_after_a_wall_clock_or_barrier_near_the_end() -> None:
    """Behind the wall clock the ticks go on from the last one: a wall clock in the last ms before 2**45 (or a
    barrier just below 2**63) left them 2 ms from 2**63, past which no txn can begin on localfs (i64 txn IDs)."""
    wall, elapsed = [2**45 - 1], [0]
    c = HybridClock(0, now_ms=lambda: wall[0], elapsed_ms=lambda: elapsed[0])
    ticks = [c.allocate()]
    wall[0] = 1_764_000_000_000  # set right
    for _ in range(10):
        elapsed[0] += 1
        ticks.append(c.allocate())
    c = HybridClock(0, now_ms=lambda: wall[0], elapsed_ms=lambda: elapsed[0])
    for barrier in (2**62 - 1, 2**63 - 2**18, 2**63 - 2):
        try:
            MutableMessage(MessageType.INSERT, b"").with_barrier_time_tick(barrier)
        except InvalidArgumentError:
            continue
        ticks.append(c.allocate_with_barrier(barrier))
        elapsed[0] += 1_000 * 365 * 86_400_000  # a thousand years of running, behind the wall clock all along
        ticks += [c.allocate(), c.allocate_many(2**20)]
    assert ticks == sorted(set(ticks)) and ticks[-1] < 1 << 63


def test_clock_starts_above_last_time_tick() -> None:
    last = compose_ts(5_000, 7)
    c = HybridClock(last, now_ms=lambda: 1_000)
    assert c.allocate() == last + 1
    assert c.last_time_tick == last + 1


def test_clock_barrier_and_observe() -> None:
    c = HybridClock(0, now_ms=lambda: 10)
    barrier = compose_ts(50)
    assert c.allocate_with_barrier(barrier) > barrier
    assert c.allocate_with_barrier(5) > barrier  # an old barrier changes nothing
    c.observe(compose_ts(90))
    assert c.allocate() == compose_ts(90) + 1


def test_clock_threads_get_unique_increasing_values() -> None:
    c = HybridClock()
    out: list[list[int]] = [[] for _ in range(8)]

    def run(i: int) -> None:
        for _ in range(2000):
            out[i].append(c.allocate())

    ths = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    for seq in out:
        assert seq == sorted(seq)
    allv = [v for seq in out for v in seq]
    assert len(set(allv)) == len(allv)


# -- ack manager (I.2) -----------------------------------------------------------------------------------------


def ts_of(details: list[AckDetail]) -> list[int]:
    return [d.begin_timestamp for d in details]


def test_ack_manager_all_acknowledged_prefix() -> None:
    am = AckManager(counter_clock(), UID(0))
    ackers = [am.allocate() for _ in range(10)]
    assert [a.timestamp for a in ackers] == list(range(1, 11))
    assert am.sync_and_get_acknowledged() == []
    ackers[1].ack()
    assert am.sync_and_get_acknowledged() == []
    ackers[3].ack()
    assert am.sync_and_get_acknowledged() == []
    ackers[0].ack()
    assert ts_of(am.sync_and_get_acknowledged()) == [1, 2]
    assert am.sync_and_get_acknowledged() == []
    for a in ackers[4:]:
        a.ack()
    assert am.sync_and_get_acknowledged() == []
    x, y = am.allocate(), am.allocate()
    assert am.sync_and_get_acknowledged() == []
    ackers[2].ack()
    got = am.sync_and_get_acknowledged()
    assert len(got) > 8
    assert ts_of(got) == sorted(ts_of(got))
    assert ts_of(got)[:8] == list(range(3, 11))
    assert am.sync_and_get_acknowledged() == []
    x.ack()
    y.ack()
    got = am.sync_and_get_acknowledged()
    assert len(got) > 2
    assert ts_of(got)[:2] == [x.timestamp, y.timestamp]
    assert am.not_acked_count == 0
    with pytest.raises(InvalidArgumentError):
        x.ack()


def test_ack_manager_last_confirmed_waits_for_unacked_and_open_txn() -> None:
    clock = counter_clock()
    am = AckManager(clock, UID(0))
    txns = TxnManager(clock)

    def ack_msg(a: Acker, mid: int, **kw: object) -> None:
        a.ack(message=data(a.timestamp, mid=mid), **kw)  # type: ignore[arg-type]

    a1, a2 = am.allocate(), am.allocate()
    assert a1.last_confirmed_message_id == UID(0)
    ack_msg(a2, 2)
    am.sync_and_get_acknowledged()
    assert am.last_confirmed_message_id == UID(0)  # a1 is still open: 2 cannot be confirmed
    ack_msg(a1, 1)
    am.sync_and_get_acknowledged()
    assert am.last_confirmed_message_id == UID(2)

    # An open txn holds the last-confirmed ID at its begin.
    begin = am.allocate()
    session = txns.begin_new_txn(begin.timestamp, keepalive=1000.0)
    session.begin_done()
    ack_msg(begin, 3, txn_session=session)
    after = am.allocate()
    ack_msg(after, 4)
    am.sync_and_get_acknowledged()
    am.sync_and_get_acknowledged()
    assert am.last_confirmed_message_id == UID(2)
    assert am.allocate().last_confirmed_message_id == UID(2)
    session.request_commit_and_wait(clock.last_time_tick)
    session.commit_done()
    am.sync_and_get_acknowledged()
    assert am.last_confirmed_message_id == UID(4)

    # Failed appends and syncs never move it.
    am.allocate().ack(error=RuntimeError("boom"))
    am.sync_and_get_acknowledged()
    am.sync_and_get_acknowledged()
    assert am.last_confirmed_message_id == UID(4)


def test_ack_manager_concurrency() -> None:
    clock = counter_clock()
    am = AckManager(clock, UID(0))
    n_plain, n_barrier = 200, 20
    id_clock = HybridClock(0, now_ms=lambda: 0)
    errors: list[BaseException] = []

    def plain(seed: int) -> None:
        try:
            a = am.allocate()
            time.sleep(random.Random(seed).uniform(0, 0.004))
            a.ack(message=data(a.timestamp, mid=id_clock.allocate()))
        except BaseException as e:
            errors.append(e)

    def barrier(i: int) -> None:
        try:
            a = am.allocate_with_barrier(i * 10)
            assert a.timestamp > i * 10
            a.ack(message=data(a.timestamp, mid=id_clock.allocate()))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=plain, args=(i,)) for i in range(n_plain)]
    threads += [threading.Thread(target=barrier, args=(i,)) for i in range(n_barrier)]
    seen: list[AckDetail] = []
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    last_ts = 0
    while sum(1 for d in seen if not d.is_sync) < n_plain + n_barrier and time.monotonic() < deadline:
        got = am.sync_and_get_acknowledged()
        for d in got:
            assert d.begin_timestamp > last_ts
            last_ts = d.begin_timestamp
        seen.extend(got)
        time.sleep(0.05)
    for t in threads:
        t.join()
    seen.extend(am.sync_and_get_acknowledged())
    assert not errors, errors
    assert sum(1 for d in seen if not d.is_sync) == n_plain + n_barrier
    assert am.not_acked_count == 0
    assert am.last_confirmed_message_id is not None


# -- ack details (I.3) -----------------------------------------------------------------------------------------


def test_ack_details() -> None:
    ad = AckDetails()
    assert ad.empty()
    assert len(ad) == 0
    ad.add_details([AckDetail(1, is_sync=True, last_confirmed_message_id=UID(1))])
    assert ad.is_no_persisted_message()
    assert ad.last_all_acknowledged_timestamp() == 1
    ad.add_details(
        [
            AckDetail(2, last_confirmed_message_id=UID(2), message=data(2)),
            AckDetail(3, last_confirmed_message_id=UID(1), message=data(3)),
        ]
    )
    assert not ad.is_no_persisted_message()
    assert ad.last_all_acknowledged_timestamp() == 3
    assert ad.earliest_last_confirmed_message_id() == UID(1)
    assert [m.time_tick for m in ad.messages()] == [2, 3]
    with pytest.raises(InvalidArgumentError):
        ad.add_details([AckDetail(1)])
    assert len(ad) == 3
    ad.clear()
    assert ad.empty()
    with pytest.raises(InvalidArgumentError):
        AckDetail(0)


def test_ack_options_apply() -> None:
    am = AckManager(counter_clock(), UID(0))
    clock = counter_clock()
    session = TxnManager(clock).begin_new_txn(1, keepalive=1.0)
    a, b, c, d = am.allocate(), am.allocate(), am.allocate(), am.allocate()
    err = RuntimeError("x")
    msg = data(1, mid=1)
    a.ack(message=msg, txn_session=session)
    b.ack(error=err)
    c.ack(sync=True)
    d.ack()
    got = am.sync_and_get_acknowledged()
    assert got[0].message is msg and got[0].txn_session is session
    assert got[1].error is err and got[1].message is None
    assert got[2].is_sync
    assert not got[3].is_sync and got[3].message is None and got[3].error is None
    assert got[3].end_timestamp == 4
    ad = AckDetails()
    ad.add_details(got[1:])
    assert ad.is_no_persisted_message()  # an error, a sync and an empty ack wrote nothing


# -- MVCC (I.4) ------------------------------------------------------------------------------------------------


def test_mvcc_manager() -> None:
    m = MVCCManager(100)
    assert m.get_mvcc_of_vchannel("vc1") == (100, True)
    m.update_mvcc(data(101, vchannel="vc1"))
    assert m.get_mvcc_of_vchannel("vc1") == (101, False)
    assert m.get_mvcc_of_vchannel("vc2") == (100, True)
    m.update_mvcc(tick(102))
    assert m.get_mvcc_of_vchannel("vc1") == (102, True)
    assert m.get_mvcc_of_vchannel("vc2") == (102, True)
    ctx = TxnContext(1, 1.0)
    m.update_mvcc(data(103, vchannel="vc1", txn=ctx))
    assert m.get_mvcc_of_vchannel("vc1") == (102, True)
    m.update_mvcc(data(104, vchannel="vc1", txn=ctx, mtype=MessageType.COMMIT_TXN))
    assert m.get_mvcc_of_vchannel("vc1") == (104, False)
    assert m.get_mvcc_of_vchannel("vc2") == (102, True)
    m.update_mvcc(tick(104))
    assert m.get_mvcc_of_vchannel("vc1") == (104, True)
    assert m.get_mvcc_of_vchannel("vc2") == (104, True)
    m.update_mvcc(tick(101))
    assert m.get_mvcc_of_vchannel("vc1") == (104, True)
    assert m.pchannel_time_tick == 104


def test_mvcc_all_vchannel_message_counts_for_every_vchannel() -> None:
    m = MVCCManager(10)
    m.update_mvcc(data(11, vchannel=""))
    assert m.get_mvcc_of_vchannel("a") == (11, False)
    assert m.get_mvcc_of_vchannel("b") == (11, False)
    m.update_mvcc(tick(12))
    assert m.get_mvcc_of_vchannel("a") == (12, True)


def test_sync_idle_matches_the_general_sync() -> None:
    """``AckManager.sync_idle`` (the per-batch fast path) ends in the same state as ``sync_and_get_acknowledged``:
    same details handed over (but the sync's own), same last-confirmed ID afterwards, and it refuses (None)
    while a tick is in flight. Randomised histories of batches of one acker each, as the dispatcher makes them.
    """
    rng = random.Random(7)
    for _ in range(50):
        slow, fast = AckManager(counter_clock(), UID(0)), AckManager(counter_clock(), UID(0))
        mid = 0
        for _ in range(rng.randrange(1, 30)):
            pair = [slow.allocate(), fast.allocate()]
            assert pair[0].timestamp == pair[1].timestamp
            assert pair[0].last_confirmed_message_id == pair[1].last_confirmed_message_id
            assert fast.sync_idle() is None  # a tick in flight: the general path must be used
            mid += 1
            kind = rng.random()
            for a in pair:
                if kind < 0.2:
                    a.ack(error=RuntimeError("boom"))
                else:
                    a.ack(message=data(a.timestamp, mid=mid))
            got_slow = slow.sync_and_get_acknowledged()
            idle = fast.sync_idle()
            assert idle is not None
            ts, got_fast, lc = idle
            assert got_slow[-1].is_sync and got_slow[-1].begin_timestamp == ts
            assert got_slow[-1].last_confirmed_message_id == lc
            assert ts_of(got_slow[:-1]) == ts_of(got_fast)
            assert slow.last_confirmed_message_id == fast.last_confirmed_message_id
            assert slow.last_confirmed_time_tick == fast.last_confirmed_time_tick == ts
            assert slow.not_acked_count == fast.not_acked_count == 0
