"""Holds data messages until a time tick says nothing older can still arrive."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from operator import attrgetter

from sortedcontainers import SortedKeyList  # type: ignore[import-untyped]

from ..message import ImmutableMessage, IntMessageID, MessageID
from ._errors import DuplicateMessageError, TimeTickViolationError

__all__ = ["ReorderBuffer"]

_tick = attrgetter("time_tick")
_key = attrgetter("time_tick", "message_id")  # (tt, id): IDs are unique, so keys are too


class ReorderBuffer:
    """Messages sorted by (time tick, message ID), released in that order by :meth:`pop_until`.

    Concurrent appends may persist out of time-tick order; a scanner pushes what it reads here and pops when a
    tick arrives, so it delivers strictly increasing time ticks. Not thread-safe: one scanner owns one buffer.

    Most pushes arrive already in order, so the messages themselves (no wrapper per message) live in a plain list
    that is appended to; the first out-of-order push moves them into a SortedKeyList (and an ID set for duplicate
    checks), and the buffer returns to the plain list once it drains. Sizes are summed only when asked for.
    """

    __slots__ = ("_ids", "_items", "_last_pop", "_popped_at_last", "_sorted")

    def __init__(self) -> None:
        # Plain mode: held (tt, ID) pairs, tt non-decreasing and IDs strictly increasing, in push order.
        self._items: list[ImmutableMessage] = []
        self._sorted: SortedKeyList | None = None
        # Held IDs, kept only once an out-of-order ID arrives (None: held IDs strictly increase in _items).
        self._ids: set[MessageID] | None = None
        # IDs released at exactly the last popped tick: a later push of one of them at that tick is a duplicate.
        self._popped_at_last: set[MessageID] = set()
        self._last_pop = 0

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
            if not items:
                items.append(msg)
                return
            last = items[-1]
            if tt >= last.time_tick and last.message_id < mid:
                items.append(msg)
                return
            ids = self._ids = {m.message_id for m in items}
        if mid in ids:
            raise DuplicateMessageError(f"message {mid} was already pushed to the reorder buffer")
        ids.add(mid)
        s = self._sorted
        if s is not None:
            s.add(msg)
        elif items and (tt < items[-1].time_tick or (tt == items[-1].time_tick and mid < items[-1].message_id)):
            s = self._sorted = SortedKeyList(items, key=_key)
            s.add(msg)
            self._items = []
        else:
            items.append(msg)

    def push_many(self, msgs: Sequence[ImmutableMessage]) -> int:
        """Push ``msgs`` (in the order a source delivered them), dropping duplicates and messages below the last
        released tick instead of raising; returns how many were dropped.

        The common case, a run in (tt, ID) order above everything held, is checked in one pass and appended
        whole; from the first message that is not, the rest goes through :meth:`push`.
        """
        i = 0
        if self._ids is None:
            items = self._items
            last_pop = self._last_pop
            if items:
                last = items[-1]
                prev_tt = last.time_tick
                prev_id: MessageID | None = last.message_id
            else:
                prev_tt = last_pop
                prev_id = None
            # IntMessageIDs (every built-in backend's) are compared by value: their __lt__, a Python call from C per
            # message, was 4 % of a catch-up scan. A buffer holds the IDs of one backend, so of one class; -1 is
            # below every such ID (they are non-negative).
            id_cls = type(msgs[0].message_id) if msgs else None
            by_value = id_cls is not None and id_cls.__lt__ is IntMessageID.__lt__ and (
                prev_id is None or type(prev_id) is id_cls
            )
            prev_value = prev_id.value if by_value and isinstance(prev_id, IntMessageID) else -1
            for m in msgs:
                tt = m.time_tick
                if tt < prev_tt or tt == last_pop:  # out of order, late, or maybe released already: slow path
                    break
                mid = m.message_id
                if by_value:
                    value = mid.value  # type: ignore[attr-defined]
                    if not prev_value < value:
                        break
                    prev_value = value
                elif prev_id is not None and not prev_id < mid:
                    break
                prev_tt = tt
                prev_id = mid
                i += 1
            if i == len(msgs):
                items += msgs
                return 0
            items += msgs[:i]
        dropped = 0
        for m in msgs[i:]:
            try:
                self.push(m)
            except (DuplicateMessageError, TimeTickViolationError):
                dropped += 1
        return dropped

    def pop_until(self, time_tick: int) -> list[ImmutableMessage]:
        """Release every message with ``tt <= time_tick``, ascending (ties by message ID)."""
        if time_tick > self._last_pop:
            self._last_pop = time_tick
            self._popped_at_last = set()
        s = self._sorted
        popped: list[ImmutableMessage]
        if s is None:
            items = self._items
            if not items or items[0].time_tick > time_tick:
                return []
            if items[-1].time_tick <= time_tick:
                popped = items
                self._items = []
            else:
                lo = bisect_right(items, time_tick, key=_tick)
                popped = items[:lo]
                del items[:lo]
        else:
            n = s.bisect_key_left((time_tick + 1,))
            if n == 0:
                return []
            popped = s[:n]
            del s[:n]
        # Popped messages are sorted by tick: the ones at exactly the last popped tick are a suffix.
        last = self._last_pop
        if popped[-1].time_tick == last:
            at_last = self._popped_at_last
            for m in reversed(popped):
                if m.time_tick != last:
                    break
                at_last.add(m.message_id)
        ids = self._ids
        if ids is not None:
            for m in popped:
                ids.discard(m.message_id)
        if not self:  # drained: back to the append-only list with no ID set
            self._sorted = None
            self._ids = None
            self._items = []
        return popped

    @property
    def last_popped_time_tick(self) -> int:
        return self._last_pop

    @property
    def bytes(self) -> int:
        """Estimated size of the held messages (summed on demand: nothing on the scan path asks for it)."""
        held = self._sorted if self._sorted is not None else self._items
        return sum(m.estimate_size() for m in held)

    def __len__(self) -> int:
        s = self._sorted
        return len(s) if s is not None else len(self._items)
