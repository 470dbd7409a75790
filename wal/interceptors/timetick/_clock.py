"""The WAL's time-tick source: a hybrid logical clock in Milvus's TSO format."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ...message import physical_ms
from ...message._hybrid import LOGICAL_BITS, TICK_HORIZON

__all__ = ["HybridClock"]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _elapsed_ms() -> int:
    return time.monotonic_ns() // 1_000_000


_BEHIND_PACE = 2
"""While the wall clock is behind, the ticks' physical part advances 1 ms per this many elapsed (see HybridClock)."""


def _standing_still() -> int:
    return 0


class HybridClock:
    """Strictly increasing ``physical_ms << 18 | logical`` timestamps.

    A timestamp is the wall clock when that is ahead of the last one, else the last one plus one: ticks stay
    close to real time (so keepalives in milliseconds mean something) and never repeat or go back, even when the
    wall clock does or the process restarts (seed ``last_time_tick`` with the recovered tick).

    While the wall clock stays behind the last timestamp (stepped back, or behind the tick a restart recovered),
    the physical part goes on from where it stood at half the pace of ``elapsed_ms`` (the monotonic clock), so the
    wall clock catches up after twice the step and the ticks follow it again. Why not stand still until then (as
    Milvus's TSO does): a txn's keepalive counts in ticks, so it never ran out for the length of the step, and a
    txn abandoned then held the last-confirmed ID (so truncation and retention) back for that long. Why not the
    full pace: the ticks would then stay ahead of the wall clock by the step for good, across restarts too (a clock
    set a year ahead by mistake, then put right, would leave every later tick a year off). At half the pace a
    keepalive runs out in at most twice its length.
    A wall clock past the last tick the format holds (2**46 ms, year 4199) counts as behind too: the WAL's clock went
    there and every later tick was past the u64 the backends store (localfs refused every append until a reopen,
    even after the clock was set right; the memory backend stored them, then could not open the channel again).
    So does one past 2**45 ms (year 3084): a tick at or past 2**63 is a txn ID localfs cannot store (an i64), and
    once one was persisted no transaction could ever begin on the channel again. The line is drawn lower, at
    ``TICK_HORIZON`` (2**44 ms, year 2527): behind it the ticks go on from the last one, which a wall clock just
    below 2**45 ms (or a barrier just below 2**63) left 2 ms from the end.
    An injected ``now_ms`` is the whole source unless ``elapsed_ms`` is given too (tests count 1, 2, 3...).
    """

    __slots__ = ("_elapsed_ms", "_last", "_lock", "_now_ms", "_offset")

    def __init__(
        self,
        last_time_tick: int = 0,
        now_ms: Callable[[], int] | None = None,
        elapsed_ms: Callable[[], int] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._last = last_time_tick
        self._now_ms = now_ms or _wall_ms
        self._elapsed_ms = elapsed_ms or (_standing_still if now_ms else _elapsed_ms)
        # While the wall clock is behind: physical ms minus the paced elapsed ms (elapsed // _BEHIND_PACE); else None.
        self._offset: int | None = None

    def _behind(self) -> int:
        """The next timestamp when the wall clock is at or behind the last one (called under the lock)."""
        paced = self._elapsed_ms() // _BEHIND_PACE
        physical = self._last >> LOGICAL_BITS
        if self._offset is None or self._offset + paced < physical:
            # just fell behind, or the last tick went past the pace (a burst, a barrier): count on from it
            self._offset = physical - paced
            return self._last + 1
        ts = (self._offset + paced) << LOGICAL_BITS
        return ts if ts > self._last else self._last + 1

    def allocate(self) -> int:
        with self._lock:
            ts = self._now_ms() << LOGICAL_BITS  # compose_ts(ms), inlined: twice per append
            if self._last < ts < TICK_HORIZON:
                self._offset = None
            elif (self._last ^ ts) >> LOGICAL_BITS:  # behind the last tick's millisecond (or past the ticks)
                ts = self._behind()
            else:  # within it: no reason to read the monotonic clock
                ts = self._last + 1
            self._last = ts
            return ts

    def allocate_many(self, n: int) -> int:
        """The first of ``n`` consecutive timestamps (``ts .. ts + n - 1``), taken under one lock.

        Same rule as ``n`` calls of :meth:`allocate` in the same millisecond: a batch of plain appends gets its
        ticks at once instead of paying a lock and a wall-clock read per message.
        """
        with self._lock:
            ts = self._now_ms() << LOGICAL_BITS  # compose_ts(ms), inlined: twice per append
            if self._last < ts < TICK_HORIZON:
                self._offset = None
            elif (self._last ^ ts) >> LOGICAL_BITS:  # behind the last tick's millisecond (or past the ticks)
                ts = self._behind()
            else:  # within it: no reason to read the monotonic clock
                ts = self._last + 1
            self._last = ts + n - 1
            return ts

    def allocate_with_barrier(self, barrier: int) -> int:
        """A timestamp greater than ``barrier``: the clock jumps forward rather than waiting for it."""
        with self._lock:
            if self._last < barrier:
                self._last = barrier
            ts = self._now_ms() << LOGICAL_BITS  # compose_ts(ms), inlined: twice per append
            if self._last < ts < TICK_HORIZON:
                self._offset = None
            elif (self._last ^ ts) >> LOGICAL_BITS:  # behind the last tick's millisecond (or past the ticks)
                ts = self._behind()
            else:  # within it: no reason to read the monotonic clock
                ts = self._last + 1
            self._last = ts
            return ts

    def observe(self, time_tick: int) -> None:
        """Never allocate ``time_tick`` or anything below it (a tick recovered or seen elsewhere)."""
        with self._lock:
            if self._last < time_tick:
                self._last = time_tick

    @property
    def last_time_tick(self) -> int:
        """The last timestamp allocated or observed."""
        return self._last

    def __repr__(self) -> str:
        return f"HybridClock(last={self._last}, physical_ms={physical_ms(self._last)})"
