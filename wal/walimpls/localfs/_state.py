"""In-memory state shared by a channel's writer and the scanners of the same opener."""

from __future__ import annotations

import bisect
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from ..._metrics import metrics
from ._fileops import FileOps
from ._format import BLOOM_BYTES, DATA_START

__all__ = ["ChannelLog", "Hub", "SegmentState"]

_first_id = attrgetter("first_id")


@dataclass(eq=False)
class SegmentState:
    """One segment as its writer knows it. ``data_end`` is the published end: readers never read past it."""

    first_id: int
    path: str
    capacity: int
    data_end: int = DATA_START
    last_id: int = 0
    first_tt: int = 0
    max_tt: int = 0
    records: int = 0
    sealed: bool = False
    sealed_ns: int = 0
    seen_sealed_mono_ns: int | None = None  # the monotonic clock when retention first saw it sealed
    bloom: bytearray = field(default_factory=lambda: bytearray(BLOOM_BYTES))
    index: list[tuple[int, int, int]] = field(default_factory=list)  # (id, max tt so far, position)
    index_checked: bool = False  # the index list is known to match the data
    tail: tuple[int, int] = (DATA_START, 0)  # (published end, last published ID): one atomic read for readers
    _mm: mmap.mmap | None = None
    _mm_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.tail = (self.data_end, self.last_id)

    def mapping(self, fops: FileOps, need: int) -> mmap.mmap:
        """A shared read-only map covering at least ``need`` bytes (re-mapped when the file grew).

        Old maps are dropped, never closed: payload views handed out may still point into them.
        """
        mm = self._mm
        if mm is not None and len(mm) >= need:
            return mm
        with self._mm_lock:
            mm = self._mm
            if mm is None or len(mm) < need:
                fd = fops.open(self.path, os.O_RDONLY)
                try:
                    mm = self._mm = fops.mmap(fd, fops.fstat_size(fd))
                finally:
                    fops.close(fd)
            return mm

    def drop_mapping(self) -> None:
        self._mm = None

    def drop_index(self) -> None:
        """Forget a sealed segment's index, which its ``.idx`` file holds: kept, the writer held the index of every
        segment it had sealed (an entry per 4 KiB, about 5 % of the log in RAM) for its life. A reader that seeks
        in the segment reads the file (``_WSeg.index``)."""
        self.index_checked = False  # first: a reader takes the list, then asks whether it is checked
        self.index = []


class ChannelLog:
    """The writer's list of segments. Replaced, never mutated in place, so readers can iterate a snapshot."""

    def __init__(self, segments: list[SegmentState]) -> None:
        self._segments: tuple[SegmentState, ...] = tuple(segments)
        self._counted = True
        metrics.segments.inc(len(self._segments))

    @property
    def segments(self) -> tuple[SegmentState, ...]:
        return self._segments

    @segments.setter
    def segments(self, segs: tuple[SegmentState, ...]) -> None:
        if self._counted:
            metrics.segments.inc(len(segs) - len(self._segments))  # the gauge follows rolls and retention
        self._segments = segs

    def retire(self) -> None:
        """The writer closed: its segments no longer count as kept by this process."""
        if self._counted:
            self._counted = False
            metrics.segments.dec(len(self._segments))

    def find(self, message_id: int) -> SegmentState | None:
        """The segment holding ``message_id`` (or the one it would be appended to), None if it was deleted."""
        segs = self.segments
        lo, hi = 0, len(segs)
        while lo < hi:
            mid = (lo + hi) // 2
            if segs[mid].first_id <= message_id:
                lo = mid + 1
            else:
                hi = mid
        return segs[lo - 1] if lo else None

    def after(self, seg: SegmentState) -> SegmentState | None:
        """Why a bisection: a scanner asks at every segment it finishes, and a walk made reading a log of n segments
        cost O(n^2) (30,000 messages in 10,000 segments: 2.3 s of CPU against 0.07 s for 1,000)."""
        segs = self.segments
        i = bisect.bisect_right(segs, seg.first_id, key=_first_id)
        return segs[i] if i < len(segs) else None


MISSED_DISTRUST = 60.0
"""Seconds a hub's watch is not trusted (its readers poll at the short cap) after a reader found data no event had
announced (:meth:`Hub.missed`)."""


class Hub:
    """Per channel and opener: wakes blocked scanners when the writer publishes or a file event arrives."""

    def __init__(self, name: str, directory: str) -> None:
        self.name = name
        self.directory = directory
        self.lock = threading.RLock()  # entered as ``with self.lock``: docs/ARCHITECTURE.md, "Interrupts"
        self.cond = threading.Condition(self.lock)
        self.version = 0
        self.watchers = 0
        self.users = 0  # WALs of this opener on the channel, and opens under way (the opener forgets it at 0)
        # Set while read-only WALs wait for a channel directory that does not exist yet (the opener watches it once
        # it does); their scanners call it when they find nothing to read. See LocalFSOpener._watch.
        self.arm: Callable[[], None] | None = None
        self.missing_since = 0.0  # when they started waiting for it (monotonic; 0: not waiting, or warned)
        self.watched: tuple[int, int] | None = None  # the directory the opener's watch is on (LocalFSOpener._rewatch)
        # Whether that watch still reports events (its emitter runs: watchdog stops it when the directory is deleted);
        # None where the opener cannot tell (no watch, or a watchdog that does not report inotify queue overflows).
        self.watch_alive: Callable[[], bool] | None = None
        self.missed_at = -MISSED_DISTRUST  # when a reader last found data that no event had announced (monotonic)

    def watching(self, ident: tuple[int, int] | None) -> bool:
        """Whether every write to directory ``ident`` wakes this hub's waiters, so that they need not poll often.

        Why each condition: the watch must be on that directory (a reader may be bound to a replaced one, or the
        watch not moved yet), its emitter must run (stopped at the directory's deletion; a dead one is reused by a
        new ``schedule`` of the path), and no write may have gone unannounced lately (:meth:`missed`: a writer on
        another host of a network file system, writes through ``mmap``, events lost some way we do not know).
        """
        alive = self.watch_alive
        return (ident is not None and ident == self.watched and alive is not None and alive()
                and time.monotonic() - self.missed_at >= MISSED_DISTRUST)

    def missed(self) -> None:
        """A reader found data after a long wait no event ended: trust no event for :data:`MISSED_DISTRUST`."""
        self.missed_at = time.monotonic()

    def bump(self) -> None:
        with self.lock:
            self.version += 1
            self.cond.notify_all()
