"""How many of the oldest segments retention deletes: past the size or age bound, and never one a transaction
still open needs.

Retention (``retention_bytes`` / ``retention_seconds``) deletes the oldest sealed segments. Deleting the segment
that holds a txn's begin while the txn is still open lost the whole txn for every reader: its commit was
acknowledged later, but a committed txn is delivered as one TXN message built from its begin and body (DESIGN.md
invariant 5). The user's ``truncate`` is guarded by the adaptor (``adaptor/_truncate.py``); retention is the
backend's own, so the backend guards it, with the same fact (invariant 4): a message appended while a txn is
open carries a last-confirmed ID at or before the txn's begin, and a txn that begins later begins after that
message. So the largest last-confirmed ID written so far (the *floor*) is at or before the begin of every txn
open now, and deleting only segments wholly below it cuts none of them. It costs nothing to find, and it lets
retention go on while short transactions overlap all the time (a first version, which wanted a boundary with no
txn open at all, never deleted under three threads of short txns, and walked records at every roll).

What it gives up, as any retention does: a txn that was committed, and whose begin is older than the bound, is no
longer delivered to readers that start after the deletion (its begin is deleted data).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._state import SegmentState

__all__ = ["retention_count"]


def retention_count(
    segs: Sequence[SegmentState],
    *,
    max_bytes: int | None,
    max_age_ns: int | None,
    now_ns: int,
    floor: int | None,
    mono_ns: int = 0,
) -> int:
    """How many of ``segs`` (oldest first) to delete: sealed, past a bound, and below ``floor`` (None: no txn can
    be open, as on open, or no message carried a last-confirmed ID). ``now_ns`` is the wall clock, ``mono_ns``
    the monotonic clock, which stamps each sealed segment the first time it is seen here (below)."""
    n = 0
    if max_bytes is not None:
        total = sum(s.capacity for s in segs)
        while n < len(segs) and segs[n].sealed and total > max_bytes:
            total -= segs[n].capacity
            n += 1
    if max_age_ns is not None:
        # A segment is old enough when its seal time (the wall clock) says so, or when the monotonic clock has run
        # for ``max_age_ns`` since retention first saw it sealed: a segment is at least that old whatever the wall
        # clock did. Without the second, a seal stamped while the wall clock ran ahead (years, then set right) held
        # back, for as long as the clock had jumped, the deletion of its segment and of every one after it (the
        # channel grew without bound); now it is held back by at most ``max_age_ns`` after the seal (or the open).
        # Ages are not taken from later seals (review 13c's first fix): one stamped under a clock stepped back aged
        # every segment before it by the step, and they were deleted at once, seconds old, when it was set right.
        m, bound, seen_bound = 0, now_ns - max_age_ns, mono_ns - max_age_ns
        for i, s in enumerate(segs):
            if not s.sealed:
                break
            seen = s.seen_sealed_mono_ns
            if seen is None:
                seen = s.seen_sealed_mono_ns = mono_ns
            if m == i and (s.sealed_ns < bound or seen < seen_bound):  # oldest first: one not old enough ends it
                m = i + 1
        n = max(n, m)
    if floor is not None:
        while n and segs[n - 1].last_id >= floor:
            n -= 1
    return n
