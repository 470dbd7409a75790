"""The WAL's time-tick source: a hybrid logical clock in Milvus's TSO format."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ...message import physical_ms
from ...message._hybrid import LOGICAL_BITS

__all__ = ["HybridClock"]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """Strictly increasing ``physical_ms << 18 | logical`` timestamps.

    A timestamp is the wall clock when that is ahead of the last one, else the last one plus one: ticks stay
    close to real time (so keepalives in milliseconds mean something) and never repeat or go back, even when the
    wall clock does or the process restarts (seed ``last_time_tick`` with the recovered tick).
    """

    __slots__ = ("_last", "_lock", "_now_ms")

    def __init__(self, last_time_tick: int = 0, now_ms: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self._last = last_time_tick
        self._now_ms = now_ms or _wall_ms

    def allocate(self) -> int:
        with self._lock:
            ts = self._now_ms() << LOGICAL_BITS  # compose_ts(ms), inlined: twice per append
            if ts <= self._last:
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
            if ts <= self._last:
                ts = self._last + 1
            self._last = ts + n - 1
            return ts

    def allocate_with_barrier(self, barrier: int) -> int:
        """A timestamp greater than ``barrier``: the clock jumps forward rather than waiting for it."""
        with self._lock:
            if self._last < barrier:
                self._last = barrier
            ts = self._now_ms() << LOGICAL_BITS  # compose_ts(ms), inlined: twice per append
            if ts <= self._last:
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
