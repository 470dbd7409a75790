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

import itertools
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
) -> int:
    """How many of ``segs`` (oldest first) to delete: sealed, past a bound, and below ``floor`` (None: no txn can
    be open, as on open, or no message carried a last-confirmed ID)."""
    n = 0
    if max_bytes is not None:
        total = sum(s.capacity for s in segs)
        while n < len(segs) and segs[n].sealed and total > max_bytes:
            total -= segs[n].capacity
            n += 1
    if max_age_ns is not None:
        # A segment was sealed before every later one, so it is at least as old as the earliest later seal time:
        # one seal stamped by a wall clock that ran ahead (hours, years, then stepped back) held back, for as long
        # as the clock had jumped, the deletion of every segment after it (the channel grew without bound).
        sealed_at = [s.sealed_ns for s in itertools.takewhile(lambda s: s.sealed, segs)]
        for i in range(len(sealed_at) - 2, -1, -1):
            sealed_at[i] = min(sealed_at[i], sealed_at[i + 1])
        m = 0
        while m < len(sealed_at) and sealed_at[m] < now_ns - max_age_ns:
            m += 1
        n = max(n, m)
    if floor is not None:
        while n and segs[n - 1].last_id >= floor:
            n -= 1
    return n
