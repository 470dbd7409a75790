"""Hybrid timestamps: ``physical_ms << 18 | logical``, the time-tick format of Milvus's TSO."""

from __future__ import annotations

import time

from .._checks import MAX_SECONDS
from ..errors import InvalidArgumentError

__all__ = ["LOGICAL_BITS", "add_physical_ms", "check_barrier", "compose_ts", "logical", "physical_ms"]

LOGICAL_BITS = 18
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


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
    if isinstance(tt, bool) or not isinstance(tt, int) or not 0 <= tt < 1 << 63:
        # below 2**63: txn IDs are ticks, stored as i64 (see timetick/_clock.py)
        raise InvalidArgumentError(f"a barrier time tick is an int in [0, 2**63), got {tt!r}")
    limit_ms = time.time_ns() // 1_000_000 + int(MAX_SECONDS * 1000)
    if physical_ms(tt) > limit_ms:
        raise InvalidArgumentError(
            f"barrier time tick {tt} is more than {MAX_SECONDS:.0f} s ahead of the wall clock (physical part "
            f"{physical_ms(tt)} ms): the WAL's ticks would jump there for good"
        )
    return tt
