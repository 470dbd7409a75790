"""The storage of the write-ahead buffer: recent messages in time-tick order, evicted by size and age."""

from __future__ import annotations

import time
from array import array
from bisect import bisect_right
from collections.abc import Callable
from operator import lt as _lt
from typing import Any

from ..errors import InvalidArgumentError
from ..message import ImmutableMessage, MessageType
from ._errors import EvictedError, TimeTickViolationError
from ._wab_compact import (
    COMPACT_PAYLOAD,
    COMPACT_TICK,
    compact_batch,
    entry_time_tick,
    entry_type,
    expand_all,
    id_class_of,
)

__all__ = ["ENTRY_OVERHEAD", "WABQueue", "WABSnapshot"]


ENTRY_OVERHEAD = 256
"""Bytes each queued message counts for beyond its payload and properties (the message or compact entry, its ID,
time tick and expiry: about 250 measured). Counted as payload only, messages with small or empty payloads were
bounded by the keepalive alone: a buffer of 1 MiB held 200,000 empty messages in 49 MB."""


def _size(m: ImmutableMessage) -> int:
    """``m.estimate_size()`` without its cost for the usual message with no properties (the hot path pushes
    every appended message): ``estimate_size`` builds a generator and a read-only view per call.
    """
    return m.estimate_size() if m._props else len(m.payload)


# Unsigned 64-bit numbers: "L" where it is 64 bits, as it fills from an int several times faster than "Q" (a direct
# conversion, where "Q" goes through a byte-by-byte one); both reject a negative number or one of 2**64 or more.
_U64 = "L" if array("L").itemsize == 8 else "Q"

# Evicted entries are kept in the lists until they are at least this many and half of the lists: compaction
# copies the live tail into new lists, so its cost is amortised over the evictions that caused it.
_COMPACT_MIN = 64


class WABSnapshot:
    """A fixed slice ``msgs[pos:end]`` of the queue at the time it was taken.

    It refers to the queue's list without copying. The queue only appends to a list and replaces it (never edits
    it in place) when it compacts, so what a snapshot covers stays valid however much is evicted afterwards.
    ``msgs`` may hold compact entries (see ``_wab_compact``): ``id_cls`` rebuilds them.
    """

    __slots__ = ("end", "id_cls", "msgs", "next_offset", "pos")

    def __init__(self, msgs: list[Any], pos: int, end: int, next_offset: int, id_cls: Any = None) -> None:
        self.msgs = msgs
        self.pos = pos
        self.end = end
        self.next_offset = next_offset  # queue offset of the entry after this snapshot
        self.id_cls = id_cls

    def __len__(self) -> int:
        return self.end - self.pos

    def to_list(self) -> list[ImmutableMessage]:
        return expand_all(self.msgs[self.pos : self.end], self.id_cls)


class WABQueue:
    """Entries with dense offsets (the first entry is offset 0); not thread-safe, the buffer locks around it.

    The last entry is never evicted: it is the newest persisted position, where a reader starts tailing.
    """

    __slots__ = (
        "_base",
        "_capacity",
        "_expire",
        "_floor",
        "_id_cls",
        "_keepalive",
        "_msgs",
        "_now",
        "_overhead",
        "_size",
        "_sizes",
        "_start",
        "_tts",
    )

    def __init__(
        self,
        capacity_bytes: int,
        keepalive: float,
        first: ImmutableMessage,
        now: Callable[[], float] = time.monotonic,
        entry_overhead: int = ENTRY_OVERHEAD,
    ) -> None:
        self._capacity = capacity_bytes
        self._overhead = entry_overhead
        self._keepalive = keepalive
        self._now = now
        self._msgs: list[Any] = []  # ImmutableMessage or its compact form (see _wab_compact)
        self._id_cls = id_class_of(first)
        # Numbers in arrays, not lists: an array is one object to the garbage collector, which walks every item
        # of a list on each full collection (hundreds of thousands here).
        self._tts = array(_U64)
        self._sizes = array(_U64)  # each entry's payload and property bytes; it counts _overhead bytes more
        self._expire = array("d")
        self._base = 0  # offset of list index 0
        self._start = 0  # list index of the first live entry
        # The newest time tick evicted (the first entry's at first): a read from any tick at or above it misses
        # nothing (the entries between it and the first live one were never stored, like a not-persisted tick).
        self._floor = first.time_tick
        self._size = 0
        self._append(first)

    def _append(self, msg: ImmutableMessage) -> None:
        size = _size(msg)
        self._msgs.append(msg)
        self._tts.append(msg.time_tick)
        self._sizes.append(size)
        size += self._overhead
        self._expire.append(self._now() + self._keepalive)
        self._size += size

    def push(self, msgs: list[Any], compact: bool = False, consume: bool = False) -> None:
        """Append in order. A data message must be above the last time tick; a tick may repeat it.

        All or nothing: a message out of order leaves the queue unchanged. ``msgs`` may hold compact entries;
        ``compact``: store the messages in their compact form when they all have one (the write-ahead buffer's
        choice; see ``_wab_compact``); ``consume``: empty ``msgs`` once they are queued.

        All or nothing under Ctrl-C too: the queue changes only in the last statements, which call nothing until
        ``msgs.clear()`` (CPython acts on a pending signal only at calls and backward jumps), so an interrupt
        lands before any change or after all of them, the clearing of ``msgs`` included: a reader's fold
        (``WriteAheadBuffer._fold``) never queues a batch twice or leaves the parallel arrays out of step.
        """
        if not msgs:
            return
        last = self._tts[-1]
        try:  # every entry compact (the append path's batches): ticks and sizes pulled out in C, stored as they are
            tts = list(map(COMPACT_TICK, msgs))
            sizes = list(map(len, map(COMPACT_PAYLOAD, msgs)))
            store = msgs
        except TypeError:  # a message among them (not subscriptable)
            tts = [m[4] if m.__class__ is tuple else m.time_tick for m in msgs]  # entry_time_tick, inlined
            sizes = [  # entry_size, inlined
                len(m[2]) if m.__class__ is tuple else m.estimate_size() if m._props else len(m.payload)
                for m in msgs
            ]
            store = compact_batch(msgs, self._id_cls) if compact else msgs
        if not (last < tts[0] and all(map(_lt, tts, tts[1:]))):  # strictly increasing: the usual case, checked in C
            for m, tt in zip(msgs, tts, strict=True):
                if tt < last or (tt == last and entry_type(m) is not MessageType.TIME_TICK):
                    raise TimeTickViolationError(
                        f"write-ahead buffer: {entry_type(m).name} with time tick {tt} after time tick {last}"
                    )
                last = tt
        # Typed arrays reject a number out of range (OverflowError) only when filled: build them first, so a
        # failure leaves the queue unchanged and its parallel sequences in step.
        new_tts = array(_U64, tts)
        new_sizes = array(_U64, sizes)
        new_expire = array("d", (self._now() + self._keepalive,)) * len(msgs)
        added = sum(sizes) + self._overhead * len(sizes)
        # From here to the clear: no call (see above).
        self._msgs += store
        self._tts += new_tts
        self._sizes += new_sizes
        self._expire += new_expire
        self._size += added
        if consume:
            msgs.clear()

    def evict(self) -> None:
        """Drop expired entries, then the oldest while over capacity; never the last one."""
        last = len(self._msgs) - 1
        i = self._start
        if i >= last:
            return
        now = self._now()
        expire = self._expire
        sizes = self._sizes
        cap = self._capacity
        size = self._size
        over = self._overhead
        while i < last and (expire[i] <= now or size > cap):
            size -= sizes[i] + over
            i += 1
        self._size = size
        if i > self._start:
            self._floor = self._tts[i - 1]
        self._start = i
        self._compact()

    def _compact(self) -> None:
        """Copy the live entries into new lists once the evicted ones are many and at least half."""
        i = self._start
        if i >= _COMPACT_MIN and 2 * i >= len(self._msgs):
            # New lists, never an in-place delete: snapshots keep referring to the old ones.
            self._msgs = self._msgs[i:]
            self._tts = self._tts[i:]
            self._sizes = self._sizes[i:]
            self._expire = self._expire[i:]
            self._base += i
            self._start = 0

    def drop_all_but_last(self) -> None:
        """Evict every entry but the newest (which is never evicted); compacts like :meth:`evict`."""
        i = len(self._msgs) - 1
        if i <= self._start:
            return
        self._size = self._sizes[i] + self._overhead
        self._floor = self._tts[i - 1]
        self._start = i
        self._compact()

    @property
    def current_offset(self) -> int:
        """Offset of the newest entry."""
        return self._base + len(self._msgs) - 1

    @property
    def head_offset(self) -> int:
        return self._base + self._start

    @property
    def last_time_tick(self) -> int:
        return self._tts[-1]

    @property
    def size(self) -> int:
        """Estimated bytes of the live entries."""
        return self._size

    def __len__(self) -> int:
        return len(self._msgs) - self._start

    def _check(self) -> None:
        """Assert every internal invariant (for tests)."""
        n = len(self._msgs)
        assert len(self._tts) == len(self._sizes) == len(self._expire) == n
        assert 0 <= self._start < n
        assert list(self._tts) == [entry_time_tick(m) for m in self._msgs]
        assert all(a <= b for a, b in zip(self._tts, self._tts[1:], strict=False))
        assert self._size == sum(self._sizes[self._start :]) + self._overhead * (n - self._start)

    def snapshot_from_offset(self, offset: int) -> WABSnapshot | None:
        """Entries from ``offset`` on; None when ``offset`` is one past the newest (nothing yet)."""
        n = len(self._msgs)
        end_offset = self._base + n
        if offset == end_offset:
            return None
        if offset > end_offset:
            raise InvalidArgumentError(f"write-ahead buffer offset {offset} is beyond the next offset {end_offset}")
        i = offset - self._base
        if i < self._start:
            raise EvictedError(f"write-ahead buffer offset {offset} was evicted (head is {self.head_offset})")
        return WABSnapshot(self._msgs, i, n, end_offset, self._id_cls)

    def snapshot_from_exclusive_time_tick(self, time_tick: int) -> WABSnapshot | None:
        """Entries with ``tt > time_tick``; None when there are none yet."""
        tts = self._tts
        if time_tick >= tts[-1]:
            return None
        start = self._start
        if time_tick < self._floor:
            raise EvictedError(
                f"write-ahead buffer no longer holds time tick {time_tick} (entries up to {self._floor} were evicted)"
            )
        n = len(tts)
        i = bisect_right(tts, time_tick, start, n)
        return WABSnapshot(self._msgs, i, n, self._base + n, self._id_cls)
