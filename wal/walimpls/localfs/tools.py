"""Inspection and repair of localfs directories, for the ``wal`` command (info, dump, verify, repair).

Everything here except :func:`repair` only reads, and is safe while a writer appends (it never takes the write
lock for longer than a probe, never writes, never truncates). :func:`repair` takes the write lock and refuses
while a writer holds it. A channel that does not exist (or a bad channel name) raises
:class:`~wal.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..._types import validate_channel_name
from ...errors import (
    CorruptedError,
    InvalidArgumentError,
    WALError,
    WALIOError,
    WALLockedError,
    WALTimeoutError,
)
from ...message import ImmutableMessage, MessageID
from ...options import DeliverPolicy
from .._interfaces import ReadOption
from ._fileops import DEFAULT_FILE_OPS, FileOps
from ._format import (
    CLOSE_MAGIC,
    CLOSE_OFF,
    DATA_START,
    FIRST_NAME,
    NEXT_OFF,
    SEAL_MAGIC,
    SEAL_OFF,
    SEG_HEADER,
    SUMMARY,
    TERM_NAME,
    ScanResult,
    SegmentHeader,
    Summary,
    check_record,
    find_valid_record_after,
    index_name,
    is_zero_header,
    last_nonzero_end,
    parse_index,
    parse_segment_name,
    parse_term,
    scan_segment,
    segment_name,
    segment_version,
    valid_ids_after,
)
from ._format import LOCK_NAME as _LOCK_NAME
from ._lock import LockRefusedError, deleted_lock_holders
from ._lock import probe as probe_lock
from ._lock import release as release_lock
from ._lock import take as take_lock
from ._message_id import LocalFSMessageID
from ._recovery import (
    Recovered,
    damage_proof,
    front_lost,
    list_segments,
    load_index,
    lock_deleted,
    log_term,
    read_first,
    recover,
    successor_mark,
    write_index,
    write_term,
)
from ._scanner import DirSource, LocalFSScanner
from ._state import Hub, SegmentState

__all__ = [
    "ChannelInfo",
    "Problem",
    "RepairReport",
    "SegmentInfo",
    "channel_info",
    "find_time_tick",
    "is_channel_dir",
    "iter_messages",
    "list_channels",
    "repair",
    "unlistable_dirs",
    "verify",
]


@dataclass(frozen=True)
class SegmentInfo:
    path: str
    first_id: int
    last_id: int  # first_id - 1 when the segment is empty
    first_time_tick: int
    last_time_tick: int  # the largest time tick in the segment
    bytes_used: int  # offset just after the last valid record
    sealed: bool


@dataclass(frozen=True)
class ChannelInfo:
    name: str
    term: int | None  # 0 when no writer ever opened the channel; None when its TERM file is damaged
    segments: list[SegmentInfo]
    writer_locked: bool
    lock_missing: bool = False  # LOCK was deleted (TERM or a segment exists): a writer may still hold the deleted file
    lock_error: str | None = None  # why LOCK cannot be read (then whether a writer runs is unknown)
    lost_from: int | None = None  # newest segments were deleted from outside: the first lost ID (see ``verify``)
    # Oldest segments were deleted from outside (not by retention): the first lost ID and the first ID left (None:
    # every segment was deleted).
    lost_front: tuple[int, int | None] | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # files that cannot be read (left out) -> why


@dataclass(frozen=True)
class Problem:
    path: str
    offset: int | None
    message: str
    # Not damage: what a crash leaves and the next open fixes (``verify`` hands notes out apart from problems).
    note: bool = False

    def __str__(self) -> str:
        where = self.path if self.offset is None else f"{self.path}:{self.offset}"
        return f"{where}: {self.message}"


@dataclass
class RepairReport:
    channel: str
    cut: list[str] = field(default_factory=list)  # one sentence per torn tail cut
    rebuilt_indexes: list[str] = field(default_factory=list)
    sealed: list[str] = field(default_factory=list)  # segments whose missing seal summary was written
    term_restored: int | None = None  # TERM was unreadable: rewritten with the highest term the log shows
    first_restored: int | None = None  # FIRST was unreadable: rewritten with the oldest segment's first ID

    @property
    def changed(self) -> bool:
        return bool(self.cut or self.rebuilt_indexes or self.sealed or self.term_restored is not None
                    or self.first_restored is not None)


def is_channel_dir(path: str) -> bool:
    """Whether ``path`` is a localfs channel's directory: not a link, holding a LOCK, TERM or segment file."""
    if os.path.islink(path):  # never followed: a link could lead the tools outside root
        return False
    try:
        names = os.listdir(path)
    except OSError:  # not a directory, gone, or it cannot be listed (EACCES, EIO): see unlistable_dirs
        return False
    return any(n in (_LOCK_NAME, TERM_NAME) or parse_segment_name(n) is not None for n in names)


def list_channels(root: str) -> list[str]:
    """Names of the channel directories under ``root`` (sorted); ``[]`` when ``root`` does not exist. A directory
    this process may not list, or whose listing fails (EIO), is not among them: see :func:`unlistable_dirs`."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_channel_dir(os.path.join(root, n)))


_NEVER_CHANNELS = frozenset({"lost+found"})
"""Names of directories a filesystem's root holds and no one may list but root: not reported as unlistable, else
every check of a root that is a mount point would fail for any other user."""


def unlistable_dirs(root: str) -> list[tuple[str, str]]:
    """``(name, why)`` of each directory under ``root`` (not a link) that this process may not list, sorted.

    Why: channel directories are private to the writer's user (0700), so an operator running the tools as another
    user sees no file of them; :func:`list_channels` cannot tell such a directory from one that is not a channel,
    and a check that skipped it silently would call the root clean.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    out: list[tuple[str, str]] = []
    for e in entries:
        if e.name in _NEVER_CHANNELS:
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            os.listdir(e.path)
        except (NotADirectoryError, FileNotFoundError):
            continue
        except OSError as err:
            out.append((e.name, err.strerror or str(err)))
    return out


def _chdir(root: str, channel: str) -> str:
    validate_channel_name(channel)
    path = os.path.join(os.fspath(root), channel)
    if os.path.islink(path):
        raise InvalidArgumentError(f"channel {channel!r} under {root} is a symbolic link; refusing to follow it")
    if not os.path.isdir(path):
        raise InvalidArgumentError(f"no localfs channel {channel!r} under {root}")
    if not is_channel_dir(path):  # repair would otherwise write a LOCK into any directory and call it a channel
        _refuse_unlistable(path)
        raise InvalidArgumentError(f"{path} is a directory but not a localfs channel (no LOCK, TERM or segment)")
    return path


def _refuse_unlistable(path: str) -> None:
    """Raise :class:`~wal.errors.WALIOError` when ``path`` cannot be listed: not "not a channel", which it may be."""
    try:
        os.listdir(path)
    except (NotADirectoryError, FileNotFoundError):
        return
    except OSError as e:
        raise WALIOError(f"cannot list {path}: {e.strerror or e} (a channel's files can be read by its writer's "
                         "user or root)") from e


def _open_ro(path: str) -> BinaryIO:
    """``open(path, "rb")`` that never waits: a FIFO (or any file but a regular one) raises
    :class:`~wal.walimpls.localfs._fileops.NotRegularFileError` at once, as for the backend's own opens."""
    return os.fdopen(DEFAULT_FILE_OPS.open(path, os.O_RDONLY), "rb")


def _writer_locked(chdir: str, fops: FileOps = DEFAULT_FILE_OPS) -> bool:
    path = os.path.join(chdir, _LOCK_NAME)
    locked = probe_lock(fops, path)
    if locked is None:
        return False
    return locked or bool(deleted_lock_holders(path))  # a live writer's LOCK deleted and made again


def _term(chdir: str) -> int | None:
    try:
        with _open_ro(os.path.join(chdir, TERM_NAME)) as f:
            return parse_term(f.read())
    except FileNotFoundError:
        return 0


def channel_info(root: str, channel: str) -> ChannelInfo:
    """What a channel holds: term, segments (IDs, time ticks, bytes), whether a writer holds it. Read-only.

    Raises :class:`~wal.errors.CorruptedError` when the files cannot be understood (``verify`` says more). Newest
    or oldest segments deleted from outside are no such case: the segments left are shown, with ``lost_from`` or
    ``lost_front``. Nor is a file that cannot be read (a segment, an index, ``TERM``, ``FIRST``): it is named in
    ``unreadable``, with why, and the rest is shown (``segments`` leaves such a segment out).
    """
    chdir = _chdir(root, channel)
    for attempt in range(5):
        try:
            runs, unreadable, newest = _readable_runs(chdir)
            recs = [recover(_Leaving(run, unreadable, newest if k == len(runs) - 1 else None), chdir, write=False,
                            accept_lost_segments=True)  # show what is left
                    for k, run in enumerate(runs)]
            break
        except FileNotFoundError:  # a live writer's retention or roll changed the files under the listing
            if attempt == 4:
                raise WALIOError(f"{chdir}: segments kept changing while being read; try again") from None
            time.sleep(0.01)
    segs = [
        SegmentInfo(
            path=s.path, first_id=s.first_id, last_id=s.last_id, first_time_tick=s.first_tt, last_time_tick=s.max_tt,
            bytes_used=s.data_end, sealed=s.sealed,
        )
        for rec in recs for s in rec.segments
    ]
    try:
        locked, lock_error = _writer_locked(chdir), None
    except OSError as e:  # shown as such: whether a writer runs is unknown
        locked, lock_error = False, _why(e)
    term_path = os.path.join(chdir, TERM_NAME)
    try:
        term = _term(chdir)
    except OSError as e:
        term, unreadable[term_path] = None, _why(e)
    lost_front = None
    try:
        lost_front = _front_loss(chdir)
    except (OSError, CorruptedError) as e:
        unreadable[os.path.join(chdir, FIRST_NAME)] = _why(e) if isinstance(e, OSError) else "unreadable content"
    return ChannelInfo(name=channel, term=term, segments=segs, writer_locked=locked,
                       lock_missing=_lock_missing(chdir), lock_error=lock_error, lost_from=recs[-1].lost_from,
                       lost_front=lost_front, unreadable=unreadable)


def _readable_runs(chdir: str) -> tuple[list[list[str]], dict[str, str], str]:
    """The channel's segments in runs of consecutive ones that can be read (their names), the files that cannot
    (segments and indexes) with why, and the newest segment's name. The last run holds the newest segment (it is
    empty when that cannot be read): only its recovery tells whether newer segments were lost (another run's last
    segment names an unreadable one)."""
    runs: list[list[str]] = [[]]
    unreadable: dict[str, str] = {}
    segs = list_segments(DEFAULT_FILE_OPS, chdir)
    for fid, path in segs:
        why = _cannot_read(path)
        if why is not None:
            unreadable[path] = why
            runs.append([])
            continue
        runs[-1].append(os.path.basename(path))
        ipath = os.path.join(chdir, index_name(fid))
        if (why := _cannot_read(ipath)) is not None:
            unreadable[ipath] = why
    return [run for run in runs[:-1] if run] + runs[-1:], unreadable, os.path.basename(segs[-1][1]) if segs else ""


def _cannot_read(path: str) -> str | None:
    """Why ``path`` cannot be opened and read, or None (also when it does not exist)."""
    try:
        fd = DEFAULT_FILE_OPS.open(path, os.O_RDONLY)
        try:
            DEFAULT_FILE_OPS.pread(fd, SEG_HEADER.size, 0)
        finally:
            DEFAULT_FILE_OPS.close(fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        return _why(e)
    return None


class _Leaving(FileOps):
    """Read-only file calls that leave out files ``channel_info`` cannot read: only the segments named in ``listed``
    are listed (and, with ``after``, those named after it: made since by a live writer's roll), and an index in
    ``unreadable`` opens as missing (recovery then scans its segment). ``FIRST`` opens as missing too: a run is not
    the whole log, so the front is checked once, against the whole listing (:func:`_front_loss`)."""

    def __init__(self, listed: list[str], unreadable: dict[str, str], after: str | None) -> None:
        self._listed = set(listed)
        self._unreadable = unreadable
        self._after = after

    def list_files(self, path: str) -> list[str]:
        return [n for n in super().list_files(path) if parse_segment_name(n) is None or n in self._listed
                or (self._after is not None and n > self._after)]

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if path in self._unreadable or os.path.basename(path) == FIRST_NAME:
            raise FileNotFoundError(errno.ENOENT, "left out: it cannot be read", path)
        return super().open(path, flags, mode)


def _lock_missing(chdir: str) -> bool:
    """LOCK deleted from a channel a writer opened (it made LOCK, then TERM and segments; a writer of term 0 makes
    no TERM): the lock probe cannot tell whether a writer still runs, since one keeps its lock on the deleted file
    (the opener refuses for the same reason)."""
    return lock_deleted(DEFAULT_FILE_OPS, chdir)


def verify(
    root: str, channel: str | None = None, progress: Callable[[int, int], None] | None = None,
    notes: list[Problem] | None = None,
) -> list[Problem]:
    """Check every record's CRC, each segment's header and summaries, each index, ``TERM`` and ``FIRST``.

    Never writes. Safe while a writer runs: the bytes after the last valid record of the segment it is
    appending to are then not reported (they may be a write in progress) unless a later record proves them
    damage (the rule of recovery: see :func:`~wal.walimpls.localfs._format.find_valid_record_after`). A torn tail
    is reported with exactly the bytes (and intact but never-durable records) that ``repair`` or the next writer
    cuts. A file it cannot read (a segment, an index, ``TERM``, ``FIRST``, ``LOCK``) is one problem, and the rest is
    checked; with ``LOCK`` unreadable, whether a writer runs is unknown, so the newest segment is checked as a live
    writer's. A directory under ``root`` that it may not list (see :func:`unlistable_dirs`) is one problem, and so
    is one that holds a channel's files under a name that is no valid channel name; a ``channel`` it may not list
    raises :class:`~wal.errors.WALIOError`. ``progress(bytes_done, bytes_total)`` is
    called after each segment.

    What a crashed writer leaves and its next open fixes without losing anything is no problem: it goes to
    ``notes`` (when given), so that an operator checking a channel after a crash is not sent to restore a copy. So
    far that is the index of the active segment (unsealed, not closed cleanly) behind or ahead of its data: the
    writer appends index entries after the records they point to, with no sync, so a kill between the two (or a
    power cut) leaves it so, and opening for write rewrites that index from the data. The same mismatch in a
    sealed segment, or an index that fails its checks, stays a problem.
    """
    channels = [channel] if channel is not None else list_channels(root)
    work: list[tuple[str, list[tuple[int, str]]]] = []
    problems: list[Problem] = []
    for ch in channels:
        try:
            chdir = _chdir(root, ch)
            work.append((chdir, list_segments(DEFAULT_FILE_OPS, chdir)))
        except (WALError, OSError) as e:  # of the root's channels, this one's problem: the others are still checked
            if channel is not None:
                raise
            problems.append(Problem(os.path.join(root, ch), None, f"channel not checked: {e}"))
    total = sum(_size(p) for _, segs in work for _, p in segs)
    done = 0
    if channel is None:  # a directory it may not list may be a channel it cannot check: never "no problems"
        problems += [Problem(os.path.join(root, name), None, f"cannot list this directory ({why}): if it is a "
                             "channel, it was not checked (run as the writer's user or root)")
                     for name, why in unlistable_dirs(root)]
    for chdir, segs in work:
        term_path = os.path.join(chdir, TERM_NAME)
        stored: int | None = 0
        if os.path.exists(term_path):
            try:
                with _open_ro(term_path) as f:
                    stored = parse_term(f.read())
            except FileNotFoundError:
                pass
            except OSError as e:
                stored = None
                problems.append(Problem(term_path, None, f"term file cannot be read ({_why(e)})"))
            else:
                if stored is None:
                    problems.append(Problem(term_path, None, "unreadable term file"))
        made = _segment_terms(chdir, segs)
        if stored is not None and made and max(made.values()) > stored:
            path, term = max(made.items(), key=lambda kv: kv[1])
            said = f"says {stored}" if os.path.exists(term_path) else "is missing"
            problems.append(Problem(term_path, None, f"TERM {said}, but {os.path.basename(path)} was written by a "
                                                     f"writer of term {term}: write the term back (opening fences "
                                                     "lower terms by the newest segment too, but only TERM outlives "
                                                     "retention)"))
        lock_path = os.path.join(chdir, _LOCK_NAME)
        if _lock_missing(chdir):  # the rule of opening for write
            problems.append(Problem(lock_path, None, "LOCK is missing (TERM or segments exist): opening for write "
                                                     "refuses, since "
                                                     "a running writer may still hold the deleted file's lock; once "
                                                     "none runs, `repair --no-writer-running` makes a new one"))
        try:
            locked = _writer_locked(chdir)
        except OSError as e:  # one problem; the segments are checked as a live writer's (nothing it writes is blamed)
            problems.append(Problem(lock_path, None, f"LOCK cannot be read ({_why(e)}): whether a writer runs cannot "
                                                     "be checked, so the newest segment is checked as a running "
                                                     "writer's; opening for write and `repair` fail on it"))
            locked = True
        prev_last: int | None = None
        for i, (fid, path) in enumerate(segs):
            is_last = i == len(segs) - 1
            try:
                last = _verify_segment(chdir, path, fid, is_last, locked, prev_last, problems)
            except FileNotFoundError:  # deleted since the listing: a live writer's retention or truncate
                if not locked and not _writer_locked(chdir):  # probed again: a writer may have opened since
                    problems.append(Problem(path, None, "segment disappeared while being verified"))
                last = None  # no continuity check across it
            except OSError as e:  # not a file, no right to read it, an I/O error: say so, check the rest
                problems.append(Problem(path, None, f"segment cannot be read ({_why(e)}): its records, summaries "
                                                    "and index are not checked; opening for write fails on it"))
                last = None
            prev_last = last
            done += _size(path)
            if progress is not None:
                progress(done, total)
        for lost in (_lost_successor(chdir, segs), _lost_front(chdir)):
            if lost is not None:
                problems.append(lost)
    if notes is not None:
        notes.extend(p for p in problems if p.note)
    return [p for p in problems if not p.note]


def _lost_front(chdir: str) -> Problem | None:
    """The rule of recovery (``_recovery._check_first``): the oldest segment left starts after ``FIRST``."""
    path = os.path.join(chdir, FIRST_NAME)
    try:
        loss = _front_loss(chdir)
    except CorruptedError:
        return Problem(path, None, "unreadable first-segment file: opening for write refuses; `repair` writes it "
                                   "again from the oldest segment")
    except OSError as e:
        return Problem(path, None, f"first-segment file cannot be read ({_why(e)})")
    if loss is None:
        return None
    first, left = loss
    if left is None:
        return Problem(path, None, f"every segment is gone, though the log held messages from ID {first} on: "
                                   "deleted from outside (restore them from a copy)")
    return Problem(path, None, f"no segment holds IDs {first}..{left - 1}, though the log keeps them "
                               "(retention and truncate move this file before they delete): the oldest segments "
                               "were deleted from outside (restore them from a copy, or accept the loss with "
                               "`repair --accept-lost-segments`)")


def _front_loss(chdir: str) -> tuple[int, int | None] | None:
    """Oldest segments deleted from outside: the first lost ID (``FIRST``) and the first ID left (None: no segment
    is left); None when none was. Raises :class:`CorruptedError` or ``OSError`` when ``FIRST`` cannot be read."""
    segs = list_segments(DEFAULT_FILE_OPS, chdir)  # listed before FIRST is read, as recovery does
    first = read_first(DEFAULT_FILE_OPS, chdir)
    if first is None or not front_lost(DEFAULT_FILE_OPS, chdir, segs, first, live=True):  # a writer may be making it
        return None
    return first, segs[0][0] if segs else None


def _lost_successor(chdir: str, segs: list[tuple[int, str]]) -> Problem | None:
    """The rule of recovery (``_recovery._check_successor``): the newest segment names a successor that is gone."""
    if not segs:
        return None
    path = segs[-1][1]
    try:
        nxt = successor_mark(DEFAULT_FILE_OPS, path)
    except OSError:  # deleted meanwhile, or unreadable: the segment's check says
        return None
    if nxt is None or any(fid >= nxt for fid, _ in list_segments(DEFAULT_FILE_OPS, chdir)):  # listed again: a roll
        return None
    return Problem(path, NEXT_OFF, f"its successor {segment_name(nxt)} was made, but no segment from ID {nxt} on is "
                                   "left: deleted from outside, with every message from that ID on (restore them "
                                   "from a copy, or accept the loss with `repair --accept-lost-segments`)")


def _segment_terms(chdir: str, segs: list[tuple[int, str]]) -> dict[str, int]:
    """The writer term each readable segment shows: its header's, and for the newest one also its last record's (a
    writer stores its term in TERM before making a segment or appending; see ``_recovery.log_term``)."""
    out = {}
    for _fid, path in segs:
        try:
            with _open_ro(path) as f:
                out[path] = SegmentHeader.unpack(f.read(SEG_HEADER.size), path).term
        except (OSError, CorruptedError):  # deleted meanwhile, or unreadable or damaged: the segment's check says
            continue
    try:
        term, path = log_term(DEFAULT_FILE_OPS, chdir)
    except (OSError, CorruptedError):  # deleted meanwhile, or unreadable or damaged: the segment's check says
        return out
    if path:
        out[path] = max(out.get(path, 0), term)
    return out


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _size(path: str) -> int:
    """The file's size, 0 once it is gone (a live writer deletes segments while the tools read)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


# Checks of one segment at most. A writer changes a segment's summaries once per seal or clean close, so a second
# check almost always sees none; past this many, what was found is reported.
_SETTLE_TRIES = 4


def _verify_segment(
    chdir: str, path: str, fid: int, is_last: bool, writer_running: bool, prev_last: int | None,
    problems: list[Problem],
) -> int | None:
    """Check one segment into ``problems``; returns its last ID (None when unknown). Checks again rather than
    report what a live writer changed meanwhile.

    A writer may seal the segment (a roll) or close it cleanly while it is read: the records appended after the
    scan would then look like damage in a sealed segment, and the summary like a mismatch. Its data is final once
    a summary is there, so a check during which a summary slot changed is done again. And a writer may open the
    channel after its lock was probed: before problems of the last segment are reported the lock is probed again,
    and if a writer holds it now the segment is checked as the live one it is (a tail being written is no torn
    tail, an index being appended to is compared as a prefix).
    """
    found: list[Problem] = []
    last: int | None = None
    for attempt in range(_SETTLE_TRIES):
        found = []
        last, settled = _check_segment(path, fid, is_last, writer_running, prev_last, found)
        again = attempt < _SETTLE_TRIES - 1
        if again and not settled:
            continue  # sealed or closed meanwhile: the data is final now
        if again and found and is_last and not writer_running and _writer_locked(chdir):
            writer_running = True  # a writer opened the channel after the probe
            continue
        break
    problems.extend(found)
    return last


def _summary_slots(mm: bytes | memoryview | mmap.mmap) -> bytes:
    """The raw seal and clean-close summary slots: a writer changes them only when it seals or closes cleanly."""
    return bytes(mm[SEAL_OFF : SEAL_OFF + SUMMARY.size]) + bytes(mm[CLOSE_OFF : CLOSE_OFF + SUMMARY.size])


def _check_segment(
    path: str, fid: int, is_last: bool, writer_running: bool, prev_last: int | None, problems: list[Problem]
) -> tuple[int | None, bool]:
    """One check of a segment: (its last ID or None, whether its summary slots stayed the same throughout)."""
    with _open_ro(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < SEG_HEADER.size:
            problems.append(Problem(path, 0, f"segment is only {size} bytes"))
            return None, True
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        try:
            hdr = SegmentHeader.unpack(mm[: SEG_HEADER.size], path)
        except CorruptedError as e:
            text = str(e)  # its text starts with the path, which the problem's own prefix says already
            problems.append(Problem(path, 0, text[len(path) + 2 :] if text.startswith(f"{path}: ") else text))
            return None, True
        if size < hdr.capacity:  # a writer makes a segment at its full size before it gets its name
            problems.append(Problem(path, size, f"segment is {size} bytes, shorter than the {hdr.capacity} it was "
                                                "made with: cut from outside; records past this offset, if any, "
                                                "are lost (opening for write or `repair` restores the size)"))
        # The summaries are read before the scan: a segment sealed or closed by then holds its final data.
        slots = _summary_slots(mm)
        seal = Summary.unpack(slots, 0, SEAL_MAGIC)
        close = Summary.unpack(slots, SUMMARY.size, CLOSE_MAGIC)
        if hdr.first_id != fid:
            problems.append(Problem(path, 0, f"header says first ID {hdr.first_id}, the name says {fid}"))
        if prev_last is not None and fid != prev_last + 1:
            problems.append(Problem(path, 0, f"segment starts at ID {fid}, the previous one ends at {prev_last}"))
        res = scan_segment(mm, fid, size, hdr.data_start)
        nz = last_nonzero_end(mm, res.end, size)
        later = find_valid_record_after(mm, res.end, size, res.last_id, hdr.version) if nz > res.end else None
        for _ in range(3 if writer_running and is_last else 0):  # a record the live writer completed meanwhile
            if later is None:
                break
            time.sleep(0.01)
            res = scan_segment(mm, fid, size, hdr.data_start)
            nz = last_nonzero_end(mm, res.end, size)
            later = find_valid_record_after(mm, res.end, size, res.last_id, hdr.version) if nz > res.end else None
        sealed = seal is not None or not is_last
        if nz > res.end:
            if later is not None:
                problems.append(Problem(path, res.end, f"corrupted record ({res.stop_reason}); "
                                                       f"{damage_proof(hdr.version)} at offset {later}"))
            elif sealed:
                problems.append(Problem(path, res.end, f"corrupted record in a sealed segment ({res.stop_reason})"))
            elif close is not None and close.data_end > res.end:  # closed cleanly: its data was all durable
                problems.append(Problem(path, res.end, f"corrupted record ({res.stop_reason}); the clean-close "
                                                       f"summary says the data ends at offset {close.data_end}"))
            elif not writer_running:
                ids = valid_ids_after(mm, res.end, size, res.last_id)
                lost = f", with {len(ids)} intact never-durable record(s), IDs {ids[0]}..{ids[-1]}" if ids else ""
                problems.append(Problem(path, res.end, f"torn tail of {nz - res.end} bytes ({res.stop_reason}){lost}; "
                                                       "opening for write or `repair` cuts it"))
        if seal is not None:
            want = (res.last_id, res.end, res.records, res.max_tt)
            got = (seal.last_id, seal.data_end, seal.records, seal.max_tt)
            if want != got:
                problems.append(Problem(path, SEAL_OFF, f"seal summary (last id, end, records, max tick) {got} "
                                                        f"does not match the data {want}"))
        elif not is_last:
            problems.append(Problem(path, SEAL_OFF, "sealed segment has no valid seal summary (recovery writes it)"))
        if close is not None and (close.last_id, close.data_end) != (res.last_id, res.end):
            problems.append(Problem(path, CLOSE_OFF, "clean-close summary does not match the data"))
        _verify_index(path, fid, res.index, sealed, writer_running and is_last, problems,
                      crashed=is_last and not sealed and close is None and not writer_running)
        return res.last_id, _summary_slots(mm) == slots
    finally:
        mm.close()


def _verify_index(
    seg_path: str, fid: int, want: list[tuple[int, int, int]], sealed: bool, live: bool, problems: list[Problem],
    crashed: bool = False,
) -> None:
    """``crashed``: the index of a crashed writer's active segment, which its next open rewrites from the data;
    one that only lacks entries for its last records, or has entries for records past the data (a kill between a
    flush's records and its index entries, a power cut that kept entries and lost their records), or ends with
    entries that fail their checks after a prefix that agrees with the data (a power cut), is a note."""
    path = os.path.join(os.path.dirname(seg_path), index_name(fid))
    try:
        with _open_ro(path) as f:
            raw = f.read()
    except FileNotFoundError:
        if not os.path.exists(seg_path):  # deleted with its segment since the segment was checked
            return
        problems.append(Problem(path, None, "index file is missing (rebuilt on open or by repair)"))
        return
    except OSError as e:  # opening for write fails on it too: it rebuilds only a missing or damaged index
        problems.append(Problem(path, None, f"index file cannot be read ({_why(e)})"))
        return
    idx = parse_index(raw, fid)
    if idx.problem:
        n = len(idx.entries)
        torn_tail = idx.problem.startswith("index entry ") or idx.problem == "index ends with a partial entry"
        if crashed and torn_tail and idx.entries == want[:n]:
            # Entries are written after their records with no sync, so a power cut leaves the active index's
            # tail as the disk had it: zeros, a torn entry. What comes before agrees with the data, and the next
            # open rewrites this index from the data: nothing is lost, so it is a note (review 13e).
            problems.append(Problem(path, None, f"index of the active segment ends with bytes a crash left "
                                                f"({idx.problem}; the {n} entries before agree with the data): "
                                                "no damage, opening for write or `repair` rewrites it", note=True))
            return
        problems.append(Problem(path, None, f"{idx.problem} (rebuilt on open or by repair)"))
    elif live:
        n = min(len(idx.entries), len(want))  # the writer may have moved on since the segment was scanned
        if idx.entries[:n] != want[:n]:
            problems.append(Problem(path, None, "index does not match the segment (rebuilt on open or by repair)"))
    elif idx.entries != want:
        n = min(len(idx.entries), len(want))
        if crashed and idx.entries[:n] == want[:n]:
            if n < len(want):
                what = f"lacks the last {len(want) - n} of the {len(want)} entries its data calls for"
            else:
                what = f"has {len(idx.entries) - n} entry(ies) for records past the end of the data"
            problems.append(Problem(path, None, f"index of the active segment {what}: a writer stopped between a "
                                                "flush's records and its index (no damage: opening for write or "
                                                "`repair` rewrites it)", note=True))
            return
        problems.append(Problem(path, None, "index does not match the segment (rebuilt on open or by repair)"))


def repair(
    root: str, channel: str, *, no_writer_running: bool = False, accept_lost_segments: bool = False
) -> RepairReport:
    """Cut a torn tail, write missing seal summaries, rebuild indexes that are missing or wrong.

    Raises :class:`~wal.errors.WALLockedError` while a writer holds the channel, and when its ``LOCK`` file was
    deleted unless ``no_writer_running`` (the caller checked that no process has the channel open for writing: a
    writer keeps its lock on the deleted file, so a new ``LOCK`` cannot tell; a repair under a live writer deleted
    its temporary files and rebuilt its active index, and the writer died), and
    :class:`~wal.errors.CorruptedError` for damage that is not a torn tail (never cut: restore from a copy).
    Cutting overwrites the torn bytes with zeros; it never truncates a file (a reader may have it mapped).
    Newest segments deleted from outside (the last one left is sealed and names its successor) are refused too,
    unless ``accept_lost_segments``: the log then goes on after what is left, and new messages reuse the IDs of
    the lost ones (the report says which); so are oldest segments deleted from outside (the oldest left starts
    after the ID in ``FIRST``), which ``accept_lost_segments`` accepts by moving ``FIRST``. An unreadable ``FIRST``
    is written again from the oldest segment (``first_restored``). A refused repair changes nothing on disk: it
    does not even make a new ``LOCK`` for a channel whose ``LOCK`` was deleted.
    """
    fops = DEFAULT_FILE_OPS
    chdir = _chdir(root, channel)
    lock_path = os.path.join(chdir, _LOCK_NAME)
    accept = accept_lost_segments
    remake_lock = _lock_missing(chdir)
    if remake_lock:
        if not no_writer_running:
            raise WALLockedError(
                f"localfs channel {channel!r}: its LOCK file was deleted, so whether a writer still runs cannot be "
                "checked (a writer keeps its lock on the deleted file); once you are sure no process has the channel "
                "open for writing, repair with --no-writer-running"
            )
        # Taking the lock makes a new LOCK: whatever refuses is checked before it, so a refused repair changes nothing
        if holders := deleted_lock_holders(lock_path):
            refused = LockRefusedError(lock_path, tuple(holders))
            raise WALLockedError(f"localfs channel {channel!r}: {refused.describe()}; stop that process first")
        _check_before_writing(chdir, accept)
    try:
        lock_fd = take_lock(fops, lock_path)
    except LockRefusedError as e:
        raise WALLockedError(f"localfs channel {channel!r}: {e.describe()}; stop that process first") from None
    try:
        if remake_lock:  # durable now: else a power cut could take it back, and opening would refuse again
            fops.fsync_dir(chdir)
        close_slot = _check_before_writing(chdir, accept)  # again: under the lock, nothing changes it meanwhile
        rec = recover(fops, chdir, write=True, accept_lost_segments=accept, restore_first=True)
        report = RepairReport(channel=channel, cut=list(rec.cut), rebuilt_indexes=list(rec.rebuilt_indexes),
                              sealed=list(rec.sealed_now),
                              first_restored=rec.first if rec.first_restored else None)
        for st in rec.segments:
            ipath = os.path.join(chdir, index_name(st.first_id))
            if ipath in report.rebuilt_indexes:
                continue
            res = _scan_published(fops, st)
            try:
                with _open_ro(ipath) as f:
                    idx = parse_index(f.read(), st.first_id)
                ok = not idx.problem and idx.entries == res.index and idx.sealed == st.sealed
            except FileNotFoundError:
                ok = False
            if not ok:
                write_index(fops, st.path, st.first_id, res.index, sealed=st.sealed)
                report.rebuilt_indexes.append(ipath)
            st.drop_mapping()
        if rec.segments and not rec.segments[-1].sealed:
            _cut_after_end(fops, rec.segments[-1], report)
        if close_slot is not None and rec.segments:
            _restore_clean_close(fops, rec.segments[-1], *close_slot)
        if os.path.exists(os.path.join(chdir, TERM_NAME)) and _term(chdir) is None:
            # Opening refuses an unreadable TERM; the log's own terms are the best left (``_recovery.log_term``)
            report.term_restored = max(_segment_terms(chdir, list_segments(fops, chdir)).values(), default=0)
            write_term(fops, chdir, report.term_restored)
        return report
    finally:
        release_lock(fops, lock_fd)


def _check_before_writing(chdir: str, accept_lost_segments: bool) -> tuple[str, bytes, Summary] | None:
    """Raise what makes :func:`repair` refuse, before it writes anything; returns the last segment's clean-close
    summary slot (:func:`_clean_close_slot`), which recovery for writing clears.

    Damage is refused before anything is written: recovery for writing clears a clean-close summary (the proof that
    its segment's data was all durable), and a repair that refused afterwards left the damage looking like a torn
    tail, which the next repair or open then cut. The check runs on the bytes recovery for writing will see: a
    segment cut from outside is grown back to its capacity before it is looked at, which can make its seal summary
    trusted and the cut damage.
    """
    close_slot = _clean_close_slot(chdir)
    restored = _SizesRestored()
    rec = recover(restored, chdir, write=False, accept_lost_segments=accept_lost_segments, restore_first=True)
    _check_repairable(restored, rec, close_slot)
    return close_slot


class _SizesRestored(FileOps):
    """Read-only file calls that show every segment shorter than the capacity in its header as recovery for
    writing makes it before reading it: grown back to that capacity (``posix_fallocate``), zeros after the old end.

    :func:`repair` checks the channel through it before writing anything, so the check decides on the bytes that
    recovery for writing then decides on: a repair that refuses refuses before it has grown (or deleted) a file.
    Only opens for reading; a grown segment is read into anonymous memory, never mapped past its end (SIGBUS).
    """

    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}  # descriptor -> restored size, for the segments that are short

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise AssertionError(f"{path}: a read-only check opened a file for writing")
        fd = super().open(path, flags, mode)
        if parse_segment_name(os.path.basename(path)) is not None:
            try:
                hdr = SegmentHeader.unpack(super().pread(fd, SEG_HEADER.size, 0), path)
            except CorruptedError:  # recovery raises the same before it would grow the file
                hdr = None
            if hdr is not None and super().fstat_size(fd) < hdr.capacity:
                self._sizes[fd] = hdr.capacity
        return fd

    def close(self, fd: int) -> None:
        self._sizes.pop(fd, None)
        super().close(fd)

    def fstat_size(self, fd: int) -> int:
        return self._sizes.get(fd) or super().fstat_size(fd)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        data = super().pread(fd, length, offset)
        size = self._sizes.get(fd)
        if size is None:
            return data
        return data + bytes(max(0, min(length, size - offset) - len(data)))

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        real = super().fstat_size(fd)
        if fd not in self._sizes or length <= real:
            return super().mmap(fd, length)
        mm = mmap.mmap(-1, length)  # zero-filled, like the range posix_fallocate adds
        pos = 0
        while pos < real:
            chunk = super().pread(fd, min(1 << 20, real - pos), pos)
            if not chunk:
                break
            mm[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return mm


def _scan_published(fops: FileOps, st: SegmentState) -> ScanResult:
    """Scan a segment up to the end recovery found; :class:`CorruptedError` when a record before it is bad."""
    mm = st.mapping(fops, st.data_end)
    res = scan_segment(mm, st.first_id, st.data_end)
    if res.end != st.data_end or res.last_id != st.last_id:
        raise CorruptedError(
            f"{st.path}: corrupted record at offset {res.end} ({res.stop_reason or 'short segment'}); "
            "not repairable by cutting: restore from a copy",
            path=st.path, offset=res.end,
        )
    return res


def _check_repairable(fops: FileOps, rec: Recovered, close_slot: tuple[str, bytes, Summary] | None) -> None:
    """Raise :class:`CorruptedError` for damage before the end that a read-only recovery found in any segment
    (what a seal or clean-close summary vouches for is checked record by record), or for a last segment whose
    clean-close summary says its data goes on past where the valid records end (a record damaged or cut off)."""
    for st in rec.segments:
        try:
            _scan_published(fops, st)
        finally:
            st.drop_mapping()
    if close_slot is not None and rec.segments and rec.segments[-1].path == close_slot[0]:
        st, close = rec.segments[-1], close_slot[2]
        if close.data_end > st.data_end:
            raise CorruptedError(
                f"{st.path}: corrupted record at offset {st.data_end}; the clean-close summary says the data ends "
                f"at offset {close.data_end}; not repairable by cutting: restore from a copy",
                path=st.path, offset=st.data_end,
            )


def _clean_close_slot(chdir: str) -> tuple[str, bytes, Summary] | None:
    """The last segment's clean-close summary slot, raw and parsed, when it holds a valid summary."""
    segs = list_segments(DEFAULT_FILE_OPS, chdir)
    if not segs:
        return None
    path = segs[-1][1]
    with _open_ro(path) as f:
        f.seek(CLOSE_OFF)
        raw = f.read(SUMMARY.size)
    close = Summary.unpack(raw, 0, CLOSE_MAGIC)
    return None if close is None else (path, raw, close)


def _cut_after_end(fops: FileOps, st: SegmentState, report: RepairReport) -> None:
    """Zero non-zero bytes after the end of the active segment's data (``verify`` reports them as a torn tail).

    Recovery cuts them when it scans; when it trusts a clean-close summary it looks only at the record header
    right after the end, so stray bytes further on stayed, and repair said both "nothing to repair" and "1
    problem(s) remain". Nothing after the end is data: the summary says so, and a scan stopped there.
    """
    fd = fops.open(st.path, os.O_RDWR)
    try:
        size = fops.fstat_size(fd)
        mm = fops.mmap(fd, size)
        try:
            nz = last_nonzero_end(mm, st.data_end, size)
        finally:
            mm.close()
        if nz <= st.data_end:
            return
        chunk = bytes(min(nz - st.data_end, 1 << 20))
        pos = st.data_end
        while pos < nz:
            n = min(len(chunk), nz - pos)
            fops.pwrite_all(fd, chunk[:n], pos)
            pos += n
        fops.fdatasync(fd)
    finally:
        fops.close(fd)
    report.cut.append(f"{st.path}: cut {nz - st.data_end} stray bytes after the end of the data (offset {st.data_end})")


def _restore_clean_close(fops: FileOps, st: SegmentState, path: str, raw: bytes, close: Summary) -> None:
    """Put back the clean-close summary that recovery for writing cleared, when the data still ends where it says:
    repair appends nothing, and without it damage in the last flush would later pass for a torn tail."""
    if st.path != path or st.sealed or (st.last_id, st.data_end) != (close.last_id, close.data_end):
        return
    fd = fops.open(path, os.O_RDWR)
    try:
        fops.pwrite_all(fd, raw, CLOSE_OFF)
        fops.fdatasync(fd)
    finally:
        fops.close(fd)


def iter_messages(root: str, channel: str, start: MessageID | None = None) -> Iterator[ImmutableMessage]:
    """Every message from ``start`` (inclusive; the oldest kept when None) to the current end. Read-only.

    Stops at the end of the valid data (a torn tail is not an error here); raises
    :class:`~wal.errors.CorruptedError` at damage inside written data, after the messages before it: where
    reading stops, a later record that vouches for the bytes there (docs/FORMAT.md, "Flush marks") or a clean-close
    summary that says the data goes on makes them damage. A damaged segment header and a missing segment are
    damage too (recovery refuses both), raised after every message before that segment; so is the
    :class:`~wal.errors.WALIOError` of a segment it cannot open (EACCES, EIO), the newest one included.
    """
    chdir = _chdir(root, channel)
    policy = DeliverPolicy.all() if start is None else DeliverPolicy.start_from(start)
    hub = Hub(channel, chdir)
    opt = ReadOption(name="iter_messages", deliver_policy=policy)
    # The end as of this call: against a writer faster than this reader, following the tail would never finish.
    try:
        probe = LocalFSScanner(
            ReadOption(name="iter_messages_end", deliver_policy=DeliverPolicy.latest()),
            DirSource(chdir, DEFAULT_FILE_OPS), hub, lambda _s: None,
        )
    except (CorruptedError, WALIOError):  # the last segment is damaged (its header) or cannot be opened (EACCES,
        stop = 1 << 64  # EIO): reading stops there and raises it, after every message before it
    else:
        stop = probe._expect  # the ID the next append will get (0: nothing stored yet)
        probe.close()
    scanner = LocalFSScanner(opt, DirSource(chdir, DEFAULT_FILE_OPS), hub, lambda _s: None)
    try:
        while True:
            try:
                batch = scanner.recv_batch(1024, timeout=0)
            except WALTimeoutError:  # nothing more to read: the end of the data, or damage the scanner waits at
                where = scanner.stopped_at()
                if where is not None:
                    _raise_if_damage(*where)
                return
            for m in batch:
                if m.message_id.value >= stop:  # type: ignore[attr-defined]
                    return
                yield m
    finally:
        scanner.close()


def _raise_if_damage(path: str, pos: int, expect: int) -> None:
    """Raise :class:`~wal.errors.CorruptedError` when the bytes at ``pos`` of ``path``, where a read stopped with
    nothing more to read, are damage rather than the end of the data (``expect``: the ID due there).

    A scanner takes the first record that is not valid in the active segment for the writer's frontier and waits
    there (a follower looks past a zeroed header only after waiting at it for a second), so a read that does not
    wait stops at damage there as it does at the end. The proof of recovery and ``verify`` tells them apart: a
    later record written when the bytes at ``pos`` were durable (:func:`find_valid_record_after`), or a clean-close
    summary whose data end lies past ``pos``. A live writer's record in progress is neither: the writer writes in
    order, so once such a proof is visible a record it wrote at ``pos`` is too, and that record is checked again
    after the proof was found.
    """
    try:
        with _open_ro(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size <= pos:  # the file ends here: damage if it was closed cleanly with more (cut from outside)
                f.seek(CLOSE_OFF)
                close = Summary.unpack(f.read(SUMMARY.size), 0, CLOSE_MAGIC)
                if close is not None and close.data_end > pos:
                    raise CorruptedError(
                        f"{path}: the file ends at offset {size}; the clean-close summary says the data ends at "
                        f"offset {close.data_end}", path=path, offset=size,
                    )
                return
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except FileNotFoundError:  # deleted by a live writer's retention since
        return
    try:
        version = segment_version(mm)
        later = find_valid_record_after(mm, pos, size, expect - 1, version)
        close = Summary.unpack(mm, CLOSE_OFF, CLOSE_MAGIC)
        if later is not None:
            proof = f"{damage_proof(version)} at offset {later}"
        elif close is not None and close.data_end > pos:
            proof = f"the clean-close summary says the data ends at offset {close.data_end}"
        else:
            return
        r = check_record(mm, pos, size)
        if r is not None and r[1] == expect:
            return  # a record the live writer completed meanwhile
        what = "zeroed record header" if is_zero_header(mm, pos, size) else "checksum or ID mismatch"
        raise CorruptedError(f"{path}: corrupted record at offset {pos} ({what}); {proof}", path=path, offset=pos)
    finally:
        mm.close()


def find_time_tick(root: str, channel: str, time_tick: int) -> MessageID | None:
    """The first message whose time tick is ``>= time_tick`` (None when there is none yet). Read-only.

    Reading from it (``start_from``) sees every message with such a tick: ticks may be stored slightly out of
    order under concurrent appends, so it is the first by position, found through the segments' largest ticks
    and the indexes' running maximum, then a short walk.
    """
    chdir = _chdir(root, channel)
    rec = recover(DEFAULT_FILE_OPS, chdir, write=False)
    for st in rec.segments:
        if st.max_tt < time_tick or st.records == 0:
            continue
        mm = st.mapping(DEFAULT_FILE_OPS, st.data_end)
        idx = load_index(DEFAULT_FILE_OPS, st.path, st.first_id, st.data_end)
        ok = idx is not None and not idx.problem
        entries = idx.entries if idx is not None and ok else scan_segment(mm, st.first_id, st.data_end).index
        pos = DATA_START
        for _e_id, e_tt, e_pos in entries:  # the last entry whose running maximum is still below the tick
            if e_tt >= time_tick:
                break
            pos = e_pos
        while pos < st.data_end:
            r = check_record(mm, pos, st.data_end)
            if r is None:
                break
            if r[2] >= time_tick:
                return LocalFSMessageID(r[1])
            pos += r[0]
    return None
