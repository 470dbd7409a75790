"""The deadlines of open transactions, for an expiry pass that must not look at every one."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator

__all__ = ["HEAP_SLACK", "DeadlineHeap"]

HEAP_SLACK = 64  # entries of ended txns tolerated beyond twice the open ones before the heap is rebuilt


class DeadlineHeap:
    """Txn IDs by deadline (a time tick), for deadlines that only move later. Not thread-safe.

    Why: the txn manager's cleanup after every batch, and each reader's txn buffer at every tick, looked at every
    open txn, so an append and a received message cost O(open txns) (18 ms an append with 10,000 open). Here an entry
    is pushed at a txn's begin and never updated: a keepalive renewal only moves the deadline later, so an entry's key
    is never later than its txn's deadline. A txn whose key has not come is not expired; one whose key came but was
    renewed is pushed back with its new deadline. Ended txns leave their entries until their key comes (:meth:`trim`
    bounds them).
    """

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []

    def push(self, deadline: int, txn_id: int) -> None:
        heapq.heappush(self._heap, (deadline, txn_id))

    def due(self, now: int) -> Iterator[int]:
        """Pop and yield each txn ID whose entry's key is at or before ``now``: the caller checks the txn (ended,
        expired, or renewed) and pushes a renewed one back, with its deadline, which is after ``now``."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)[1]

    def trim(self, n_open: int, open_deadlines: Callable[[], Iterable[tuple[int, int]]]) -> None:
        """Drop the entries of ended txns: all of them when none is open, else rebuild from ``open_deadlines()``
        ((deadline, txn ID) of each open txn) once they outnumber the open ones twice (plus :data:`HEAP_SLACK`).
        Why: with a txn always open they were never cleared, and a long keepalive kept one entry per txn begun
        within it. A rebuild comes after at least as many pushes as it keeps: O(1) a txn."""
        heap = self._heap
        if not n_open:
            heap.clear()
        elif len(heap) > 2 * n_open + HEAP_SLACK:
            heap[:] = open_deadlines()
            heapq.heapify(heap)

    def __len__(self) -> int:
        return len(self._heap)
