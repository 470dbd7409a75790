"""Hybrid timestamps: ``physical_ms << 18 | logical``, the time-tick format of Milvus's TSO."""

from __future__ import annotations

__all__ = ["LOGICAL_BITS", "add_physical_ms", "compose_ts", "logical", "physical_ms"]

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
