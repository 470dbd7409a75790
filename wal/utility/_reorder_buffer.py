"""Holds data messages until a time tick says nothing older can still arrive."""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from ..message import ImmutableMessage, MessageID
from ._errors import DuplicateMessageError, TimeTickViolationError

__all__ = ["ReorderBuffer"]

_Entry = tuple[int, MessageID, int, ImmutableMessage]
_tick = itemgetter(0)


class ReorderBuffer:
    """Messages sorted by (time tick, message ID), released in that order by :meth:`pop_until`.

    Concurrent appends may persist out of time-tick order; a scanner pushes what it reads here and pops when a
    tick arrives, so it delivers strictly increasing time ticks. Not thread-safe: one scanner owns one buffer.

    Most pushes arrive already in order, so entries live in a plain list that is appended to; the first
    out-of-order push moves them into a SortedList (and an ID set for duplicate checks), and the buffer returns
    to the plain list once it drains.
    """

    __slots__ = ("_bytes", "_ids", "_items", "_last_pop", "_popped_at_last", "_sorted")

    def __init__(self) -> None:
        # Entries are (tt, id, size, msg); IDs are unique, so comparison never reaches size or msg.
        self._items: list[_Entry] = []
        self._sorted: SortedList | None = None
        # Held IDs, kept only once an out-of-order ID arrives (None: held IDs strictly increase in _items).
        self._ids: set[MessageID] | None = None
        # IDs released at exactly the last popped tick: a later push of one of them at that tick is a duplicate.
        self._popped_at_last: set[MessageID] = set()
        self._last_pop = 0
        self._bytes = 0

    def push(self, msg: ImmutableMessage) -> None:
        tt = msg.time_tick
        if tt < self._last_pop:
            raise TimeTickViolationError(
                f"message {msg.message_id} has time tick {tt} below the last released tick {self._last_pop}"
            )
        mid = msg.message_id
        if tt == self._last_pop and mid in self._popped_at_last:
            raise DuplicateMessageError(f"message {mid} was already pushed to the reorder buffer")
        ids = self._ids
        items = self._items
        if ids is None:
            # Held IDs strictly increase, so one above the newest cannot be held: no ID set needed.
            if not items or (tt >= items[-1][0] and items[-1][1] < mid):
                size = msg.estimate_size()
                self._bytes += size
                items.append((tt, mid, size, msg))
                return
            ids = self._ids = {e[1] for e in items}
        if mid in ids:
            raise DuplicateMessageError(f"message {mid} was already pushed to the reorder buffer")
        ids.add(mid)
        size = msg.estimate_size()
        self._bytes += size
        entry = (tt, mid, size, msg)
        s = self._sorted
        if s is not None:
            s.add(entry)
        elif items and (tt < items[-1][0] or (tt == items[-1][0] and mid < items[-1][1])):
            self._sorted = SortedList(items)
            self._sorted.add(entry)
            self._items = []
        else:
            items.append(entry)

    def pop_until(self, time_tick: int) -> list[ImmutableMessage]:
        """Release every message with ``tt <= time_tick``, ascending (ties by message ID)."""
        if time_tick > self._last_pop:
            self._last_pop = time_tick
            self._popped_at_last = set()
        s = self._sorted
        popped: list[_Entry]
        if s is None:
            items = self._items
            if not items or items[0][0] > time_tick:
                return []
            if items[-1][0] <= time_tick:
                popped = items
                self._items = []
            else:
                lo = bisect_right(items, time_tick, key=_tick)
                popped = items[:lo]
                del items[:lo]
        else:
            n = s.bisect_left((time_tick + 1,))
            if n == 0:
                return []
            popped = s[:n]
            del s[:n]
        out: list[ImmutableMessage] = []
        ids = self._ids
        last = self._last_pop
        at_last = self._popped_at_last
        freed = 0
        for tt, mid, size, msg in popped:
            if ids is not None:
                ids.discard(mid)
            freed += size
            if tt == last:
                at_last.add(mid)
            out.append(msg)
        self._bytes -= freed
        if not self:  # drained: back to the append-only list with no ID set
            self._sorted = None
            self._ids = None
        return out

    @property
    def last_popped_time_tick(self) -> int:
        return self._last_pop

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        s = self._sorted
        return len(s) if s is not None else len(self._items)
