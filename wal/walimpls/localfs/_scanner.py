"""Pull-style scanner: reads records straight from a read-only map of each segment, in the caller's thread.

Two sources tell it where the data ends:
- :class:`WriterSource`, when its WAL is the channel's writer: the writer's published end of each segment. Every
  byte before it was written (and, with ``sync="always"``, synced), so a record there that fails its checksum is
  damage and raises :class:`~wal.errors.CorruptedError`.
- :class:`DirSource`, for read-only WALs (this process or another): the channel directory. The end of a sealed
  segment is in its seal summary; in the active one, the first record that is not valid (checksum, ID) is where
  the writer has got to. Wake-ups come from the writer of the same opener, from watchdog (inotify) events and from
  polling with backoff, so a lost event costs latency, never a message.

Payloads up to ``_COPY_MAX`` bytes are copied out of the map (``bytes``); larger ones are ``memoryview`` slices of
it (no copy). Views stay valid while the message lives, also after the segment is deleted by retention: deleting
a mapped file is safe on Linux, and the backend never truncates one.
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import mmap
import operator
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol, TypeVar

from ...errors import CorruptedError, ShutdownError, WALIOError, WALTimeoutError
from ...message import ImmutableMessage, MessageType
from ...options import DeliverPolicy, DeliverPolicyKind
from .._interfaces import ReadOption, ScannerImpls
from ._fileops import FileOps, NotRegularFileError, limit_hint
from ._format import (
    DATA_START,
    LC_ID,
    META_FIXED,
    NEXT_MARK,
    NEXT_OFF,
    REC_HEADER,
    REC_HEADER_SIZE,
    REC_MAGIC,
    SEAL_MAGIC,
    SEAL_OFF,
    SEG_HEADER,
    U64,
    SegmentHeader,
    Summary,
    bloom_positions,
    check_record,
    crc32c,
    decode_meta,
    decode_properties,
    find_valid_record_after,
    is_zero_header,
    parse_next_mark,
    scan_segment,
)
from ._message_id import LocalFSMessageID, fast_id
from ._recovery import list_segments, load_index, rebuild_index
from ._state import ChannelLog, Hub, SegmentState

__all__ = ["ChannelDir", "DirSource", "LocalFSScanner", "WriterSource"]

log = logging.getLogger(__name__)


class SegView(Protocol):
    first_id: int
    path: str

    def view(self, need: int) -> memoryview | None: ...

    def status(self) -> tuple[int, bool, bool, int]:
        """(limit, exact, sealed, last published ID or -1): how far the data may go and whether it is known."""
        ...

    def index(self) -> list[tuple[int, int, int]]: ...

    def probe(self) -> tuple[bool, bool]: ...

    def sealed_bloom(self) -> bytes | None:
        """The vchannel bloom filter of a sealed segment (None while it may still grow)."""
        ...

    def release(self) -> None:
        """A reader has moved past this sealed segment: drop what the view keeps mapped for it."""
        ...


class Source(Protocol):
    exact_wait: bool

    def bound(self) -> tuple[int, int] | None:
        """The directory this source reads (see ``Hub.watching``); None when it is not known or not one."""
        ...

    def first(self) -> SegView | None: ...

    def last(self) -> SegView | None: ...

    def find(self, message_id: int) -> SegView | None: ...

    def after(self, seg: SegView) -> SegView | None: ...


# -- writer source --------------------------------------------------------------------------------------------------
class _WSeg:
    __slots__ = ("_index", "_mv", "first_id", "fops", "path", "seg", "write_index")

    def __init__(self, seg: SegmentState, fops: FileOps, write_index: bool) -> None:
        self.seg = seg
        self.first_id = seg.first_id
        self.path = seg.path
        self.fops = fops
        self.write_index = write_index
        self._mv: memoryview | None = None
        self._index: list[tuple[int, int, int]] | None = None  # a sealed segment's, read from its file

    def view(self, need: int) -> memoryview | None:
        mv = self._mv
        if mv is None or len(mv) < need:
            try:
                mv = self._mv = memoryview(self.seg.mapping(self.fops, need))
            except FileNotFoundError:
                return None
        return mv

    def status(self) -> tuple[int, bool, bool, int]:
        sealed = self.seg.sealed  # read before the tail: once sealed, the tail is final
        end, last = self.seg.tail
        return end, True, sealed, last

    def probe(self) -> tuple[bool, bool]:
        return False, self.seg.sealed

    def sealed_bloom(self) -> bytes | None:
        return bytes(self.seg.bloom) if self.seg.sealed else None

    def release(self) -> None:
        """Why: the writer's segment state kept the map of every sealed segment a scanner had read (or skipped by its
        vchannel filter), each with the descriptor Python's mmap keeps, until retention deleted the file: without
        retention, one descriptor per segment for the writer's life. The map is dropped, not closed: payload views
        handed out and a reader still in the segment keep it alive; a later reader maps it again."""
        self._mv = None
        if self.seg.sealed:  # the active segment's map is the one every tailing reader reads
            self.seg.drop_mapping()

    def index(self) -> list[tuple[int, int, int]]:
        """Why a sealed segment's index is kept by this reader, not in the segment's state: kept there, the writer
        held the index of every segment a reader had sought in, for its life (about 5 % of the log in RAM)."""
        seg = self.seg
        entries = seg.index  # before the flag: a seal drops the list after the flag (SegmentState.drop_index)
        if seg.index_checked:  # the active segment's, which the writer extends
            return entries
        cached = self._index
        if cached is not None:
            return cached
        idx = load_index(self.fops, seg.path, seg.first_id, seg.tail[0])
        if idx is not None and not idx.problem and _index_matches(self, idx.entries):
            entries = idx.entries
        elif self.view(0) is None:
            # Deleted (retention, a truncate) since the reader found it: no index, and the seek's _fill moves on to
            # what is kept. Rebuilt, the open of the deleted file raised out of the seek (a WALIOError, where the
            # writer's in-memory index had let the reader move on), or its .idx was written again, after its deletion.
            entries = []
        else:
            try:
                entries = rebuild_index(self.fops, seg, write=self.write_index)
            except OSError:
                # Not written (a full disk, the segment deleted meanwhile): the index only speeds a seek up, and a
                # reader that could not write it failed its seek for as long as the disk stayed full. Used unwritten
                # (a later seek writes it); none for a segment gone, and the seek moves on as above.
                try:
                    entries = rebuild_index(self.fops, seg, write=False)
                except FileNotFoundError:
                    entries = []
            if seg.sealed:
                seg.drop_index()
        self._index = entries
        return entries


class WriterSource:
    exact_wait = True

    def __init__(self, log: ChannelLog, fops: FileOps) -> None:
        self.log = log
        self.fops = fops

    def bound(self) -> tuple[int, int] | None:
        return None  # its writer wakes it: it waits long anyway (exact_wait)

    def _wrap(self, seg: SegmentState | None) -> _WSeg | None:
        return _WSeg(seg, self.fops, True) if seg is not None else None

    def first(self) -> SegView | None:
        segs = self.log.segments
        return self._wrap(segs[0] if segs else None)

    def last(self) -> SegView | None:
        segs = self.log.segments
        return self._wrap(segs[-1] if segs else None)

    def find(self, message_id: int) -> SegView | None:
        return self._wrap(self.log.find(message_id))

    def after(self, seg: SegView) -> SegView | None:
        assert isinstance(seg, _WSeg)
        return self._wrap(self.log.after(seg.seg))


# -- directory source (read-only followers) -------------------------------------------------------------------------
class _DSeg:
    __slots__ = ("_ident", "_index", "_mv", "_summary", "first_id", "fops", "path", "source")

    def __init__(self, source: DirSource, first_id: int, path: str) -> None:
        # Weak: the source lists its segments, and a cycle between the two left a closed follower's segment mapped
        # (its descriptor, and a deleted file's disk space) until the next collection of cycles, which a long-lived
        # process with a large heap runs rarely.
        self.source = weakref.ref(source)
        self.fops = source.fops
        self.first_id = first_id
        self.path = path
        self._mv: memoryview | None = None
        self._summary: Summary | None = None
        self._index: list[tuple[int, int, int]] | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file mapped first

    def view(self, need: int) -> memoryview | None:
        mv = self._mv
        if mv is None or len(mv) < need:
            try:
                fd = self.fops.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            except NotRegularFileError as e:  # no writer makes one: damage, as a bad header is (recovery refuses it)
                raise CorruptedError(f"{self.path}: {e.strerror}", path=self.path, offset=0) from None
            try:
                source = self.source()
                if source is not None:  # opened by its path: in the directory this reader lists, or a new one's
                    source.check_dir()
                ident = self.fops.fidentity(fd)
                if self._ident is not None and ident != self._ident:
                    # Mapped again (the file grew, or a later reader) and another file: the records there are not
                    # the ones this segment's summary, index and readers' positions describe.
                    raise _replaced(self.path, f"segment {self.path} was replaced by another file")
                size = self.fops.fstat_size(fd)
                if size < DATA_START:  # segments get their full size before their name: this one was cut
                    raise CorruptedError(f"{self.path}: segment file is only {size} bytes", path=self.path,
                                         offset=size)
                mv = memoryview(self.fops.mmap(fd, size))
            finally:
                self.fops.close(fd)
            # The header is written before the segment gets its name, so a bad one is damage, as in recovery
            # (which refuses to open the channel): its records are not read.
            hdr = SegmentHeader.unpack(mv[: SEG_HEADER.size], self.path)
            if hdr.first_id != self.first_id:
                raise CorruptedError(f"{self.path}: header says first ID {hdr.first_id}", path=self.path, offset=0)
            self._mv = mv
            self._ident = ident
        return mv

    def mapped_ident(self) -> tuple[int, int] | None:
        """The identity of the file this view keeps mapped (a map keeps its inode, so no new file can have it)."""
        return self._ident if self._mv is not None else None

    def status(self) -> tuple[int, bool, bool, int]:
        s = self._summary
        if s is None:  # once sealed, known for good: a released segment is not mapped again to tell
            mv = self.view(0)
            if mv is None:
                return 0, True, True, -1
            s = Summary.unpack(mv, SEAL_OFF, SEAL_MAGIC)
            if s is None:
                return len(mv), False, False, -1
            if s.data_end > len(mv):
                # A map made while the segment was empty is shorter than the data when the writer grew the file
                # for a record larger than a segment and sealed it before this follower looked again: the file,
                # not that map, says whether the summary lies.
                mv = self.view(s.data_end)
                if mv is None:
                    return 0, True, True, -1
            if not DATA_START <= s.data_end <= len(mv):
                raise CorruptedError(
                    f"{self.path}: seal summary says the data ends at {s.data_end}, the file has {len(mv)} bytes",
                    path=self.path, offset=min(s.data_end, len(mv)),
                )
            self._summary = s
        return s.data_end, True, True, s.last_id

    def sealed_bloom(self) -> bytes | None:
        self.status()
        return self._summary.bloom if self._summary is not None else None

    def release(self) -> None:
        """Why: a follower kept every segment it had read mapped until the file was deleted, each map with the file
        descriptor Python's mmap keeps: without retention, one descriptor per segment of the log (EMFILE at the
        default limit of 1,024). A reader still in the segment keeps its own view; a later one maps it again."""
        self._mv = None

    def marked(self) -> bool:
        """Whether the segment's successor mark is written: the writer writes it once the successor exists."""
        mv = self.view(0)
        return mv is not None and parse_next_mark(mv[NEXT_OFF : NEXT_OFF + NEXT_MARK.size]) is not None

    def probe(self) -> tuple[bool, bool]:
        """(grew, has a successor): asked only when a reader has caught up with the active segment."""
        mv = self.view(0)
        try:
            size = self.fops.stat_size(self.path)
        except FileNotFoundError:
            return False, True
        grew = False
        if mv is not None and size > len(mv):
            self._mv = None
            grew = self.view(size) is not None
        if self.status()[2]:  # the writer seals a segment before it makes its successor
            return grew, True
        source = self.source()
        return grew, source is not None and source.has_after(self.first_id)

    def index(self) -> list[tuple[int, int, int]]:
        if self._index is None:
            limit, exact, _sealed, _ = self.status()
            try:
                idx = load_index(self.fops, self.path, self.first_id, limit if exact else None)
            except OSError:  # not a regular file, no right to read it, an I/O error: derived data, so read the
                idx = None  # segment without it (``wal verify`` reports it) rather than retry the same error for ever
            entries = idx.entries if idx is not None else []
            if not _index_matches(self, entries):
                mv = self.view(0)
                entries = scan_segment(mv, self.first_id, limit).index if mv is not None else []
            self._index = entries
        return self._index


_RELIST_AFTER = 1.0  # seconds between listings of a follower waiting in an unsealed segment (DirSource.has_after)


def _replaced(path: str, what: str) -> CorruptedError:
    return CorruptedError(
        f"{what} under this reader: the channel was deleted (and maybe made anew, its IDs starting over), so what "
        "follows is not the log it was reading; a new read (or read-only open) starts over on the channel as it is",
        path=path,
    )


class _DirHold:
    """A channel directory held open: its identity cannot go to another directory while it is."""

    __slots__ = ("__weakref__", "close", "ident")

    def __init__(self, fops: FileOps, fd: int) -> None:
        self.ident = fops.fidentity(fd)
        self.close = weakref.finalize(self, fops.close, fd)  # at the latest when no reader needs it any more


class ChannelDir:
    """The channel directory of a read-only WAL, held open (one descriptor) for its readers.

    Why: a channel deleted and made anew (``rm -rf``, then a new writer) starts its IDs at 1 again, in files of the
    same names, and a follower that had read IDs 1..4 of the old log went on at ID 5 of the new one, or waited for
    good in the old log's deleted file, without a word. The path's (st_dev, st_ino) says which directory it names,
    but an inode number is reused once free: held open, the old directory keeps its inode, so the kernel cannot
    give its number to the new one. A reader binds to the directory it first lists (:meth:`hold`) and compares the
    path's identity at each listing (``DirSource``); a new read binds to the directory there is then. A hold lives
    as long as a reader bound to it, or until :meth:`close`.
    """

    def __init__(
        self, path: str, fops: FileOps, on_new: Callable[[tuple[int, int]], None] | None = None
    ) -> None:
        self.path = path
        self.fops = fops
        self._on_new = on_new  # told each directory a reader binds to (the opener moves its watch there)
        self._lock = threading.Lock()
        self._current: _DirHold | None = None
        self._holds: weakref.WeakSet[_DirHold] = weakref.WeakSet()
        self._closed = False

    def identity(self) -> tuple[int, int] | None:
        """Which directory the path names now (None: none, or not one that can be listed)."""
        try:
            return self.fops.identity(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def hold(self) -> _DirHold | None:
        """The directory the path names now, held open; None while there is none (a follower before its writer)."""
        with self._lock:
            if self._closed:
                return None
            now = self.identity()
            if now is None:
                return None
            if self._current is not None and self._current.ident == now:
                return self._current
            try:
                fd = self.fops.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                if e.errno != errno.ELOOP:  # a symbolic link planted there: never followed, so never listed as one
                    raise
                return None
            try:
                new = _DirHold(self.fops, fd)
            except BaseException:
                self.fops.close(fd)
                raise
            self._current = new
            self._holds.add(new)
        if self._on_new is not None:
            self._on_new(new.ident)
        return new

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._current = None
            holds = list(self._holds)
        for h in holds:
            h.close()


class DirSource:
    exact_wait = False

    def __init__(self, chdir: str, fops: FileOps, directory: ChannelDir | None = None) -> None:
        self.chdir = chdir
        self.fops = fops
        self._segs: list[_DSeg] = []
        self._listed_at = -_RELIST_AFTER  # monotonic time of the last listing
        self._dir = directory if directory is not None else ChannelDir(chdir, fops)
        self._hold: _DirHold | None = None  # the directory this reader lists, once it has found one
        self._gone: CorruptedError | None = None

    def bound(self) -> tuple[int, int] | None:
        hold = self._hold
        return None if hold is None else hold.ident

    def _refresh(self) -> list[_DSeg]:
        self._check_gone()
        self._listed_at = time.monotonic()
        hold = self._hold or self._dir.hold()
        if hold is None:
            listing = []  # no directory yet (or a closed WAL's reader)
        else:
            try:
                listing = list_segments(self.fops, self.chdir)
            except FileNotFoundError:
                listing = []
            # After the listing: the path still naming the held directory then, the listing was of it (a deleted
            # directory never comes back under the path).
            if self._dir.identity() != hold.ident:
                if self._hold is not None:
                    self.check_dir()  # raises
                listing = []  # replaced during this reader's first listing: it binds to the new one at the next
            else:
                self._hold = hold
        old = {s.first_id: s for s in self._segs}
        segs = [old.get(fid) or _DSeg(self, fid, path) for fid, path in listing]
        self._check_segments(old, segs)
        self._segs = segs
        return segs

    def check_dir(self) -> None:
        """Raise if the path no longer names the directory this reader lists: a file opened by its path after this
        (a segment listed before, mapped now) may be the new log's."""
        self._check_gone()
        hold = self._hold
        if hold is not None and self._dir.identity() != hold.ident:
            self._gone = _replaced(self.chdir, f"channel directory {self.chdir} was deleted or replaced")
            raise self._gone

    def _check_gone(self) -> None:
        """Once the channel was found deleted or replaced, every question raises that: a listing made before the
        finding (used without a new one) must not lead the reader on."""
        if self._gone is not None:
            raise self._gone

    def _check_segments(self, old: dict[int, _DSeg], segs: list[_DSeg]) -> None:
        """Why: with its directory kept (``rm`` of its files rather than of the directory), a channel made anew
        reuses the segment names, and the path's identity says nothing. A segment this reader keeps mapped has
        its inode kept too: the file listed under its name must be that one. And retention deletes the oldest
        segments first, so a mapped segment gone while an older one is listed was not deleted by retention."""
        listed = {s.first_id for s in segs}
        oldest = segs[0].first_id if segs else None
        for s in old.values():
            mapped = s.mapped_ident()
            if mapped is None:
                continue
            if s.first_id in listed:
                try:
                    same = self.fops.identity(s.path) == mapped
                except FileNotFoundError:  # deleted since the listing: the next one says how
                    same = True
                if not same:
                    self._gone = _replaced(s.path, f"segment {s.path} was replaced by another file")
                    raise self._gone
            elif oldest is not None and oldest < s.first_id:
                self._gone = _replaced(s.path, f"segment {s.path} was deleted while older ones were kept")
                raise self._gone

    def has_after(self, first_id: int) -> bool:
        """Whether a segment follows the active one although it was not sealed (a writer that crashed in a roll).

        Why the listing is made at most every :data:`_RELIST_AFTER` seconds: a follower waiting at the frontier
        asks at every poll (20 a second), and listing an n-segment directory each time made an idle follower of a
        10,000-segment log burn 40 % of a core. A normal roll seals the segment first, which ``probe`` sees in the
        map without a listing; only the crash case waits for the next listing."""
        self._check_gone()
        if self._after_in(self._segs, first_id) is not None:  # segments are deleted oldest first, never after one
            return True
        if not self._may_list():
            return False
        return self._after_in(self._refresh(), first_id) is not None

    def _may_list(self) -> bool:
        return time.monotonic() - self._listed_at >= _RELIST_AFTER

    def first(self) -> SegView | None:
        segs = self._refresh()
        return segs[0] if segs else None

    def last(self) -> SegView | None:
        segs = self._refresh()
        return segs[-1] if segs else None

    def find(self, message_id: int) -> SegView | None:
        segs = self._refresh()
        i = bisect.bisect_right([s.first_id for s in segs], message_id)
        return segs[i - 1] if i else None

    def after(self, seg: SegView) -> SegView | None:
        """Why the listing already made is tried first: a follower asks at every segment it finishes (and at every
        one its vchannel filter skips), and a fresh listing of an n-segment directory each time made reading the
        log O(n^2) (10,000 segments: 37 ms of CPU per segment). A sealed segment's successor starts right after its
        last ID; a listed segment that does so is that successor (a deleted one is found missing when mapped)."""
        assert isinstance(seg, _DSeg)
        self._check_gone()
        nxt = self._after_in(self._segs, seg.first_id)
        _limit, exact, sealed, last = seg.status()
        if nxt is not None:
            if exact and sealed and nxt.first_id == last + 1:
                return nxt
        elif exact and sealed and last >= 0 and not seg.marked() and not self._may_list():
            # A roll in progress, or a writer that failed in one (a full disk) and may not come back for hours: a
            # listing at every poll made such an idle follower's CPU grow with the log. The writer marks the sealed
            # segment once the successor exists, which the map shows; without the mark, a listing a second.
            return None
        return self._after_in(self._refresh(), seg.first_id)

    @staticmethod
    def _after_in(segs: list[_DSeg], first_id: int) -> _DSeg | None:
        i = bisect.bisect_right(segs, first_id, key=_seg_first_id)
        return segs[i] if i < len(segs) else None


_seg_first_id = operator.attrgetter("first_id")


def _index_matches(seg: SegView, entries: list[tuple[int, int, int]]) -> bool:
    """Spot-check an index against the data: its last entry must point at a valid record with that ID."""
    if not entries:
        return True
    mid, _tt, pos = entries[-1]
    mv = seg.view(0)
    if mv is None:
        return False
    r = check_record(mv, pos, len(mv))
    return r is not None and r[1] == mid


# -- the scanner ----------------------------------------------------------------------------------------------------
_MIN_BACKOFF = 0.001
_MAX_BACKOFF = 0.05
_WATCHED_MAX_BACKOFF = 1.0
"""The poll cap of a follower whose directory is known watched (``Hub.watching``): a write wakes it at once, so the
poll only bounds the latency of an event lost some way the hub does not hear of. At ``_MAX_BACKOFF`` the poll was
75 % of an idle follower's CPU (300 idle followers: 37-40 % of a core; review 17b)."""
_MOVE, _WAIT, _RETRY = 0, 1, 2
_ZERO_CHECK_FIRST = 1.0  # seconds at the same zeroed header before a follower looks past it (then doubling)
_ZERO_CHECK_MAX = 30.0


class LocalFSScanner(ScannerImpls):
    def __init__(self, opt: ReadOption, source: Source, hub: Hub, on_close: Callable[[LocalFSScanner], None]) -> None:
        self._name = opt.name
        self._source = source
        self._hub = hub
        self._on_close = on_close
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._seg: SegView | None = None
        self._mv: memoryview | None = None
        self._pos = 0
        self._expect = 0  # ID of the record at _pos
        self._skip_below = 0  # records with smaller IDs are passed over (seeking inside a segment)
        self._skipped_to: LocalFSMessageID | None = None  # see skipped_to
        self._lock = threading.Lock()  # one reader at a time; close() does not take it
        self._policy = opt.deliver_policy
        self._vch_cache: dict[bytes, str] = {}
        # The vchannel hint: sealed segments whose bloom filter holds neither this vchannel nor broadcast data
        # are skipped whole (time ticks are not in the filters, see docs/FORMAT.md). Messages are not filtered
        # one by one: whatever shares a segment with wanted messages is delivered too.
        vch = opt.vchannel
        self._bloom_keys = (bloom_positions(vch), bloom_positions("")) if vch else None
        self._positioned = False
        self._zero_at: tuple[SegView | None, int] | None = None  # the zeros this follower waits at (see
        self._zero_next = 0.0  # _zeros_proven_damage), when it looks past them next, and the gap after that
        self._zero_gap = _ZERO_CHECK_FIRST
        self._idle_wait = _MIN_BACKOFF  # the next poll's wait, kept across calls (see recv_batch)
        if self._policy.message_id is not None:
            _id_value(self._policy.message_id)  # a foreign ID fails at read(), not at the first recv()
        if self._policy.kind is DeliverPolicyKind.LATEST:
            try:
                self._position()  # "latest" is fixed when read() returns
            except OSError as e:  # as recv_batch says it: every error of the library is a WALError
                raise WALIOError(f"localfs scanner {self._name!r}: {e}{limit_hint(e)}") from e

    @property
    def name(self) -> str:
        return self._name

    def done(self) -> threading.Event:
        return self._done

    def error(self) -> BaseException | None:
        return self._error

    def stopped_at(self) -> tuple[str, int, int] | None:
        """(segment path, offset, ID expected there): where reading has got to; None before it started.

        For one-shot readers (``wal dump``), which stop where a follower would wait and judge what is there.
        """
        seg = self._seg
        return None if seg is None else (seg.path, self._pos, self._expect)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._done.set()
        self._hub.bump()
        self._on_close(self)

    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        return self.recv_batch(1, timeout)[0]

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        deadline = None if timeout is None else time.monotonic() + timeout
        # Kept from the call before while nothing came: ``async for`` waits in 0.2 s slices, and starting each at
        # 1 ms made an idle follower poll 9 times a slice instead of 4 (300 idle async followers: a whole core).
        backoff = self._idle_wait
        hub = self._hub
        unannounced = -1  # the hub's version before a long wait that no event ended (see below), else -1
        with self._lock:
            while True:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise ShutdownError(f"localfs scanner {self._name!r} is closed")
                version = hub.version
                try:
                    out = self._fill(max(1, max_messages))
                except CorruptedError as e:
                    self._error = e
                    self._done.set()
                    raise
                except OSError as e:  # e.g. no more maps or file descriptors: the scanner may be retried
                    raise WALIOError(f"localfs scanner {self._name!r}: {e}{limit_hint(e)}") from e
                if out:
                    if hub.version == unannounced:  # no event since, up to the data found now: the watch missed it
                        hub.missed()
                    self._idle_wait = _MIN_BACKOFF
                    return out
                if hub.arm is not None:  # a channel directory not made yet: watch it once it exists
                    hub.arm()
                watched = hub.watching(self._source.bound())
                if not watched and backoff > _MAX_BACKOFF:
                    backoff = _MAX_BACKOFF  # the watch lost (or distrusted) during a long wait
                wait = _MAX_BACKOFF * 10 if self._source.exact_wait else backoff
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._idle_wait = backoff
                        raise WALTimeoutError(f"localfs scanner {self._name!r}: no message within {timeout} s")
                    wait = min(wait, left)
                with hub.lock:
                    if hub.version == version and not self._closed:
                        hub.cond.wait(wait)
                quiet = hub.version == version
                unannounced = version if watched and quiet and wait > _MAX_BACKOFF else -1
                backoff = min(backoff * 2, _WATCHED_MAX_BACKOFF if watched else _MAX_BACKOFF) if quiet else _MIN_BACKOFF

    # -- positioning -------------------------------------------------------------------------------------------------
    def _position(self) -> bool:
        src = self._source
        pol = self._policy
        kind = pol.kind
        if kind is DeliverPolicyKind.ALL:
            seg = src.first()
            if seg is None:
                return False
            self._enter(self._skip_unrelated(seg), DATA_START, 0)
        elif kind is DeliverPolicyKind.LATEST:
            seg = src.last()
            again = src.last()  # a listing made while the writer rolled may miss the newest segment (see _fill)
            if again is not None and (seg is None or again.first_id > seg.first_id):
                seg = again
            if seg is None:  # nothing written yet (a follower before its writer): all that comes is after read()
                self._policy = DeliverPolicy.all()
                return False
            limit, exact, _sealed, last = seg.status()
            if exact and last >= 0:
                self._enter(seg, limit, last + 1)
            else:
                self._seek(seg, 1 << 62)
                self._skip_below = 0
                self._walk_to_end()
        else:
            target = _id_value(pol.message_id)
            if kind is DeliverPolicyKind.START_AFTER:
                target += 1
            seg = src.find(target)
            if seg is None:
                seg = src.first()
                if seg is None:
                    return False
                if seg.first_id > max(target, 1):  # deleted (truncate, retention): said, not silent (README,
                    # Truncation); IDs start at 1, so ID 0 was never there to delete (``dump --from 0`` warned)
                    log.warning(
                        "localfs scanner %r: message ID %d was deleted; starting at the oldest kept one, %d",
                        self._name, target, seg.first_id,
                    )
                    self._skipped_to = fast_id(seg.first_id - 1)
                self._enter(seg, DATA_START, seg.first_id)
            else:
                self._seek(seg, target)
        self._positioned = True
        return True

    def _enter(self, seg: SegView, pos: int, expect: int) -> None:
        """Start reading ``seg`` at ``pos``, where the record ``expect`` is (0: the segment's first)."""
        self._seg = seg
        self._mv = None
        self._pos = pos
        self._expect = expect or seg.first_id

    def _skip_unrelated(self, seg: SegView) -> SegView:
        keys = self._bloom_keys
        if keys is None:
            return seg
        while True:
            try:
                bloom = seg.sealed_bloom()
            except CorruptedError:  # a damaged header or summary: entered, _fill raises it after what it read
                return seg
            if bloom is None or any(all(bloom[p >> 3] & (1 << (p & 7)) for p in k) for k in keys):
                return seg
            nxt = self._source.after(seg)
            if nxt is None or nxt.first_id != seg.status()[3] + 1:
                return seg  # a gap after it (or a listing that missed one): _fill's checks decide, past this one
            seg.release()  # mapped for its filter only
            seg = nxt

    def _seek(self, seg: SegView, target: int) -> None:
        entries = seg.index()
        i = bisect.bisect_right(entries, target, key=lambda e: e[0])
        self._enter(seg, DATA_START, seg.first_id)
        if i:
            mid, _tt, pos = entries[i - 1]
            mv = seg.view(0)
            r = check_record(mv, pos, len(mv)) if mv is not None else None
            if r is not None and r[1] == mid:  # an index is a hint: trust an entry only once the data agrees
                self._enter(seg, pos, mid)
        self._skip_below = target

    def _walk_to_end(self) -> None:
        """Move past every record already written (``latest`` on a directory source)."""
        seg = self._seg
        assert seg is not None
        mv = seg.view(0)
        if mv is None:
            return
        limit = len(mv)
        pos, expect = self._pos, self._expect
        while True:
            r = check_record(mv, pos, limit)
            if r is None or r[1] != expect:
                break
            pos += r[0]
            expect += 1
        self._pos, self._expect = pos, expect

    # -- reading -----------------------------------------------------------------------------------------------------
    def _fill(self, max_n: int) -> list[ImmutableMessage]:
        out: list[ImmutableMessage] = []
        try:
            self._fill_into(max_n, out)
        except OSError:  # a file it may not open, an I/O error: said by the next call, after what was read before
            if not out:  # (raised here, a batch read from the segments before was lost: ``wal dump`` showed none)
                raise
        return out

    def _fill_into(self, max_n: int, out: list[ImmutableMessage]) -> list[ImmutableMessage]:
        if not self._positioned and not self._position():
            return out
        while len(out) < max_n and not self._closed:
            seg = self._seg
            assert seg is not None
            try:
                limit, exact, sealed, _last = seg.status()
                mv = self._mv
                if mv is None or len(mv) < limit:
                    mv = self._mv = seg.view(limit)
            except CorruptedError:  # a damaged header or summary of the segment just entered
                if out:
                    break  # deliver the records before it; the next call stops here again and raises
                raise
            if mv is None:  # deleted by retention: continue with what is still kept
                try:
                    if not self._relocate():
                        return out
                except CorruptedError:  # the segment it moves to is damaged: as above
                    if out:
                        break
                    raise
                continue
            self._read(mv, limit, exact, max_n, out)
            if len(out) >= max_n:
                break
            # Stopped before max_n: at the end of the published data, or at a record that is not (yet) valid.
            try:
                step = self._at_end(mv, limit, exact, sealed)
            except CorruptedError:
                if out:
                    break  # deliver the valid records before the damage; the next call stops there and raises
                raise
            if step == _WAIT:
                break
            if step == _RETRY:
                continue
            try:
                if not self._move_on(seg):
                    break
            except CorruptedError:  # a gap, or the channel deleted or replaced under this reader (see ChannelDir)
                if out:
                    break  # deliver the records before it; the next call finds it again and raises
                raise
        return out

    def _move_on(self, seg: SegView) -> bool:
        """Enter the segment after ``seg``, finished; False while there is none yet."""
        nxt = self._source.after(seg)
        if nxt is not None and nxt.first_id != self._expect:
            # Look again before calling it a gap: a directory listing made while the writer created segments
            # can hold a newer one and miss the one before it (readdir returns entries created during it, or
            # not); a listing started after this one holds every segment created before the newer one.
            nxt = self._source.after(seg)
        if nxt is None:
            return False
        if nxt.first_id > self._expect and self._first_kept() >= nxt.first_id:
            # Retention deleted what this (slow) reader had not reached yet: go on with what is kept, loudly.
            log.warning(
                "localfs scanner %r: IDs %d..%d were deleted before it read them; going on at %d",
                self._name, self._expect, nxt.first_id - 1, nxt.first_id,
            )
            self._skipped_to = fast_id(nxt.first_id - 1)
        elif nxt.first_id != self._expect:
            raise CorruptedError(
                f"{nxt.path}: segment starts at ID {nxt.first_id}, expected {self._expect} after {seg.path}",
                path=nxt.path, offset=0,
            )
        seg.release()
        self._enter(self._skip_unrelated(nxt), DATA_START, 0)
        return True

    def skipped_to(self) -> LocalFSMessageID | None:
        return self._skipped_to

    def _first_kept(self) -> int:
        first = self._source.first()
        return first.first_id if first is not None else 0

    def _relocate(self) -> bool:
        seg = self._source.find(self._expect) or self._source.first()
        if seg is None:
            return False
        if seg.first_id > self._expect or (self._seg is not None and seg.first_id == self._seg.first_id):
            if seg.view(0) is None:
                return False
            want = max(self._expect, self._skip_below)  # IDs below where a start_from/after reader starts: not its
            if seg.first_id > want > 0:  # the oldest kept is past it: retention got there first, said loudly
                log.warning(
                    "localfs scanner %r: IDs %d..%d were deleted before it read them; going on at %d",
                    self._name, want, seg.first_id - 1, seg.first_id,
                )
            self._enter(seg, DATA_START, seg.first_id)
        else:
            self._seek(seg, max(self._expect, self._skip_below))
        return True

    def _at_end(self, mv: memoryview, limit: int, exact: bool, sealed: bool) -> int:
        """_MOVE when the current segment is finished, _WAIT for more data, _RETRY to read again now; raises on
        damage."""
        pos = self._pos
        seg = self._seg
        assert seg is not None
        if exact:
            if pos < limit:
                raise CorruptedError(
                    f"{seg.path}: corrupted record at offset {pos} (checksum or ID mismatch)", path=seg.path, offset=pos
                )
            return _MOVE if sealed else _WAIT
        # Directory source, active segment: a record that is not valid is the writer's frontier. Once the segment
        # has a successor it is finished: its seal summary (written before the successor) says where it ends, so
        # read again up to that exact end; without one (the writer crashed in between) zeros end it.
        grew, later = seg.probe()
        if grew:
            self._mv = None
            return _RETRY
        if not later:
            if self._damaged_before_frontier(mv, pos, limit):
                raise CorruptedError(
                    f"{seg.path}: corrupted record at offset {pos} (checksum or ID mismatch; a valid record with a "
                    "higher ID follows)", path=seg.path, offset=pos,
                )
            return _WAIT
        if seg.status()[1]:
            return _RETRY
        if pos + REC_HEADER_SIZE <= limit and not is_zero_header(mv, pos, limit):
            raise CorruptedError(
                f"{seg.path}: corrupted record at offset {pos} (checksum or ID mismatch)", path=seg.path, offset=pos
            )
        return _MOVE

    def _damaged_before_frontier(self, mv: memoryview, pos: int, limit: int) -> bool:
        """Whether the invalid bytes at ``pos`` of the active segment are damage rather than the writer's frontier.

        The rule of recovery and of the writer's own scanners: the writer only appends after complete records,
        so a valid record with a higher ID after a bad one proves the bad one was written and then damaged. Zeros
        at ``pos`` are the plain frontier (checked first: that is every wait, and it costs one compare); a record
        caught mid-write gets a few short chances to complete before it is called damage.
        """
        if pos + REC_HEADER_SIZE > limit:
            return False
        if is_zero_header(mv, pos, limit):
            return self._zeros_proven_damage(mv, pos, limit)
        if find_valid_record_after(mv, pos, limit, self._expect - 1) is None:
            return False
        for _ in range(3):
            r = check_record(mv, pos, limit)
            if r is not None and r[1] == self._expect:
                return False
            time.sleep(0.01)
        return True

    def _zeros_proven_damage(self, mv: memoryview, pos: int, limit: int) -> bool:
        """Whether a zeroed record header, where this follower has been waiting, is followed by a record that
        vouches for it (recovery's proof of damage).

        Zeros are the writer's frontier at every ordinary wait, and looking past them means scanning up to the
        end of the preallocated segment, so the follower looks only once it has waited at the same zeros for
        :data:`_ZERO_CHECK_FIRST` seconds, and then ever less often: damage is reported within seconds instead
        of never, and a plain wait costs one compare.
        """
        now = time.monotonic()
        at = (self._seg, pos)
        if self._zero_at != at:
            self._zero_at = at
            self._zero_gap = _ZERO_CHECK_FIRST
            self._zero_next = now + _ZERO_CHECK_FIRST
            return False
        if now < self._zero_next:
            return False
        self._zero_gap = min(self._zero_gap * 2, _ZERO_CHECK_MAX)
        self._zero_next = now + self._zero_gap
        if find_valid_record_after(mv, pos, limit, self._expect - 1) is None:
            return False
        # The writer may have appended at ``pos`` and after it since the zeros were read: it writes in order, so
        # once the vouching record is visible, a record written at ``pos`` is too. Then it was the frontier.
        r = check_record(mv, pos, limit)
        return r is None or r[1] != self._expect

    def _read(self, mv: memoryview, limit: int, exact: bool, max_n: int, out: list[ImmutableMessage]) -> None:
        """Decode valid records from ``pos`` on: the hot loop of every scan.

        Locals only, one ``unpack_from`` for the header, the fixed metadata and an LC_ID record's ID, rare cases
        (txn, barrier, not-persisted metadata, properties) out of line, and fields that runs of records share
        (last-confirmed ID, vchannel, type) reused from the previous record instead of being rebuilt: fewer objects
        per message is most of what a Python scan can save. The CRC of a record is checked before any of its bytes
        is used.
        """
        pos = self._pos
        expect = self._expect
        skip_below = self._skip_below
        # Slicing the map itself gives bytes in one step (a memoryview slice is a view plus, to copy, a second
        # object): used for CRC input and for small payloads.
        mm = mv.obj
        if not isinstance(mm, mmap.mmap) or len(mm) != len(mv):  # segment views are whole maps; offsets rely on it
            raise TypeError("localfs scanner: a segment view must cover a whole map")
        copy_max = _COPY_MAX
        unpack = _HEAD_META.unpack_from
        unpack_lc = _HEAD_META_LC.unpack_from
        unpack_u64 = U64.unpack_from
        crc = crc32c
        new = object.__new__
        id_cls = LocalFSMessageID
        message = ImmutableMessage
        types = _TYPES
        unknown = MessageType.UNKNOWN
        vcache = self._vch_cache
        direct = _DIRECT
        no_props = _NO_PROPS
        seg_path = self._seg.path if self._seg is not None else "?"
        if len(vcache) > 4096:
            vcache.clear()
        lc_value = -1  # no ID has this value: the first LC_ID record builds its own
        lc = _NO_ID
        raw_prev = b""
        vch = ""
        mt_prev = -1
        mtype = unknown
        n = len(out)
        stop = limit - _HEAD_META_SIZE  # a valid record holds at least the header and the fixed metadata
        stop_lc = stop - 8  # ... and, read in the same unpack, the 8 bytes where an LC_ID record keeps its ID
        while n < max_n and pos <= stop:
            if pos <= stop_lc:  # the bytes of the ID slot are unpacked for every record, used only for LC_ID
                c, body_len, magic, _fl, mt, meta_len, mid, tt, wal_term, lc_kind, mflags, vch_len, props_len, lc_v = (
                    unpack_lc(mv, pos)
                )
            else:  # the last bytes of the data: fewer than an LC_ID record needs, the ID (if any) is read alone
                c, body_len, magic, _fl, mt, meta_len, mid, tt, wal_term, lc_kind, mflags, vch_len, props_len = unpack(
                    mv, pos
                )
                lc_v = -1
            body = pos + _HEADER
            end = body + body_len
            if (magic != _MAGIC or end > limit or mid != expect or not _META <= meta_len <= body_len
                    or crc(mm[pos + 4 : end]) != c):
                break
            pos += (_HEADER + body_len + 7) & ~7
            expect += 1
            if mid < skip_below:
                continue
            message_id = new(id_cls)
            message_id.value = mid
            p = pos_meta = body + _META  # just after the fixed metadata
            if lc_kind == _LC_ID:
                if lc_v < 0:
                    lc_v = _rare_part(unpack_u64, mv, p, seg_path, body - _HEADER, meta_len)[0]
                if lc_v != lc_value:
                    lc = new(id_cls)
                    lc.value = lc_value = lc_v
                p += 8
                last_confirmed = lc
            else:
                last_confirmed = message_id
            txn = None
            not_persisted = False
            if mflags:
                m = _rare_part(decode_meta, mv, pos_meta - _META, seg_path, body - _HEADER, meta_len)
                txn = m.txn_ctx
                not_persisted = m.not_persisted
                p = m.props_off - vch_len
            if vch_len:
                raw = mm[p : p + vch_len]
                if raw != raw_prev:
                    raw_prev = raw
                    vch = vcache.get(raw) or _new_vchannel(vcache, raw, seg_path, p)
                p += vch_len
                v_name = vch
            else:
                v_name = ""
            p0 = body + meta_len
            if p + props_len != p0:  # the parts the metadata says it has do not fill it: see _bad_layout
                raise _bad_layout(seg_path, body - _HEADER, meta_len)
            payload = mm[p0:end] if end - p0 <= copy_max else mv[p0:end]
            props = functools.partial(_properties_at, mv, p, props_len, seg_path) if props_len else no_props
            if mt != mt_prev:
                mt_prev = mt
                mtype = types.get(mt, unknown)
            if direct:  # the constructor's work without its keyword-call cost (see _DIRECT)
                im = new(message)
                im.message_id = message_id
                im.message_type = mtype
                im.payload = payload
                im._props = props
                im.vchannel = v_name
                im.time_tick = tt
                im.last_confirmed_message_id = last_confirmed
                im.txn_ctx = txn
                im.wal_term = wal_term
                im.not_persisted = not_persisted
            else:
                im = message(
                    message_id=message_id, message_type=mtype, payload=payload,
                    properties=props if props_len else None, vchannel=v_name, time_tick=tt,
                    last_confirmed_message_id=last_confirmed, txn_ctx=txn, wal_term=wal_term,
                    not_persisted=not_persisted,
                )
            out.append(im)
            n += 1
        self._pos = pos
        self._expect = expect


_T = TypeVar("_T")


def _bad_layout(path: str, off: int, meta_len: int) -> CorruptedError:
    """A record whose CRC matched but whose metadata's parts (last-confirmed ID, txn, barrier, vchannel, properties)
    do not add up to its ``meta_len``: a forger or a buggy writer made it. Read as it says, its last-confirmed ID,
    vchannel or properties would come from the bytes of another part (wrong data, delivered in silence), or a part
    would be read past the map (a bare ``struct.error``)."""
    return CorruptedError(
        f"{path}: record at offset {off}: its metadata's parts do not add up to its length ({meta_len} bytes)",
        path=path, offset=off,
    )


def _rare_part(read: Callable[[memoryview, int], _T], mv: memoryview, at: int, path: str, off: int,
               meta_len: int) -> _T:
    """``read(mv, at)`` for a part of a record read out of the hot loop's single unpack (a txn or barrier part, an
    ID in the map's last bytes): one that a bad ``meta_len`` puts past the map is :func:`_bad_layout`."""
    try:
        return read(mv, at)
    except struct.error as e:
        raise _bad_layout(path, off, meta_len) from e


def _new_vchannel(cache: dict[bytes, str], raw: bytes, path: str, off: int) -> str:
    try:
        return cache.setdefault(raw, raw.decode("utf-8"))
    except UnicodeDecodeError as e:  # the CRC matched, so a forger or a buggy writer made it
        raise CorruptedError(f"{path}: vchannel at offset {off} is not UTF-8: {e}", path=path, offset=off) from e


def _properties_at(mv: memoryview, off: int, length: int, path: str) -> dict[str, str]:
    try:
        return decode_properties(mv[off : off + length])
    except ValueError as e:  # the CRC matched, so a forger or a buggy writer made it: still never wrong data
        raise CorruptedError(f"{path}: malformed properties at offset {off}: {e}", path=path, offset=off) from e


_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}
_NO_PROPS: Mapping[str, str] = MappingProxyType({})
# Scans build messages by setting their slots (0.45 us instead of 1.3 us for the keyword call), but only while
# ImmutableMessage has exactly the slots this module fills; if the message model changes, the constructor is used.
_DIRECT = set(ImmutableMessage.__slots__) == {
    "_props", "last_confirmed_message_id", "message_id", "message_type", "not_persisted", "payload", "time_tick",
    "txn_ctx", "vchannel", "wal_term",
} and type(ImmutableMessage.__dict__.get("__init__")).__name__ == "function"
_HEAD_META = struct.Struct(REC_HEADER.format + META_FIXED.format.lstrip("<"))  # header + fixed metadata, one unpack
_HEAD_META_SIZE = _HEAD_META.size
# ... and the u64 after them, where an LC_ID record keeps its last-confirmed ID: one unpack instead of two for such a
# record (nearly every record a writer with appends in flight makes); other records unpack 8 bytes left unused.
_HEAD_META_LC = struct.Struct(_HEAD_META.format + "Q")
_HEADER = REC_HEADER_SIZE
_META = META_FIXED.size
_MAGIC = REC_MAGIC
_LC_ID = LC_ID
# Payloads up to this size are copied out of the map, larger ones are views into it. A copy of a small payload
# costs about what the view does, and bytes are not tracked by the garbage collector while a view is: on a scan
# of small messages the collector's passes over live views cost more than the copies.
_COPY_MAX = 1024
_NO_ID = fast_id(0)


def _id_value(mid: object) -> int:
    if isinstance(mid, LocalFSMessageID):
        return mid.value
    from ...errors import InvalidMessageIDError

    raise InvalidMessageIDError(f"not a localfs message ID: {mid!r}")

