"""Holds data messages until a time tick says nothing older can still arrive."""

from __future__ import annotations

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from ..message import ImmutableMessage, MessageID
from ._errors import DuplicateMessageError, TimeTickViolationError

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """Messages sorted by (time tick, message ID), released in that order by :meth:`pop_until`.

    Concurrent appends may persist out of time-tick order; a scanner pushes what it reads here and pops when a
    tick arrives, so it delivers strictly increasing time ticks. Not thread-safe: one scanner owns one buffer.
    """

    __slots__ = ("_bytes", "_ids", "_items", "_last_pop", "_popped_at_last")

    def __init__(self) -> None:
        # Entries are (tt, id, size, msg); IDs are unique, so comparison never reaches size or msg.
        self._items: SortedList = SortedList()
        self._ids: set[MessageID] = set()
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
        ids = self._ids
        n = len(ids)
        ids.add(mid)  # one hash instead of a lookup plus an add
        if len(ids) == n or (tt == self._last_pop and mid in self._popped_at_last):
            if len(ids) != n:
                ids.discard(mid)
            raise DuplicateMessageError(f"message {mid} was already pushed to the reorder buffer")
        size = msg.estimate_size()
        self._items.add((tt, mid, size, msg))
        self._bytes += size

    def pop_until(self, time_tick: int) -> list[ImmutableMessage]:
        """Release every message with ``tt <= time_tick``, ascending (ties by message ID)."""
        items = self._items
        n = items.bisect_left((time_tick + 1,))
        if time_tick > self._last_pop:
            self._last_pop = time_tick
            self._popped_at_last = set()
        if n == 0:
            return []
        popped = items[:n]
        del items[:n]
        out: list[ImmutableMessage] = []
        ids = self._ids
        last = self._last_pop
        for tt, mid, size, msg in popped:
            ids.discard(mid)
            self._bytes -= size
            if tt == last:
                self._popped_at_last.add(mid)
            out.append(msg)
        return out

    @property
    def last_popped_time_tick(self) -> int:
        return self._last_pop

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
