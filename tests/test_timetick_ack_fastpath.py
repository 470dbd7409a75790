"""The ack manager's shortcut for the only tick in flight, and ``MVCCManager.update_time_tick``, against the general
code they skip: random runs must end in the same state at every step.
"""

from __future__ import annotations

import heapq
import random

import pytest
from _utility_msgs import UID, data, tick

from wal.errors import InvalidArgumentError
from wal.interceptors.timetick import AckManager, HybridClock, MVCCManager
from wal.interceptors.timetick._ack import AckDetail, Acker


class GeneralAckManager(AckManager):
    """``_ack`` as it was before the shortcut: every acknowledgement through the heaps."""

    def _ack(self, acker: Acker, message, error, sync, txn_session) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            if acker._acked:
                raise InvalidArgumentError("acknowledged twice")
            d = acker.detail
            d.message, d.error, d.is_sync, d.txn_session = message, error, sync, txn_session
            d.end_timestamp = self._last_allocated
            acker._acked = True
            heapq.heappush(self._acked, (d.end_timestamp, d.begin_timestamp, acker))
            while self._not_acked and self._not_acked[0][1]._acked:
                ts, a = heapq.heappop(self._not_acked)
                self._last_confirmed_tt = ts
                self._acknowledged.append(a.detail)
            confirmed: list[AckDetail] = []
            while self._acked and self._acked[0][0] < self._last_confirmed_tt:
                confirmed.append(heapq.heappop(self._acked)[2].detail)
            self._lc.add_confirmed_details(confirmed, self._last_confirmed_tt)


def state(m: AckManager) -> tuple[object, ...]:
    return (
        m.last_confirmed_message_id,
        m.last_confirmed_time_tick,
        m.not_acked_count,
        sorted((e, b) for e, b, _ in m._acked),
        [d.begin_timestamp for d in m._acknowledged],
    )


@pytest.mark.parametrize("seed", range(12))
def test_only_tick_in_flight_shortcut_matches_the_heaps(seed: int) -> None:
    rng = random.Random(seed)
    ms = [cls(HybridClock(100, now_ms=lambda: 0), UID(1)) for cls in (AckManager, GeneralAckManager)]
    open_: list[tuple[Acker, Acker]] = []
    mid = 1
    for _ in range(600):
        r = rng.random()
        if r < 0.35 or not open_:
            open_.append((ms[0].allocate(), ms[1].allocate()))
        elif r < 0.75:
            pair = open_.pop(rng.randrange(len(open_)) if rng.random() < 0.3 else 0)
            kind = rng.random()
            mid += 1
            im = data(pair[0].timestamp, mid=mid)
            for a in pair:
                if kind < 0.7:
                    a.ack(message=im)
                elif kind < 0.85:
                    a.ack(error=ValueError("x"))
                else:
                    a.ack(sync=True)
        elif r < 0.9:
            got = [m.sync_idle() for m in ms]
            assert (got[0] is None) == (got[1] is None)
            if got[0] is not None and got[1] is not None:
                assert got[0][0] == got[1][0] and got[0][2] == got[1][2]
                assert [d.begin_timestamp for d in got[0][1]] == [d.begin_timestamp for d in got[1][1]]
        else:
            a, b = (m.sync_and_get_acknowledged() for m in ms)
            assert [d.begin_timestamp for d in a] == [d.begin_timestamp for d in b]
        assert state(ms[0]) == state(ms[1])
    with pytest.raises(InvalidArgumentError):
        a = ms[0].allocate()
        a.ack(sync=True)
        a.ack(sync=True)


@pytest.mark.parametrize("seed", range(6))
def test_update_time_tick_is_update_mvcc_of_a_tick(seed: int) -> None:
    rng = random.Random(seed)
    fast, slow = MVCCManager(10), MVCCManager(10)
    tt = 10
    for _ in range(300):
        tt += rng.randint(0, 3)
        if rng.random() < 0.6:
            m = data(tt, vchannel=rng.choice(["", "a", "b"]))
            fast.update_mvcc(m)
            slow.update_mvcc(m)
        else:
            at = tt - rng.randint(0, 4)  # sometimes behind: ignored by both
            fast.update_time_tick(at)
            slow.update_mvcc(tick(at))
        for v in ("a", "b", "c"):
            assert fast.get_mvcc_of_vchannel(v) == slow.get_mvcc_of_vchannel(v)
        assert fast.pchannel_time_tick == slow.pchannel_time_tick
