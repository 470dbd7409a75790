"""Checks of durations a user passes (build options, timeouts, keepalives), shared by every layer.

Why one check: NaN passes every comparison and infinity overflows the OS waits and the hybrid clock, so a
duration checked only with ``> 0`` broke the WAL later and far from the mistake (an infinite tick interval ended
the append thread; a NaN keepalive left every reader failing).
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgumentError

__all__ = ["MAX_SECONDS", "seconds", "timeout"]

MAX_SECONDS = 10 * 365 * 24 * 3600.0
"""The longest duration accepted (ten years): far beyond any useful setting, well within what the OS waits
(``threading.TIMEOUT_MAX``) and the 46-bit physical part of a time tick can hold."""


def seconds(value: Any, what: str, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number of seconds in (0, MAX_SECONDS] ([0, ...] with ``zero``);
    else :class:`InvalidArgumentError` naming ``what``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_SECONDS  # False for NaN
        or (value == 0 and not zero)
    ):
        kind = "non-negative" if zero else "positive"
        raise InvalidArgumentError(f"{what} must be a {kind} number of seconds up to {MAX_SECONDS:.0f}, got {value!r}")
    return float(value)


def timeout(value: Any, what: str) -> float | None:
    """A timeout: None (wait as long as it takes) or :func:`seconds` with zero allowed."""
    return None if value is None else seconds(value, what, zero=True)
