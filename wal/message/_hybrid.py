"""Hybrid timestamps: ``physical_ms << 18 | logical``, the time-tick format of Milvus's TSO."""

from __future__ import annotations

import time

from .._checks import MAX_SECONDS
from ..errors import InvalidArgumentError

__all__ = ["LOGICAL_BITS", "TICK_HORIZON", "add_physical_ms", "check_barrier", "compose_ts", "logical", "physical_ms"]

LOGICAL_BITS = 18
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1

TICK_HORIZON = 1 << 62
"""Where the WAL's ticks end: a wall clock at or past it (2**44 ms, year 2527) is taken as behind the last tick, and a
barrier must be below it. Ticks must stay below 2**63 (u64 time ticks; txn IDs are ticks, and i64), and behind the
wall clock they go on from the last one at half the monotonic pace (``HybridClock``): the margin up to 2**63 is what
keeps them there (for 1,100 years of running). A line at 2**63 itself let a wall clock in its last milliseconds, or
a barrier just below it, take the ticks to 2**63 within 2 ms."""


def compose_ts(physical_ms: int, logical: int = 0) -> int:
    """The hybrid timestamp of ``physical_ms`` (ms since the epoch) and a logical counter (kept to 18 bits)."""
    return (physical_ms << LOGICAL_BITS) | (logical & _LOGICAL_MASK)


def physical_ms(ts: int) -> int:
    """The wall-clock part of a hybrid timestamp, in ms since the epoch."""
    return ts >> LOGICAL_BITS


def logical(ts: int) -> int:
    """The logical part of a hybrid timestamp: orders ticks allocated within one millisecond."""
    return ts & _LOGICAL_MASK


def add_physical_ms(ts: int, ms: float) -> int:
    """Add ``ms`` milliseconds to the physical part, keeping the logical part."""
    return ts + (round(ms) << LOGICAL_BITS)


def check_barrier(tt: object) -> int:
    """``tt`` if it can be a barrier time tick (a tick the WAL must allocate above), else InvalidArgumentError.

    The WAL's clock jumps to a barrier and never comes back: one above 2**64 made every later append of the WAL
    fail ("message field out of range"), one near it did so a few appends later, and one years ahead moved every
    later tick (and keepalive) there for good, across restarts. A barrier is a tick of some clock near this one, so
    it may be at most ten years (``MAX_SECONDS``) ahead of the wall clock, as durations may.
    """
    if isinstance(tt, bool) or not isinstance(tt, int) or not 0 <= tt < TICK_HORIZON:
        # below TICK_HORIZON (2**62): ticks must stay below 2**63, and after a barrier they go on from it
        raise InvalidArgumentError(f"a barrier time tick is an int in [0, 2**62), got {tt!r}")
    limit_ms = time.time_ns() // 1_000_000 + int(MAX_SECONDS * 1000)
    if physical_ms(tt) > limit_ms:
        raise InvalidArgumentError(
            f"barrier time tick {tt} is more than {MAX_SECONDS:.0f} s ahead of the wall clock (physical part "
            f"{physical_ms(tt)} ms): the WAL's ticks would jump there for good"
        )
    return tt
