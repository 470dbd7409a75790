"""A min-heap of messages by time tick."""

from __future__ import annotations

import heapq
import itertools

from ..message import ImmutableMessage

__all__ = ["MessageHeap"]


class MessageHeap:
    """Messages ordered by time tick; equal ticks come out in push order."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, ImmutableMessage]] = []
        self._seq = itertools.count()

    def push(self, msg: ImmutableMessage) -> None:
        heapq.heappush(self._heap, (msg.time_tick, next(self._seq), msg))

    def pop(self) -> ImmutableMessage:
        """Remove and return the message with the smallest time tick; ``IndexError`` when empty."""
        return heapq.heappop(self._heap)[2]

    def peek(self) -> ImmutableMessage:
        """The message with the smallest time tick, left in place; ``IndexError`` when empty."""
        return self._heap[0][2]

    def __len__(self) -> int:
        return len(self._heap)
