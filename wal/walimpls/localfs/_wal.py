"""A localfs channel: the writer (group commit, rolling, retention) and the read-only follower.

Group commit without a dedicated thread: an appender encodes its records before taking the lock, then takes
their IDs and queues them (the leader stamps IDs, flags and CRCs as it writes). The first appender to find no
write in progress becomes the leader: it takes the whole queue, writes it with one ``pwritev`` and syncs it with
one ``fdatasync``, both without the lock, so the appenders arriving meanwhile form the next batch. When it is done
it wakes the first appender of its batch (each woken appender wakes the next one) and goes on with the next batch
itself (a few rounds in a row), then hands leadership to one appender of the waiting batch. So N concurrent
appenders cost about one sync per round, not N, and the path between two syncs has one wake-up at most.
"""

from __future__ import annotations

import _thread
import errno
import functools
import logging
import math
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ... import _fork
from ..._types import PChannelInfo
from ...errors import (
    AccessModeError,
    InvalidArgumentError,
    InvalidMessageIDError,
    ShutdownError,
    WALError,
    WALIOError,
)
from ...message import MessageID, MessageType, MutableMessage
from .._interfaces import ReadOption, ScannerImpls, WALImpls
from ._fileops import FileOps, limit_hint
from ._format import (
    CLOSE_MAGIC,
    CLOSE_OFF,
    DATA_START,
    FIRST_NAME,
    FLUSH_START,
    INDEX_INTERVAL,
    NEXT_OFF,
    SEAL_MAGIC,
    SEAL_OFF,
    SEG_HEADER,
    VOUCHES,
    SegmentHeader,
    Summary,
    align,
    bloom_add,
    bloom_positions,
    encode_record,
    index_entry,
    index_header,
    index_name,
    next_mark,
    segment_name,
    stamp_record,
    wall_ns,
)
from ._lock import release as release_lock
from ._message_id import WAL_NAME, LocalFSMessageID, fast_id
from ._recovery import Recovered, note_io_failure, stored_max_time_tick, successor_mark, write_first, write_index
from ._retention import retention_count
from ._scanner import ChannelDir, DirSource, LocalFSScanner, WriterSource
from ._state import ChannelLog, Hub, SegmentState

if TYPE_CHECKING:
    from ._opener import LocalFSOpener, Options

__all__ = ["LocalFSROWAL", "LocalFSWAL"]

log = logging.getLogger("wal.localfs")



class _Base(WALImpls):
    def __init__(self, opener: LocalFSOpener, hub: Hub, channel: PChannelInfo) -> None:
        self._opener = opener
        self._hub = hub
        self._channel = channel
        self._scanners: set[LocalFSScanner] = set()
        self._scan_lock = threading.Lock()
        self._closed = False

    @property
    def wal_name(self) -> str:
        return WAL_NAME

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    def _forget(self, s: LocalFSScanner) -> None:
        with self._scan_lock:
            self._scanners.discard(s)

    def _register(self, s: LocalFSScanner) -> LocalFSScanner:
        with self._scan_lock:
            if self._closed:
                s.close()
                raise ShutdownError(f"localfs channel {self._channel} is closed")
            self._scanners.add(s)
        return s

    def _close_scanners(self) -> None:
        with self._scan_lock:
            scanners = list(self._scanners)
        for s in scanners:
            s.close()


class LocalFSROWAL(_Base):
    """A read-only follower: scanners read the directory and follow whatever writer appends to it."""

    def __init__(self, opener: LocalFSOpener, hub: Hub, channel: PChannelInfo, chdir: str, fops: FileOps) -> None:
        super().__init__(opener, hub, channel)
        self._chdir = chdir
        self._fops = fops
        # Held open once it exists, so its readers see it deleted or replaced; the opener's watch follows it.
        self._dir = ChannelDir(chdir, fops, functools.partial(opener._rewatch, hub))
        self._watched_in = -1  # the fork generation whose opener watches the directory for it (set by the opener)

    def read(self, opt: ReadOption) -> ScannerImpls:
        if self._closed:
            raise ShutdownError(f"localfs channel {self._channel} is closed")
        return self._register(
            LocalFSScanner(opt, DirSource(self._chdir, self._fops, self._dir), self._hub, self._forget)
        )

    def append(self, msg: MutableMessage) -> MessageID:
        raise AccessModeError(f"localfs channel {self._channel} is open read-only: append is not allowed")

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        raise AccessModeError(f"localfs channel {self._channel} is open read-only: append is not allowed")

    def truncate(self, message_id: MessageID) -> None:
        raise AccessModeError(f"localfs channel {self._channel} is open read-only: truncate is not allowed")

    def last_time_tick(self) -> int:
        """The largest time tick stored now (seal summaries and the tail's index: a few reads, no full scan)."""
        if self._closed:
            raise ShutdownError(f"localfs channel {self._channel} is closed")
        try:
            return stored_max_time_tick(self._fops, self._chdir)
        except FileNotFoundError:
            return 0  # the channel directory does not exist (yet)
        except OSError as e:
            raise WALIOError(f"localfs channel {self._channel}: {e}") from e

    def close(self) -> None:
        # Every step may run again: a close a Ctrl-C cut short is finished by the next one.
        self._closed = True
        self._close_scanners()
        self._dir.close()
        self._opener._release(self)


class ChannelGoneError(OSError):
    """The writer's channel directory was deleted or renamed away (and maybe another put at its path), or its active
    segment was deleted: what it writes is where no open of the channel looks."""


# encode_record's (head, payload, pad, CRC end in head, record size), then time tick and bloom bit positions
_Entry = tuple[bytearray, bytes, bytes, int, int, int, tuple[int, ...]]
_TIME_TICK = MessageType.TIME_TICK
_BLOOM_CACHE_MAX = 4096  # vchannels whose bloom filter positions the writer keeps (as the scanner's vchannel cache)
_allocate_lock = _thread.allocate_lock
_monotonic = time.monotonic

DIR_CHECK_INTERVAL = 0.001
"""Seconds between two checks of a writer's channel directory by its batches (``LocalFSWAL._check_dir``): a batch
written this long after the last check checks it. One check (a ``stat`` of the path, an ``fstat`` of the active
segment) costs about 3.3 us; done by every batch, it cost 2-3 % of a durable append, so appends acknowledged in the
first millisecond after the directory is deleted may still be lost with it, and a writer appending less than once a
millisecond checks every batch. ``close`` checks once more, so that a writer closed within that millisecond does not
close in silence."""

DIR_UNCHECKED_WARNING_EVERY = 60.0
"""Seconds between warnings while a writer may not ``stat`` its channel directory's path (EACCES: a parent's mode
changed under it). It goes on, as a read-only follower does (its files are open, so it can still make them durable;
its next roll, retention or ``truncate`` works by path and fails), and says so at the first failure, then at most this
often, and once when the check works again."""


class _Batch:
    """Records that will be written by one ``pwritev`` and made durable by one ``fdatasync``.

    Each waiting appender sleeps on its own pre-acquired lock (``waiters``), released only when its batch is
    settled (or when it is to lead), so a woken appender never queues for the writer's lock again (a
    ``Condition`` would).
    """

    __slots__ = ("chained", "done", "err", "first", "heir", "items", "leading", "waiters")

    def __init__(self, first: int) -> None:
        self.first = first  # the ID of ``items[0]``: IDs are handed out in queue order, so a batch's are contiguous
        self.items: list[_Entry] = []
        self.waiters: list[_thread.LockType] = []
        self.done = False
        self.chained = False  # its waiters are in the wake-up chain (``_woken``)
        self.heir: _thread.LockType | None = None  # the waiter handed the lead of this batch (set under the lock)
        self.leading = False  # a thread has started to write it (``_lead``)
        self.err: WALIOError | None = None


# A leader writes up to this many batches in a row before it hands the next one to one of its appenders: each
# hand-off costs a thread wake-up on the path between two fdatasyncs, but the leader's own append waits meanwhile.
_LEAD_ROUNDS = 4


class LocalFSWAL(_Base):
    """The single writer of a channel (holds its flock)."""

    def __init__(
        self, opener: LocalFSOpener, hub: Hub, channel: PChannelInfo, chdir: str, fops: FileOps, opts: Options,
        lock_fd: int, recovered: Recovered,
    ) -> None:
        super().__init__(opener, hub, channel)
        self._chdir = chdir
        self._fops = fops
        self._opts = opts
        self._lock_fd: int | None = lock_fd
        self._forks = _fork.generation  # a forked child's copy differs: it must not write (see _refuse_in_child)
        self._lock = threading.RLock()  # not a Lock: docs/ARCHITECTURE.md, "Interrupts"
        self._cv = threading.Condition(self._lock)  # notified whenever a flush or sync ends (close waits on it)
        self._seg_lock = threading.Lock()  # rolls and retention change the segment list
        # One deletion at a time, its unlinks included (see _delete_front): a truncate and the retention of a roll
        # deleting side by side left a gap between the segments on disk (a crash then left a log that recovery
        # refused, and live readers saw the gap as damage).
        # An RLock entered as ``with`` (docs/ARCHITECTURE.md, "Interrupts"): a Ctrl-C just after a plain Lock's
        # acquire() returned left it held for good (every later truncate and close hung, retention never ran again).
        self._delete_lock = threading.RLock()
        self._deleting = False  # a deletion runs (set and cleared under both locks): a roll's retention skips it
        self._release_after_deletion = False  # an I/O error closed the WAL while a truncate deleted (see _fail)
        self._open_batch: _Batch | None = None  # records queued for the next group commit
        self._woken: deque[_thread.LockType] = deque()  # waiters of settled batches, still to be woken
        self._flushing = False
        self._closing = False
        self._err: WALIOError | None = None
        self._dirty = False
        self._last_sync = time.monotonic()
        self._bloom_cache: dict[str, tuple[int, ...]] = {}
        self._next_id = recovered.next_id
        self._max_tt = recovered.max_tt
        # The largest last-confirmed ID written (see _retention.py); None until a message carries one: no txn of
        # this writer is open before it writes one.
        self._lc_floor: int | None = None
        self._fd: int | None = None
        self._idx_fd: int | None = None
        self._dir_fd: int | None = None
        self._log = ChannelLog(recovered.segments)
        try:
            # Held open, so that its identity cannot go to another directory (see _check_dir).
            self._dir_fd = fops.open(chdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            self._dir_ident = fops.fidentity(self._dir_fd)
            self._dir_checked = _monotonic()
            self._dir_unchecked_since: float | None = None  # a batch's check could not stat the path since then
            self._dir_warned_at = -math.inf
            if not recovered.segments or recovered.segments[-1].sealed:
                self._log.segments = (*self._log.segments, self._create_segment(self._next_id, opts.segment_bytes))
            if len(self._log.segments) > 1:  # a roll a crash cut short (before or after the successor): finish it
                prev = self._log.segments[-2].path  # (see _roll); also marks segments rolled before the mark existed
                if successor_mark(self._fops, prev) is None:
                    # The successor may be a crashed roll's, renamed but its name not yet synced: mark only once
                    # its name is durable (as _roll does), or a power cut could keep the mark and lose the segment.
                    self._fops.fsync_dir(self._chdir)
                    self._mark_successor(prev, self._log.segments[-1].first_id)
            if recovered.first is None:  # a new log, or one older than FIRST: from now on deleted segments show
                try:
                    write_first(self._fops, self._chdir, self._log.segments[0].first_id)
                except OSError as e:  # a full disk: the log stays as one older than FIRST (retention writes it)
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    log.warning("localfs: no space to write %s in %s (%s): the next open or deletion writes it",
                                FIRST_NAME, self._chdir, e)
            self._open_active(self._log.segments[-1])
            if recovered.tail_synced:  # recovery synced what it kept: the first flush vouches for it
                self._synced_end = self._end
            if not self._vouch and self._w_records:  # a format-1 tail: seal it, go on in a format-2 segment
                self._roll(self._next_id, 0)
            self._apply_retention()
        except BaseException:
            self._lock_fd = None  # still the opener's to close
            self._close_fds()
            self._log.retire()  # else the segments gauge counted them for good (each failed open added them again)
            raise
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()
        # Set as the syncer ends: close waits for it, not join() (in 3.11 a join a Ctrl-C cut short marks the
        # thread ended, and the close that finishes the interrupted one would go on while it still syncs).
        self._syncer_done = threading.Event()
        self._close_drained = False  # close waited for the running flush and holds ``_flushing`` for good
        self._close_cut_short = False  # a close raised (a Ctrl-C): the next close finishes it
        self._released = False  # files closed, channel released: nothing left for a close to do
        if opts.sync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name=f"wal-localfs-sync-{channel.name}",
                                            daemon=True)
            try:
                self._syncer.start()
            except BaseException as e:  # at the thread limit: as a failed recovery, else each failed open kept two fds
                self._syncer = None
                self._lock_fd = None  # still the opener's to close
                self._close_fds()
                self._log.retire()
                if isinstance(e, RuntimeError):  # "can't start new thread": a WALError, as every error of an open
                    raise WALError(
                        f"localfs channel {channel.name!r}: cannot start its sync thread ({e}): sync='interval' "
                        "takes one per channel open for writing, so this process has reached its thread limit; close "
                        "WALs, or raise the limit (ulimit -u, the cgroup's pids.max)"
                    ) from e
                raise

    # -- files -------------------------------------------------------------------------------------------------------
    def _open_active(self, seg: SegmentState) -> None:
        fops = self._fops
        self._active = seg
        self._fd = fops.open(seg.path, os.O_RDWR)
        idx_path = os.path.join(self._chdir, index_name(seg.first_id))
        self._idx_fd = fops.open(idx_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if fops.fstat_size(self._idx_fd) == 0:
            fops.write_all(self._idx_fd, index_header(seg.first_id))
        self._end = seg.data_end
        # Format 2 flags the first record of each flush; ``_synced_end``: the offset up to which an fdatasync
        # that completed is known to cover this segment's data (the empty prefix, unless recovery synced it).
        self._vouch = SegmentHeader.unpack(fops.pread(self._fd, SEG_HEADER.size, 0), seg.path).version >= 2
        self._synced_end = DATA_START
        self._last_indexed = seg.index[-1][2] if seg.index else -INDEX_INTERVAL
        self._w_last_id = seg.last_id
        self._w_records = seg.records
        self._w_first_tt = seg.first_tt
        self._w_max_tt = seg.max_tt
        self._bloom_seen: set[tuple[int, ...]] = set()  # vchannels already in this segment's bloom filter

    def _create_segment(self, first_id: int, capacity: int) -> SegmentState:
        fops = self._fops
        path = os.path.join(self._chdir, segment_name(first_id))
        tmp = path + ".tmp"
        capacity = align(capacity)
        fd = fops.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fops.fallocate(fd, 0, capacity)
            hdr = SegmentHeader(first_id=first_id, capacity=capacity, created_ns=wall_ns(),
                                term=self._channel.term)
            fops.pwrite_all(fd, hdr.pack(), 0)
            fops.fsync(fd)
        finally:
            fops.close(fd)
        fops.write_file_atomic(os.path.join(self._chdir, index_name(first_id)), index_header(first_id),
                               durable=False)
        fops.rename(tmp, path)
        fops.fsync_dir(self._chdir)
        return SegmentState(first_id=first_id, path=path, capacity=capacity, last_id=first_id - 1,
                            index_checked=True)

    def _close_fds(self) -> None:
        for name in ("_fd", "_idx_fd", "_dir_fd", "_lock_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                if name == "_lock_fd":
                    release_lock(self._fops, fd)
                    continue
                try:
                    self._fops.close(fd)
                except OSError:
                    pass

    # -- appending ---------------------------------------------------------------------------------------------------
    def append(self, msg: MutableMessage) -> MessageID:
        return self.append_batch((msg,))[0]

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        max_body = self._opts.max_message_bytes
        cache = self._bloom_cache
        if len(cache) > _BLOOM_CACHE_MAX:  # it kept every vchannel ever written: ~180 bytes each for the writer's life
            cache.clear()
        prepared: list[_Entry] = []
        term = self._channel.term
        for m in msgs:  # everything that needs no ID happens before the lock; the leader stamps IDs and CRCs
            if m.wal_term > term:  # the log's record terms fence stale writers (_recovery.log_term): no forged ones
                raise InvalidArgumentError(f"message WAL term {m.wal_term} is above this writer's term {term}")
            try:
                head, payload, pad, crc_head_end, size = encode_record(m, max_body)
            except (struct.error, OverflowError) as e:
                raise InvalidArgumentError(f"message cannot be encoded ({m!r}): {e}") from e
            if m.message_type is _TIME_TICK:
                bp: tuple[int, ...] = ()  # not bloom content (BLOOM_EXCLUDED_TYPE)
            else:
                bp = cache.get(m.vchannel) or cache.setdefault(m.vchannel, bloom_positions(m.vchannel))
            prepared.append((head, payload, pad, crc_head_end, size, m.time_tick, bp))
        if not prepared:
            return []
        if self._forks != _fork.generation:
            self._refuse_in_child()
        last = msgs[-1]  # its last-confirmed ID is the batch's largest: retention's floor (see _retention.py)
        lc = None if last._lc_self else last.last_confirmed_message_id
        waiter = None
        with self._lock:
            self._check_open()
            if lc.__class__ is LocalFSMessageID:
                v: int = lc.value
                if self._lc_floor is None or v > self._lc_floor:
                    self._lc_floor = v
            first = self._next_id
            mid = self._next_id = first + len(prepared)
            b = self._open_batch
            if b is None:
                b = self._open_batch = _Batch(first)
            b.items += prepared
            lead = not self._flushing
            if lead:
                self._open_batch = None
                self._flushing = True
            else:  # a lock of its own, released when ``b`` is done or this thread is to lead it
                waiter = _allocate_lock()
                waiter.acquire()
                b.waiters.append(waiter)
        if waiter is None:
            self._lead(b)
        else:
            try:
                waiter.acquire()
                self._wake_one()  # pass the wake-up on (see _finish)
                if not b.done:  # woken with ``b`` not done: this thread leads it
                    self._lead(b)
            except BaseException:  # a signal handler raised (KeyboardInterrupt): hand on what is owed first
                self._abandon(waiter, b)
                raise
        if b.err is not None:
            raise WALIOError(str(b.err)) from b.err.__cause__
        return [fast_id(i) for i in range(first, mid)]

    def _refuse_in_child(self) -> None:
        """A forked child holds a copy of the writer, not its lock: the parent goes on writing, so anything the child
        wrote would be overwritten or interleaved (review: a child's acknowledged append was lost, two more were
        delivered after recovery among the parent's, out of order), and it never sees the parent's appends."""
        raise ShutdownError(
            f"localfs channel {self._channel} was opened for writing by the parent of this forked process, which "
            "keeps its lock: open the channel in this process (read-only to follow the parent's writes)"
        )

    def _check_open(self) -> None:
        if self._forks != _fork.generation:
            self._refuse_in_child()
        if self._err is not None:
            raise ShutdownError(f"localfs channel {self._channel} closed after an I/O error: {self._err}")
        if self._closed or self._closing:
            raise ShutdownError(f"localfs channel {self._channel} is closed")

    def _lead(self, b: _Batch) -> None:
        """Write ``b`` (taken out of ``_open_batch`` by whoever set ``_flushing`` for this thread), then the batches
        that formed meanwhile. The lock is held only between batches, never while writing or syncing.

        The appenders of a synced batch are woken only once the next batch is written, just before its
        ``fdatasync``: they run while the leader waits for the disk, instead of holding the interpreter while the
        leader needs it between its write and its sync.
        """
        b.leading = True
        rounds = 1
        synced: _Batch | None = None  # durable, its appenders not woken yet
        while True:
            err: BaseException | None = None
            try:
                self._flush(b, synced)
            except BaseException as e:
                err = e
            if synced is not None and not synced.done:
                self._finish(synced, None)
            heir = None
            with self._lock:
                if err is not None:
                    self._fail(err)
                failed = self._err
                nxt = self._open_batch
                self._open_batch = None
                if nxt is None or failed is not None:
                    self._flushing = False
                    if self._closing:  # only close() waits on it (having set _closing under this lock)
                        self._cv.notify_all()
                elif rounds >= _LEAD_ROUNDS:
                    heir = nxt.heir = nxt.waiters.pop()  # still flushing: the heir owns it from here
            if nxt is None or failed is not None or heir is not None:
                self._finish(b, failed)
                if nxt is not None and failed is not None:
                    self._finish(nxt, failed)  # queued behind a failed write: fails too, nothing of it was written
                if heir is not None:
                    heir.release()
                if err is not None and not isinstance(err, Exception):
                    # An interrupt (Ctrl-C) during the write or sync: the flush's state is unknown, so the WAL is
                    # closed as after an I/O error (reopen recovers), but this thread gets the interrupt itself.
                    raise err
                return
            synced, b = b, nxt
            rounds += 1

    def _finish(self, b: _Batch, err: WALIOError | None) -> None:
        """Settle ``b`` and wake its appenders one after another: the leader wakes one, each woken appender the
        next (``_woken`` is shared: whoever adds to it starts a chain, a chain ends only when it finds it empty).
        Woken all at once, they would queue for the interpreter lock together, each costing an extra sleep and
        wake-up, and the leader would queue behind them after its sync (measured: ~7% fewer appends/s at 32
        threads). A failed batch wakes all at once: no hurry there."""
        b.err = err
        b.done = True
        if not b.waiters:
            return
        if err is None:
            self._woken.extend(b.waiters)
            b.chained = True
            self._wake_one()
        else:
            for w in b.waiters:
                w.release()

    def _wake_one(self) -> None:
        try:
            self._woken.popleft().release()
        except IndexError:
            pass

    def _abandon(self, waiter: _thread.LockType, b: _Batch) -> None:
        """Hand on what this appender owes before its interrupt propagates (raised while it slept, or just after
        it woke, before it passed the wake-up on or started to lead): the lead of ``b`` if it was made heir,
        else its link in the wake-up chain (an extra wake-up is harmless: every chained waiter's batch is
        settled). Without it, one Ctrl-C in the main thread would leave other appenders asleep for good. ``b``'s
        records are queued and get written either way; the interrupted caller just does not learn their IDs.
        Waits (a flush at most) without an interruptible lock: it polls.
        """
        while True:
            with self._lock:
                heir = b.heir is waiter
            if heir or (b.done and (b.chained or b.err is not None or not b.waiters)):
                break
            try:
                time.sleep(0.0005)
            except BaseException:  # a second interrupt: the first is raised once this is done
                pass
        if heir and not b.done and not b.leading:
            self._lead(b)
            return
        try:
            self._woken.remove(waiter)  # not woken yet: nobody will now
        except ValueError:
            pass  # already woken (or never chained): its wake-up is to be passed on
        self._wake_one()

    def failure(self) -> BaseException | None:
        return self._err

    def _fail(self, err: BaseException) -> None:
        """An I/O error closes the WAL: after a failed fdatasync the kernel may have dropped the data."""
        if self._err is None:
            msg = f"localfs channel {self._channel}: {type(err).__name__}: {err}{limit_hint(err)}"
            self._err = WALIOError(msg)
            self._err.__cause__ = err
            # A reopen recovers from an I/O error; for a channel deleted or replaced under the writer it makes a new,
            # empty channel (or opens the other one), which the advice must not promise to recover anything.
            if isinstance(err, ChannelGoneError):
                log.error("%s; the WAL is closed (what it wrote since is not in the channel at its path)", msg)
            else:
                log.error("%s; the WAL is closed, reopen it to recover", msg)
        self._closed = True
        note_io_failure(self._chdir)  # a reopen in this process must rewrite the tail before trusting it
        # The channel is released once no deletion runs (see _wait_deletion): a truncate still deleting releases
        # it when done. Waiting for it here, under the writer's lock, a Ctrl-C in the wait cut the leader's
        # failure short: the appenders queued behind its flush slept for good (review 12f).
        if self._deleting:
            self._release_after_deletion = True
        else:
            self._release_failed()

    def _release_failed(self) -> None:
        self._close_fds()
        self._opener._release(self)

    def _flush(self, b: _Batch, synced: _Batch | None = None) -> None:
        """Write ``b``, wake the appenders of ``synced`` (an earlier, durable batch), sync, publish."""
        items = b.items
        first = b.first
        k = 0  # items[k:] are not written yet
        run_bytes = 0
        for i, it in enumerate(items):
            n = it[4]
            if self._end + run_bytes + n > self._active.capacity:
                if i > k or self._end > DATA_START:
                    self._write_run(items[k:i], first + k, run_bytes)
                    k, run_bytes = i, 0
                    self._roll(first + i, n)
                else:
                    self._grow(n)
            run_bytes += n
        self._write_run(items[k:] if k else items, first + k, run_bytes)
        if synced is not None:
            self._finish(synced, None)
        self._sync_policy()
        now = _monotonic()
        if now - self._dir_checked >= DIR_CHECK_INTERVAL:
            self._dir_checked = now
            self._check_dir(by_path=False)
        self._publish()

    def _write_run(self, run: list[_Entry], first: int, run_bytes: int) -> None:
        """Stamp and write ``run`` (IDs from ``first``) at the end of the active segment, with one ``pwritev``."""
        if not run:
            return
        fops = self._fops
        assert self._fd is not None
        assert self._idx_fd is not None
        start = self._end
        pos = start
        seg = self._active
        idx: list[bytes] = []
        entries: list[tuple[int, int, int]] = []
        last_indexed = self._last_indexed
        max_tt = self._w_max_tt
        bloom = seg.bloom
        seen = self._bloom_seen
        if self._w_records == 0:
            self._w_first_tt = run[0][5]
        # Format 2 flags the first record of each flush, and whether everything before it was durable then.
        flags = (VOUCHES if self._synced_end >= start else FLUSH_START) if self._vouch else 0
        iov: list[bytes | bytearray | memoryview] = []
        mid = first
        for head, payload, pad, crc_head_end, size, tt, bp in run:
            if tt > max_tt:
                max_tt = tt
            if pos - last_indexed >= INDEX_INTERVAL:
                idx.append(index_entry(mid, max_tt, pos))
                entries.append((mid, max_tt, pos))
                last_indexed = pos
            if bp not in seen:
                bloom_add(bloom, bp)
                seen.add(bp)
            stamp_record(head, payload, crc_head_end, mid, flags)
            flags = 0
            iov.append(head)
            if payload:
                iov.append(payload)
                if pad:
                    iov.append(pad)
            pos += size
            mid += 1
        fops.pwritev_all(self._fd, iov, start, run_bytes)
        if idx:  # after the records they point to, for readers of the file and of the list alike
            fops.write_all(self._idx_fd, b"".join(idx))
            seg.index.extend(entries)
        self._end = pos
        self._last_indexed = last_indexed
        self._w_max_tt = max_tt
        self._w_last_id = mid - 1
        self._w_records += len(run)
        if max_tt > self._max_tt:
            self._max_tt = max_tt

    def _sync_policy(self) -> None:
        assert self._fd is not None
        sync = self._opts.sync
        if sync == "always":
            self._fops.fdatasync(self._fd)
            self._synced_end = self._end
        elif sync == "interval":
            now = time.monotonic()
            if now - self._last_sync >= self._opts.sync_interval:
                self._fops.fdatasync(self._fd)
                self._synced_end = self._end
                self._last_sync = now
                self._dirty = False
            else:
                self._dirty = True

    def _check_dir(self, *, by_path: bool = True) -> None:
        """Raise :class:`ChannelGoneError` unless the channel's path still names the directory this writer holds, and
        its active segment is still there.

        Why: a directory deleted (``rm -rf``) or renamed away under the writer was noticed only when it next made a
        file there (a roll), and every append until then was acknowledged into files no open of the channel will
        ever find (and a roll or a deletion by path then worked in whatever directory had been put in its place); so
        was the active segment deleted alone (``rm`` of the files), and the roll then left a gap. Checked once a
        batch is written and synced (so what is acknowledged was in the channel's directory once durable), at most
        once per :data:`DIR_CHECK_INTERVAL`, always before a roll and before a deletion, and at close. The held
        directory keeps its inode number from going to a new directory.

        A path it may not ``stat`` (EACCES) says nothing of which directory is there: ``by_path`` (a roll, a
        deletion: they go by path, and would fail with it anyway) raises it; else the writer goes on, warned about
        (:data:`DIR_UNCHECKED_WARNING_EVERY`), as a read-only follower does, and the active segment's link count
        (an ``fstat``, no path) still tells a deletion.
        """
        fops = self._fops
        try:
            now: tuple[int, int] | None = fops.identity(self._chdir)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        except PermissionError as e:
            if by_path:
                raise
            self._dir_unchecked(e)
            now = self._dir_ident
        else:
            if self._dir_unchecked_since is not None:
                self._dir_checked_again()
        if now != self._dir_ident:
            there = "nothing is at its path now" if now is None else "another directory is at its path now"
            raise ChannelGoneError(
                errno.ENOENT if now is None else errno.ESTALE,
                f"the channel directory {self._chdir} was deleted or renamed away under this writer ({there}): appends "
                "since are in files no open of the channel will find",
            )
        if self._fd is not None and fops.fstat_links(self._fd) == 0:  # ``rm`` of the files, the directory kept
            raise ChannelGoneError(
                errno.ENOENT,
                f"the active segment {self._active.path} was deleted under this writer: appends since are in a file "
                "no open of the channel will find",
            )

    def _dir_unchecked(self, e: OSError) -> None:
        t = _monotonic()
        if self._dir_unchecked_since is None:
            self._dir_unchecked_since = t
        if t - self._dir_warned_at >= DIR_UNCHECKED_WARNING_EVERY:
            self._dir_warned_at = t
            log.warning("localfs channel %s: cannot check that %s is still the channel directory (%s: %s); appending "
                        "goes on in its open files, a roll or a deletion fails until the check works",
                        self._channel, self._chdir, type(e).__name__, e)

    def _dir_checked_again(self) -> None:
        since, self._dir_unchecked_since = self._dir_unchecked_since, None
        self._dir_warned_at = -math.inf
        if since is not None:
            log.warning("localfs channel %s: the check of %s works again, after %.0f s", self._channel, self._chdir,
                        _monotonic() - since)

    def _publish(self) -> None:
        seg = self._active
        seg.last_id = self._w_last_id
        seg.records = self._w_records
        seg.first_tt = self._w_first_tt
        seg.max_tt = self._w_max_tt
        seg.data_end = self._end
        seg.tail = (self._end, self._w_last_id)
        self._hub.bump()

    def _grow(self, need: int) -> None:
        assert self._fd is not None
        cap = align(DATA_START + need)
        self._fops.fallocate(self._fd, 0, cap)
        self._active.capacity = cap

    def _roll(self, next_id: int, need: int) -> None:
        fops = self._fops
        assert self._fd is not None
        assert self._idx_fd is not None
        old = self._active
        self._check_dir()  # before anything is made by path (the old segment's index, the new segment)
        # In every sync mode, "never" included: a sealed segment is trusted (recovery never scans it), so its data
        # must be durable before the seal vouches for it, or a power cut leaves a log that will not open. Two syncs
        # per segment (64 MiB by default) cost nothing measurable.
        fops.fdatasync(self._fd)
        now = wall_ns()
        summ = Summary(
            last_id=self._w_last_id, first_tt=self._w_first_tt, max_tt=self._w_max_tt, data_end=self._end,
            records=self._w_records, written_ns=now, index_entries=len(old.index), bloom=bytes(old.bloom),
        )
        fops.pwrite_all(self._fd, summ.pack(SEAL_MAGIC), SEAL_OFF)
        fops.fdatasync(self._fd)
        self._dirty = False
        write_index(fops, old.path, old.first_id, old.index, sealed=True)
        self._publish()
        old.sealed_ns = now
        old.sealed = True
        old.drop_index()  # after the seal: a reader that saw it unsealed took the list, which stays whole
        fd, idx_fd = self._fd, self._idx_fd
        self._fd = self._idx_fd = None
        try:
            new = self._create_segment(next_id, max(self._opts.segment_bytes, DATA_START + need))
            # Only once the successor is durable: from now on this segment being the newest means segments were
            # deleted from outside (recovery refuses), while a crash before this line is a roll cut short.
            self._mark_successor(fd, next_id)
        finally:
            fops.close(fd)
            fops.close(idx_fd)
        with self._seg_lock:
            self._log.segments = (*self._log.segments, new)
        self._open_active(new)
        self._hub.bump()
        self._apply_retention()

    def _mark_successor(self, seg: int | str, next_id: int) -> None:
        """Write a sealed segment's successor mark (``seg``: its open descriptor or its path), durably."""
        fops = self._fops
        fd = fops.open(seg, os.O_RDWR) if isinstance(seg, str) else seg
        try:
            fops.pwrite_all(fd, next_mark(next_id), NEXT_OFF)
            fops.fdatasync(fd)
        finally:
            if isinstance(seg, str):
                fops.close(fd)

    # -- interval sync -----------------------------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        try:
            self._sync_rounds()
        finally:
            self._syncer_done.set()

    def _sync_rounds(self) -> None:
        interval = self._opts.sync_interval
        while not self._stop_syncer.wait(interval):
            with self._lock:
                if self._closed or self._err is not None:
                    return
                if not self._dirty or self._flushing:
                    continue
                self._flushing = True
                fd = self._fd
                end = self._end  # no write can move it while this thread holds the flush
            err: BaseException | None = None
            try:
                if fd is not None:
                    self._fops.fdatasync(fd)
            except BaseException as e:
                err = e
            with self._lock:
                if err is not None:
                    self._fail(err)
                else:
                    self._dirty = False
                    self._last_sync = time.monotonic()
                    self._synced_end = end
                nxt = self._open_batch  # appenders that queued behind this sync: lead their batch from here
                self._open_batch = None
                if nxt is None or self._err is not None:
                    self._flushing = False
                    self._cv.notify_all()
            if nxt is not None:
                if self._err is not None:
                    self._finish(nxt, self._err)
                else:
                    self._lead(nxt)

    # -- retention ---------------------------------------------------------------------------------------------------
    def truncate(self, message_id: MessageID) -> None:
        if not isinstance(message_id, LocalFSMessageID):
            raise InvalidMessageIDError(f"not a localfs message ID: {message_id!r}")
        self._check_open()
        try:
            self._delete_front(lambda s: s.last_id < message_id.value)
        except OSError as e:  # what was deleted stays deleted; the rest is retried by the next truncate
            raise WALIOError(f"localfs channel {self._channel}: truncate: {e}") from e

    def _apply_retention(self) -> None:
        """Delete the oldest sealed segments past the size or age bound, but none that a transaction still open
        needs (``_retention.py``: deleting a txn's begin lost the whole txn for every reader)."""
        o = self._opts
        if o.retention_bytes is None and o.retention_seconds is None:
            return
        with self._seg_lock:
            segs = self._log.segments
        n = retention_count(
            segs,
            max_bytes=o.retention_bytes,
            max_age_ns=None if o.retention_seconds is None else int(o.retention_seconds * 1e9),
            now_ns=time.time_ns(),
            floor=self._lc_floor,
            mono_ns=time.monotonic_ns(),
        )
        if n:
            drop = {s.first_id for s in segs[:n]}
            self._delete_front(lambda s: s.first_id in drop, wait=False)

    def _delete_front(self, pred: Callable[[SegmentState], bool], *, wait: bool = True) -> None:
        """Delete the oldest sealed segments while ``pred`` holds (whole files, never truncated). Without ``wait``
        (the retention of a roll, on the append path) nothing is done while another deletion runs: the next roll
        does it."""
        if not wait and self._deleting:
            return
        with self._delete_lock:  # (a roll's retention may still wait here for a truncate that just started)
            with self._lock:  # _fail reads it under the lock
                self._deleting = True
            try:
                self._delete_front_locked(pred)
            finally:
                with self._lock:
                    self._deleting = False
                    release, self._release_after_deletion = self._release_after_deletion, False
                if release:  # an I/O error closed the WAL meanwhile: its release was left to this deletion
                    self._release_failed()

    def _wait_deletion(self) -> None:
        """Before the lock is released: a deletion still running (a truncate in another thread) ends first. Else a
        new writer opened the channel while this one still deleted: its retention, from a list of segments already
        gone, then wrote FIRST below them, and the log was refused as damaged. Deletions after this one see
        ``_closed`` and delete nothing."""
        with self._delete_lock:  # (a deletion never waits for a close: no deadlock)
            pass

    def _delete_front_locked(self, pred: Callable[[SegmentState], bool]) -> None:
        if self._closed:
            raise ShutdownError(f"localfs channel {self._channel} is closed")
        try:
            self._check_dir()  # the unlinks go by path: in a directory put in this one's place, they hit its files
        except ChannelGoneError:
            # The next batch closes the writer: only a flush may (_fail closes the files a running flush writes).
            self._dir_checked = -math.inf
            raise
        with self._seg_lock:
            segs = self._log.segments
            n = 0
            while n < len(segs) and segs[n].sealed and pred(segs[n]):
                n += 1
            if not n:
                return
            gone = segs[:n]
            # Before anything is deleted (the active segment never is, so segs[n] exists): from now on a missing
            # segment below it is retention's doing, and one above it is damage (``_recovery._check_first``).
            self._write_first_making_room(segs[n].first_id, gone)
            self._log.segments = segs[n:]
        left = list(gone)  # not durably deleted yet
        try:
            for s in gone:
                for path in (s.path, os.path.join(self._chdir, index_name(s.first_id))):
                    try:
                        self._fops.unlink(path)
                    except FileNotFoundError:
                        pass
                # Oldest first, each deletion durable before the next: a power cut can then only bring back a
                # prefix of what was deleted, never leave a gap between segments (which recovery calls corruption).
                self._fops.fsync_dir(self._chdir)
                del left[0]
                s.drop_mapping()
                log.info("localfs retention: deleted %s (IDs %d..%d)", s.path, s.first_id, s.last_id)
        finally:
            if left:  # an I/O error or a Ctrl-C: what is still on disk stays listed, and the next deletion deletes
                # it. Dropped from the list, it was never deleted, and a later deletion of newer segments left a gap
                # between it and them: live readers reported damage and the next open refused the log.
                with self._seg_lock:
                    self._log.segments = (*left, *self._log.segments)

    def _write_first_making_room(self, first_id: int, gone: Sequence[SegmentState]) -> None:
        """``write_first``, which needs a free block: on a full disk it would fail, and retention and truncate, which
        are there to free space, would delete nothing (and a writer with retention no longer opened). Then the
        indexes of the segments to delete go first: derived data (rebuilt when missing), and deleting them leaves
        the log as it was."""
        try:
            write_first(self._fops, self._chdir, first_id)
            return
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("localfs retention: no space to write %s (%s): deleting the indexes of the segments to "
                        "delete first", FIRST_NAME, e)
        for s in gone:
            try:
                self._fops.unlink(os.path.join(self._chdir, index_name(s.first_id)))
            except FileNotFoundError:
                pass
        self._fops.fsync_dir(self._chdir)  # freed blocks are reused only once the deletion is committed
        write_first(self._fops, self._chdir, first_id)

    # -- reading and lifetime ----------------------------------------------------------------------------------------
    def read(self, opt: ReadOption) -> ScannerImpls:
        self._check_open()
        return self._register(LocalFSScanner(opt, WriterSource(self._log, self._fops), self._hub, self._forget))

    def last_time_tick(self) -> int:
        return self._max_tt

    def close(self) -> None:
        if self._forks != _fork.generation:  # a forked child's copy: no close summary, and the lock is the parent's
            self._close_child_copy()
            return
        with self._lock:
            if self._released or (self._closing and not self._close_cut_short):
                return  # closed, or being closed by another call
            self._closing = True  # also after an I/O error closed it: scanners and the syncer still stop here
            self._close_cut_short = False
        try:
            self._close_steps()
        except BaseException:
            self._close_cut_short = True  # a Ctrl-C: the channel stays locked until a close gets through
            raise

    def _close_child_copy(self) -> None:
        """Forget a copy of the writer a fork made: close this process's copies of the segment and index files, and
        nothing else (its copy of the lock was closed at the fork; that number may name another file now)."""
        self._closed = True
        self._lock_fd = None
        for name in ("_fd", "_idx_fd", "_dir_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                try:
                    self._fops.close(fd)
                except OSError:
                    pass
        self._released = True

    def _close_steps(self) -> None:
        """The close, in steps that may all run again (a close a Ctrl-C cut short is finished by the next)."""
        cv = self._cv
        with self._lock:
            if not self._close_drained:
                while self._flushing and self._err is None:  # a batch is only ever open behind a running flush,
                    cv.wait()  # whose leader (or its heir) writes it before clearing _flushing
                self._flushing = True  # keep the syncer out for good
                self._close_drained = True
        self._stop_syncer.set()
        if self._syncer is not None:
            self._syncer_done.wait()
        self._close_scanners()
        try:
            if self._err is None:
                self._check_dir_at_close()
            if self._err is None:
                self._write_close_summary()  # again, if a close cut short wrote it already
        except OSError as e:
            log.error("localfs channel %s: clean close failed (%s); the next open recovers", self._channel, e)
        finally:
            with self._lock:
                self._closed = True
            self._wait_deletion()
            self._close_fds()
            for seg in self._log.segments:  # a closed WAL still referenced must not keep files mapped (and open)
                seg.drop_mapping()
            self._log.retire()
            self._opener._release(self)
            self._hub.bump()
            self._released = True

    def _check_dir_at_close(self) -> None:
        """The last check (no batch runs now): the appends acknowledged since the last batch's check (up to
        :data:`DIR_CHECK_INTERVAL`) were otherwise lost with a directory deleted meanwhile without a word. Found,
        it closes the writer as a batch's check does (``_fail``: an error logged, ``failure()``), not by raising:
        ``close`` reports storage failures in the log (a failed clean-close summary, the full WAL's last tick), as
        it runs in ``with`` exits and ``finally`` blocks, where a raise hides the error being handled; and nothing
        the caller could do then brings the appends back."""
        try:
            self._check_dir(by_path=False)
        except ChannelGoneError as e:
            with self._lock:
                self._fail(e)

    def _write_close_summary(self) -> None:
        fops = self._fops
        if self._fd is None or self._idx_fd is None:
            return
        fops.fsync(self._idx_fd)
        fops.fdatasync(self._fd)
        seg = self._active
        summ = Summary(
            last_id=self._w_last_id, first_tt=self._w_first_tt, max_tt=self._w_max_tt, data_end=self._end,
            records=self._w_records, written_ns=wall_ns(), index_entries=len(seg.index), bloom=bytes(seg.bloom),
        )
        fops.pwrite_all(self._fd, summ.pack(CLOSE_MAGIC), CLOSE_OFF)
        fops.fdatasync(self._fd)
