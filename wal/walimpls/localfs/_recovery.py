"""Opening a channel's files: find each segment's end, cut a torn tail, rebuild indexes, resume IDs and ticks.

Only bytes written after the last fdatasync can be torn, and the writer syncs a segment before sealing it, so:
a sealed segment must scan cleanly. In the last segment a bad record is damage
(:class:`~wal.errors.CorruptedError`, nothing changed) when a later record proves it was durable: in format 2 a
valid record that starts a flush written after an fdatasync covered everything before it (PREV_DURABLE); in
format 1 any valid record. Otherwise everything from the bad record on belongs to flushes never known durable
(a power cut may keep any subset of their pages): a torn tail, cut by overwriting it with zeros (never
``ftruncate``: a reader may have the file mapped).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from ...errors import CorruptedError
from ._fileops import FileOps
from ._format import (
    CLOSE_MAGIC,
    CLOSE_OFF,
    DATA_START,
    FIRST_NAME,
    IDX_HEADER,
    IDX_TRAILER,
    INDEX_SUFFIX,
    LOCK_NAME,
    META_FIXED,
    NEXT_MARK,
    NEXT_OFF,
    REC_HEADER_SIZE,
    SEAL_MAGIC,
    SEAL_OFF,
    SEG_HEADER,
    SUMMARY,
    TERM_NAME,
    TMP_SUFFIX,
    ZERO_SUMMARY,
    IndexFile,
    ScanResult,
    SegmentHeader,
    Summary,
    check_record,
    find_valid_record_after,
    first_text,
    index_file_bytes,
    index_name,
    is_zero_header,
    last_nonzero_end,
    parse_first,
    parse_index,
    parse_next_mark,
    parse_segment_name,
    parse_term,
    scan_segment,
    segment_name,
    term_text,
    valid_ids_after,
    wall_ns,
)
from ._state import SegmentState

__all__ = [
    "Recovered",
    "front_lost",
    "list_segments",
    "lock_deleted",
    "log_term",
    "read_first",
    "read_term",
    "recover",
    "stored_max_time_tick",
    "successor_mark",
    "write_first",
    "write_term",
]

log = logging.getLogger("wal.localfs")


@dataclass
class Recovered:
    segments: list[SegmentState]
    next_id: int
    max_tt: int
    cut: list[str] = field(default_factory=list)  # one sentence per torn tail that was cut
    rebuilt_indexes: list[str] = field(default_factory=list)
    sealed_now: list[str] = field(default_factory=list)
    # The unsealed last segment's data is durable up to its end: recovery (write mode) fdatasynced it, so the
    # writer's first flush can carry PREV_DURABLE.
    tail_synced: bool = False
    # The first ID of newest segments deleted from outside, when ``accept_lost_segments`` let recovery go on.
    lost_from: int | None = None
    # What ``FIRST`` says (None: missing, as in logs older than it); ``first_restored``: it was unreadable, and
    # was written again (``restore_first``).
    first: int | None = None
    first_restored: bool = False


# Channel directories whose writer failed with an I/O error in this process. After a failed fdatasync Linux marks
# the unwritten pages clean and reports the error once: a later open in this process reads the never-durable
# bytes back from the page cache as valid, and its own fdatasync succeeds without writing them. Recovery of such
# a channel therefore writes its kept tail again before syncing it (see ``_rewrite``).
_io_failed: set[str] = set()
_io_failed_lock = threading.Lock()


def note_io_failure(chdir: str) -> None:
    with _io_failed_lock:
        _io_failed.add(os.path.realpath(chdir))


def _take_io_failure(chdir: str) -> bool:
    with _io_failed_lock:
        key = os.path.realpath(chdir)
        if key in _io_failed:
            _io_failed.discard(key)
            return True
        return False


def _rewrite(fops: FileOps, fd: int, start: int, end: int) -> None:
    """Write ``[start, end)`` again with the bytes it holds, so the next fdatasync really writes them."""
    pos = start
    while pos < end:
        chunk = fops.pread(fd, min(1 << 20, end - pos), pos)
        if not chunk:
            break
        fops.pwrite_all(fd, chunk, pos)
        pos += len(chunk)


def list_segments(fops: FileOps, chdir: str) -> list[tuple[int, str]]:
    out = []
    for name in fops.list_files(chdir):  # symbolic links are never segments: they could lead outside root
        fid = parse_segment_name(name)
        if fid is not None:
            out.append((fid, os.path.join(chdir, name)))
    out.sort()
    return out


def lock_deleted(fops: FileOps, chdir: str) -> bool:
    """Whether ``LOCK`` is missing from a channel a writer has opened: a running writer may still hold the deleted
    file's lock, so a new ``LOCK`` cannot tell. A writer makes ``LOCK`` before anything else; ``TERM`` only when its
    term is above the stored one (a writer of term 0 never writes it), its first segment at open. Either one
    without ``LOCK`` means it was deleted."""
    if os.path.exists(os.path.join(chdir, LOCK_NAME)):
        return False
    return os.path.exists(os.path.join(chdir, TERM_NAME)) or bool(list_segments(fops, chdir))


def read_term(fops: FileOps, chdir: str) -> int:
    path = os.path.join(chdir, TERM_NAME)
    try:
        raw = fops.read_file(path)
    except FileNotFoundError:
        return 0
    term = parse_term(raw)
    if term is None:
        raise CorruptedError(f"{path}: unreadable term file", path=path, offset=0)
    return term


def log_term(fops: FileOps, chdir: str) -> tuple[int, str]:
    """The highest writer term the log itself shows, and the segment that shows it (0 and "" when empty).

    Why: ``TERM`` alone fences stale writers, and it is one small file that can be deleted or copied back from an
    old backup; the log remembers the term too. Terms only grow along the log (each writer fences the ones before
    it), so the newest segment says it all: its header holds its creator's term, and its last intact record the
    term of the last writer that appended (a writer goes on in the segment it found, so the header can be older).
    Reads only checked records; cheap (one header, the segment's index, and the records after its last entry).
    """
    segs = list_segments(fops, chdir)
    if not segs:
        return 0, ""
    fid, path = segs[-1]
    fd = fops.open(path, os.O_RDONLY)
    try:
        size = fops.fstat_size(fd)
        hdr = SegmentHeader.unpack(fops.pread(fd, SEG_HEADER.size, 0), path)
        mm = fops.mmap(fd, size) if size > hdr.data_start else None
    finally:
        fops.close(fd)
    if mm is None:
        return hdr.term, path
    mv = memoryview(mm)
    try:
        last = _last_record(fops, path, fid, mv, hdr.data_start)
        term = hdr.term if last is None else max(hdr.term, META_FIXED.unpack_from(mv, last + REC_HEADER_SIZE)[0])
    finally:
        mv.release()
        mm.close()
    return term, path


def _last_record(fops: FileOps, path: str, first_id: int, mv: memoryview, data_start: int) -> int | None:
    """The offset of the last valid record of the run that starts at the last index entry the data confirms (at the
    data start without one): where the writer stopped, as recovery finds it."""
    limit = len(mv)
    pos, expect, last = data_start, first_id, None
    idx = load_index(fops, path, first_id, None)
    for mid, _tt, e_pos in reversed(idx.entries if idx is not None else []):
        r = check_record(mv, e_pos, limit)
        if r is not None and r[1] == mid:
            pos, expect = e_pos, mid
            break
    while (r := check_record(mv, pos, limit)) is not None and r[1] == expect:
        last = pos
        pos += r[0]
        expect += 1
    return last


def write_term(fops: FileOps, chdir: str, term: int) -> None:
    fops.write_file_atomic(os.path.join(chdir, TERM_NAME), term_text(term))


def read_first(fops: FileOps, chdir: str) -> int | None:
    """What ``FIRST`` says (None when missing); :class:`CorruptedError` when unreadable."""
    path = os.path.join(chdir, FIRST_NAME)
    try:
        raw = fops.read_file(path)
    except FileNotFoundError:
        return None
    first = parse_first(raw)
    if first is None:
        raise CorruptedError(f"{path}: unreadable first-segment file (`wal repair` writes it again)", path=path,
                             offset=0)
    return first


def write_first(fops: FileOps, chdir: str, first_id: int) -> None:
    """Durably, before any segment below ``first_id`` is deleted (see ``_check_first``)."""
    fops.write_file_atomic(os.path.join(chdir, FIRST_NAME), first_text(first_id))


def _read_all(fops: FileOps, fd: int, size: int) -> memoryview:
    """The whole segment, mapped read-only (recovery reads through a map, like scanners)."""
    return memoryview(fops.mmap(fd, size))


def load_index(fops: FileOps, seg_path: str, first_id: int, data_end: int | None) -> IndexFile | None:
    path = seg_path[: -len(".seg")] + INDEX_SUFFIX
    try:
        raw = fops.read_file(path)
    except FileNotFoundError:
        return None
    return parse_index(raw, first_id, data_end)


def write_index(fops: FileOps, seg_path: str, first_id: int, entries: list[tuple[int, int, int]], sealed: bool) -> None:
    """Write a segment's index; none is left when the segment is deleted meanwhile.

    A writer's reader rebuilds a sealed segment's missing index while retention or a truncate may delete it: written
    after both files were gone, the index stayed behind for a segment that no longer exists (``wal verify``
    reported it until the next open deleted it). Checked after the write: a deletion unlinks the segment before its
    index, so either that unlink comes after the write (and so does the index's), or the check sees it."""
    path = os.path.join(os.path.dirname(seg_path), index_name(first_id))
    fops.write_file_atomic(path, index_file_bytes(first_id, entries, sealed=sealed), durable=False)
    try:
        fops.identity(seg_path)
    except FileNotFoundError:
        try:
            fops.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:  # cannot tell: the index is left, as before the check (the next open deletes a stray one)
        pass


def _zero_range(fops: FileOps, fd: int, start: int, end: int) -> None:
    chunk = bytes(min(end - start, 1 << 20))
    pos = start
    while pos < end:
        n = min(len(chunk), end - pos)
        fops.pwrite_all(fd, chunk[:n], pos)
        pos += n


def _state_from(path: str, hdr: SegmentHeader, size: int, s: Summary | ScanResult, sealed: bool) -> SegmentState:
    written = 0
    if isinstance(s, ScanResult):
        end, last_id, first_tt, max_tt, records = s.end, s.last_id, s.first_tt, s.max_tt, s.records
        bloom = bytearray(s.bloom)
        if sealed:
            written = wall_ns()
    else:
        end, last_id, first_tt, max_tt, records = s.data_end, s.last_id, s.first_tt, s.max_tt, s.records
        bloom = bytearray(s.bloom)
        written = s.written_ns
    return SegmentState(
        first_id=hdr.first_id, path=path, capacity=size, data_end=end, last_id=last_id, first_tt=first_tt,
        max_tt=max_tt, records=records, sealed=sealed, sealed_ns=written if sealed else 0, bloom=bloom,
    )


def _check_summary(path: str, hdr: SegmentHeader, size: int, s: Summary) -> bool:
    return hdr.data_start <= s.data_end <= size and s.last_id >= hdr.first_id - 1


def scan_tail(fops: FileOps, path: str, fd: int, hdr: SegmentHeader, size: int, *, sealed: bool, write: bool,
              cut: list[str]) -> ScanResult:
    """Scan a segment whose end is not recorded; classify what follows the last valid record."""
    buf = _read_all(fops, fd, size)
    try:
        res = scan_segment(buf, hdr.first_id, size, hdr.data_start)
        nz = last_nonzero_end(buf, res.end, size)
        later = find_valid_record_after(buf, res.end, size, res.last_id, hdr.version) if nz > res.end else None
        for _ in range(3):  # read-only callers may race a live writer: a record completed meanwhile is no damage
            if write or later is None:
                break
            time.sleep(0.01)
            res = scan_segment(buf, hdr.first_id, size, hdr.data_start)
            nz = last_nonzero_end(buf, res.end, size)
            later = find_valid_record_after(buf, res.end, size, res.last_id, hdr.version) if nz > res.end else None
        if nz > res.end:
            if later is not None or sealed:
                where = " in a sealed segment"
                if later is not None:
                    where = f"; {damage_proof(hdr.version)} at offset {later}"
                raise CorruptedError(
                    f"{path}: corrupted record at offset {res.end} ({res.stop_reason}){where}",
                    path=path, offset=res.end,
                )
            what = f"{path}: cut {nz - res.end} torn bytes at offset {res.end} ({res.stop_reason})"
            ids = valid_ids_after(buf, res.end, size, res.last_id)
            if ids:  # format 2 only: records of flushes that no later flush vouches for
                what += (f"; {len(ids)} intact record(s) after it, IDs {ids[0]}..{ids[-1]}, were never known "
                         "durable and were cut too")
            if write:
                _zero_range(fops, fd, res.end, nz)
                fops.fdatasync(fd)
                log.warning("localfs recovery: %s", what)
            cut.append(what)
        return res
    finally:
        buf.release()


def damage_proof(version: int) -> str:
    """What the record found after a bad one proves it with, in the words of error messages and ``wal verify``."""
    if version >= 2:
        return "a record written after it was durable (PREV_DURABLE) follows"
    return "a valid record follows"


def recover(
    fops: FileOps, chdir: str, *, write: bool, segment_bytes: int = 0, accept_lost_segments: bool = False,
    restore_first: bool = False,
) -> Recovered:
    """Read (and, with ``write``, repair) a channel directory. The caller holds the write lock when ``write``.

    Newest or oldest segments deleted from outside raise :class:`CorruptedError` (see :func:`_check_successor`
    and :func:`_check_first`), unless ``accept_lost_segments``: then, with ``write``, the log goes on after what
    is left, and says what was lost. An unreadable ``FIRST`` raises too, unless ``restore_first`` (``wal repair``):
    then, with ``write``, it is written again from the oldest segment left.
    """
    rec = Recovered(segments=[], next_id=1, max_tt=0)
    if write:
        for name in fops.listdir(chdir):
            if name.endswith(TMP_SUFFIX):
                fops.unlink(os.path.join(chdir, name))
    segs = list_segments(fops, chdir)
    if write:  # an index left behind by a segment that retention deleted
        keep = {index_name(fid) for fid, _ in segs}
        for name in fops.listdir(chdir):
            if name.endswith(INDEX_SUFFIX) and name not in keep:
                fops.unlink(os.path.join(chdir, name))
    _check_first(fops, chdir, segs, write=write, accept=accept_lost_segments, restore=restore_first, rec=rec)
    for i, (fid, path) in enumerate(segs):
        is_last = i == len(segs) - 1
        fd = fops.open(path, os.O_RDWR if write else os.O_RDONLY)
        try:
            size = fops.fstat_size(fd)
            hdr = SegmentHeader.unpack(fops.pread(fd, SEG_HEADER.size, 0), path)
            if hdr.first_id != fid:
                raise CorruptedError(f"{path}: header says first ID {hdr.first_id}", path=path, offset=0)
            seal = Summary.unpack(fops.pread(fd, SUMMARY.size, SEAL_OFF), 0, SEAL_MAGIC)
            if seal is not None and size < seal.data_end:
                # Sealed, then cut inside its data: records it vouches for are gone. Growing it back (below) and
                # trusting the seal opened a log whose readers later failed at the hole; refuse, as for any damage
                # to durable data (``wal verify`` reports it, ``wal repair`` refuses it). Not bounded by the header's
                # capacity: a segment grown for a big first record keeps the capacity it was made with.
                raise CorruptedError(
                    f"{path}: sealed segment cut from outside at byte {size}, inside its data (which ends at "
                    f"{seal.data_end}): its records after the cut are lost; restore the file from a copy",
                    path=path, offset=size,
                )
            if write and size < hdr.capacity:  # someone cut the file: restore the preallocation
                # A writer never makes a segment shorter than its preallocation: this is damage from outside, and
                # records past the cut (if any were there) are gone. Say so; the data up to the cut is kept.
                log.warning("localfs: %s is %d bytes, shorter than its preallocated %d: cut from outside; "
                            "records past byte %d, if any, are lost", path, size, hdr.capacity, size)
                size_was = size
                fops.fallocate(fd, 0, hdr.capacity)
                size = fops.fstat_size(fd)
                rec.cut.append(f"{path}: restored its size from {size_was} to {hdr.capacity} bytes (cut from outside; "
                               f"records past byte {size_was}, if any, are lost)")
            st: SegmentState
            if seal is not None and _check_summary(path, hdr, size, seal):
                st = _state_from(path, hdr, size, seal, sealed=True)
                if write:
                    _ensure_sealed_index(fops, st, seal, rec)
                if is_last:
                    _check_successor(fops, chdir, path, fd, write=write, accept=accept_lost_segments, rec=rec)
            elif not is_last:
                res = scan_tail(fops, path, fd, hdr, size, sealed=True, write=write, cut=rec.cut)
                st = _state_from(path, hdr, size, res, sealed=True)
                if write:
                    summ = res.summary(wall_ns())
                    fops.pwrite_all(fd, summ.pack(SEAL_MAGIC), SEAL_OFF)
                    fops.fdatasync(fd)
                    write_index(fops, path, fid, res.index, sealed=True)
                    rec.sealed_now.append(path)
                else:  # no index file to read it from (see SegmentState.drop_index)
                    st.index = res.index
                    st.index_checked = True
            else:
                # The mark is written only after the seal summary was durable: a mark here means this segment was
                # sealed and had a successor, even if its summary was damaged since (then it is taken as active).
                _check_successor(fops, chdir, path, fd, write=write, accept=accept_lost_segments, rec=rec)
                st = _recover_tail(fops, path, fd, hdr, size, write=write, rec=rec,
                                   rewrite=write and _take_io_failure(chdir))
        finally:
            fops.close(fd)
        if rec.segments and st.first_id != rec.segments[-1].last_id + 1:
            prev = rec.segments[-1]
            raise CorruptedError(
                f"{path}: segment starts at ID {st.first_id} but {prev.path} ends at {prev.last_id}",
                path=path, offset=0,
            )
        rec.segments.append(st)
        rec.max_tt = max(rec.max_tt, st.max_tt)
    if rec.segments:
        rec.next_id = rec.segments[-1].last_id + 1
    return rec


def successor_mark(fops: FileOps, seg: int | str) -> int | None:
    """The first ID a segment's successor mark names (``seg``: an open descriptor or a path), or None."""
    fd = fops.open(seg, os.O_RDONLY) if isinstance(seg, str) else seg
    try:
        return parse_next_mark(fops.pread(fd, NEXT_MARK.size, NEXT_OFF))
    finally:
        if isinstance(seg, str):
            fops.close(fd)


def _check_successor(fops: FileOps, chdir: str, path: str, fd: int, *, write: bool, accept: bool,
                     rec: Recovered) -> None:
    """The newest segment is sealed: a roll a crash cut short, unless its successor mark says the next segment was
    made. Then segments were deleted from outside, and with them acknowledged messages: opening would quietly give
    their IDs to new messages. Read-only callers list again first: a live writer may have rolled meanwhile."""
    nxt = successor_mark(fops, fd)
    if nxt is None:
        return
    if not write and any(fid >= nxt for fid, _ in list_segments(fops, chdir)):
        return
    what = (f"{path} is sealed and its successor {segment_name(nxt)} was made, but no segment from ID {nxt} on is "
            "left: they were deleted from outside, with every message from that ID on")
    if not accept:
        raise CorruptedError(f"{what}; restore them from a copy, or accept the loss with "
                             "`wal repair --accept-lost-segments` (new messages then reuse those IDs)",
                             path=path, offset=NEXT_OFF)
    if write:
        fops.pwrite_all(fd, bytes(NEXT_MARK.size), NEXT_OFF)
        fops.fdatasync(fd)
        log.warning("localfs recovery: %s; the loss was accepted", what)
    rec.cut.append(f"{what}; the loss was accepted")
    rec.lost_from = nxt


def front_lost(fops: FileOps, chdir: str, segs: list[tuple[int, str]], first: int | None, *, live: bool) -> bool:
    """Whether the oldest of ``segs`` (listed before ``FIRST`` was read as ``first``) starts after ``first``.

    ``live``: read-only, beside a writer that may be making the log's first segment (which it does before
    ``FIRST``) or moving ``FIRST`` and deleting: a listing made before its first segment, read with the ``FIRST``
    written after it, looked like every segment deleted. Then look again, with ``FIRST`` read before and after the
    listing: the same value both times means every segment from it on was there for the whole listing.
    """
    def lost(listed: list[tuple[int, str]], f: int | None) -> bool:
        return f is not None and (not listed or listed[0][0] > f)

    if not lost(segs, first):
        return False
    if not live:
        return True
    try:
        before = read_first(fops, chdir)
        again = list_segments(fops, chdir)
        return before == read_first(fops, chdir) and lost(again, before)
    except (CorruptedError, OSError):
        return True  # as first read


def _check_first(fops: FileOps, chdir: str, segs: list[tuple[int, str]], *, write: bool, accept: bool,
                 restore: bool, rec: Recovered) -> None:
    """The oldest segment left starts after the ID that ``FIRST`` names: segments were deleted from outside.

    Why: without it a deleted oldest segment looked like retention, and a log whose every segment was deleted
    opened empty and gave ID 1 to new messages again. Retention and truncate write ``FIRST`` (durably) before they
    delete, so a crash between leaves it *above* segments still present, never below. Read after ``segs`` was
    listed: a live writer's retention that the listing shows had moved ``FIRST`` before it deleted.
    """
    try:
        first = read_first(fops, chdir)
    except CorruptedError:
        if not (restore and segs):
            raise
        first = None
        if write:
            first = segs[0][0]
            write_first(fops, chdir, first)
            rec.first_restored = True
            log.warning("localfs recovery: %s was unreadable: written again from the oldest segment, %s",
                        FIRST_NAME, segs[0][1])
    rec.first = first
    if first is None or not front_lost(fops, chdir, segs, first, live=not write):
        return
    path = os.path.join(chdir, FIRST_NAME)
    if not segs:
        raise CorruptedError(
            f"{chdir}: every segment is gone, though {FIRST_NAME} says the log holds messages from ID {first} on: "
            "deleted from outside; restore them from a copy (nothing is left to number new messages after them: to "
            "start a new log, delete the channel's directory)", path=path, offset=0)
    oldest = segs[0][0]
    what = (f"{chdir}: no segment holds IDs {first}..{oldest - 1}, though {FIRST_NAME} says the log keeps them "
            "(retention and truncate move it before they delete): the oldest segments were deleted from outside")
    if not accept:
        raise CorruptedError(f"{what}; restore them from a copy, or accept the loss with "
                             "`wal repair --accept-lost-segments`", path=path, offset=0)
    if write:
        write_first(fops, chdir, oldest)
        log.warning("localfs recovery: %s; the loss was accepted", what)
    rec.cut.append(f"{what}; the loss was accepted")


def _ensure_sealed_index(fops: FileOps, st: SegmentState, seal: Summary, rec: Recovered) -> None:
    """Cheap check on open (header and size only); entries are checked when a seek first uses them."""
    path = st.path[: -len(".seg")] + INDEX_SUFFIX
    try:
        fd = fops.open(path, os.O_RDONLY)
    except FileNotFoundError:
        ok = False
    else:
        try:
            size = fops.fstat_size(fd)
            head = fops.pread(fd, IDX_HEADER.size, 0)
        finally:
            fops.close(fd)
        want = IDX_HEADER.size + seal.index_entries * 24 + IDX_TRAILER.size
        ok = size == want and parse_index(head, st.first_id).problem == ""
    if not ok:
        rebuild_index(fops, st, write=True)
        # Mapped for the rebuild only: kept, each sealed segment's map (and its descriptor) stayed for the writer's
        # life, and an open rebuilding the indexes of 1,000 segments ran out of descriptors. A reader maps it again,
        # and reads the index from the file just written.
        st.drop_mapping()
        st.drop_index()
        rec.rebuilt_indexes.append(path)


def rebuild_index(fops: FileOps, st: SegmentState, *, write: bool) -> list[tuple[int, int, int]]:
    """Scan the segment's published bytes and rebuild its index (written to disk when ``write``)."""
    mm = st.mapping(fops, st.data_end)
    res = scan_segment(mm, st.first_id, st.data_end)
    if res.end != st.data_end or res.last_id != st.last_id:
        raise CorruptedError(
            f"{st.path}: corrupted record at offset {res.end} ({res.stop_reason or 'short segment'})",
            path=st.path, offset=res.end,
        )
    if write:
        write_index(fops, st.path, st.first_id, res.index, sealed=st.sealed)
        log.warning("localfs: rebuilt index of %s (%d entries)", st.path, len(res.index))
    st.index = res.index
    st.index_checked = True
    return res.index


def _recover_tail(
    fops: FileOps, path: str, fd: int, hdr: SegmentHeader, size: int, *, write: bool, rec: Recovered,
    rewrite: bool = False,
) -> SegmentState:
    close = Summary.unpack(fops.pread(fd, SUMMARY.size, CLOSE_OFF), 0, CLOSE_MAGIC)
    if close is not None and _check_summary(path, hdr, size, close):
        probe = fops.pread(fd, 64, close.data_end)
        if is_zero_header(probe, 0, min(len(probe), size - close.data_end)):
            st = _state_from(path, hdr, size, close, sealed=False)
            idx = load_index(fops, path, hdr.first_id, close.data_end)
            if idx is not None and not idx.problem and len(idx.entries) == close.index_entries:
                st.index = idx.entries
                st.index_checked = True
            elif write:
                rebuild_index(fops, st, write=True)
                rec.rebuilt_indexes.append(path)
            else:
                rebuild_index(fops, st, write=False)
            if write:  # from now on the summary is stale: clear it before anything is appended
                fops.pwrite_all(fd, ZERO_SUMMARY, CLOSE_OFF)
                if rewrite:
                    _rewrite(fops, fd, hdr.data_start, st.data_end)
                fops.fdatasync(fd)
                rec.tail_synced = True
            return st
    res = scan_tail(fops, path, fd, hdr, size, sealed=False, write=write, cut=rec.cut)
    st = _state_from(path, hdr, size, res, sealed=False)
    st.index = res.index
    st.index_checked = True
    if write:
        write_index(fops, path, hdr.first_id, res.index, sealed=False)
        if close is not None:
            fops.pwrite_all(fd, ZERO_SUMMARY, CLOSE_OFF)
        # What was kept may have been read from the page cache of a crashed writer, never synced: make it durable
        # now, so the next writer's flushes can vouch for it (one sync per open after a crash).
        if rewrite:
            _rewrite(fops, fd, hdr.data_start, st.data_end)
        fops.fdatasync(fd)
        rec.tail_synced = True
    return st


def stored_max_time_tick(fops: FileOps, chdir: str) -> int:
    """The largest time tick stored in a channel, without the write lock and without scanning sealed segments.

    Sealed segments: their seal summaries. The unsealed tail: from its last index entry that the data confirms
    (entries carry the running maximum), walking the records after it. Safe while a writer appends: the answer
    covers at least what was written when the walk passed, and never counts bytes that fail their checksum.
    """
    best = 0
    for fid, path in list_segments(fops, chdir):
        try:
            fd = fops.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # deleted by retention meanwhile
        try:
            seal = Summary.unpack(fops.pread(fd, SUMMARY.size, SEAL_OFF), 0, SEAL_MAGIC)
            size = fops.fstat_size(fd)
            mm = fops.mmap(fd, size) if seal is None and size > DATA_START else None
        finally:
            fops.close(fd)
        if seal is not None:
            best = max(best, seal.max_tt)
        elif mm is not None:
            best = max(best, _walk_max_tt(fops, path, fid, memoryview(mm)))
    return best


def _walk_max_tt(fops: FileOps, path: str, first_id: int, mv: memoryview) -> int:
    limit = len(mv)
    pos, expect, tt = DATA_START, first_id, 0
    idx = load_index(fops, path, first_id, None)
    for mid, e_tt, e_pos in reversed(idx.entries if idx is not None else []):
        r = check_record(mv, e_pos, limit)
        if r is not None and r[1] == mid:
            pos, expect, tt = e_pos, mid, e_tt
            break
    while True:
        r = check_record(mv, pos, limit)
        if r is None or r[1] != expect:
            return tt
        if r[2] > tt:
            tt = r[2]
        pos += r[0]
        expect += 1
