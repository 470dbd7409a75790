"""The localfs builder and opener: options, channel directories, the write lock and the term."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import _fork
from ..._checks import seconds
from ..._types import AccessMode, OpenOption
from ...errors import FencedError, InvalidArgumentError, ShutdownError, WALIOError, WALLockedError
from .._interfaces import OpenerBuilderImpls, OpenerImpls, WALImpls, unknown_options_error
from ._fileops import DEFAULT_FILE_OPS, FileOps, limit_hint
from ._format import DATA_START, LOCK_NAME, TERM_NAME
from ._lock import LockRefusedError
from ._lock import release as release_lock
from ._lock import take as take_lock
from ._message_id import WAL_NAME
from ._recovery import lock_deleted, log_term, read_term, recover, write_term
from ._state import Hub
from ._wal import LocalFSROWAL, LocalFSWAL, _Base

__all__ = ["LocalFSBuilder", "LocalFSOpener", "Options"]

log = logging.getLogger(__name__)

_SYNC_MODES = ("always", "interval", "never")
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = (1 << 32) - 1
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


MIN_MESSAGE_BYTES = 256
"""The smallest ``max_message_bytes``: every message the WAL makes itself (time ticks, txn ends) fits (a tick is
about 80 bytes encoded). Smaller values used to be accepted, then failed the open, or refused every append."""


@dataclass(frozen=True)
class Options:
    root: str
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    sync: str = "always"
    sync_interval: float = 0.01
    retention_bytes: int | None = None
    retention_seconds: float | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    file_ops: FileOps = DEFAULT_FILE_OPS

    @classmethod
    def parse(cls, options: dict[str, Any]) -> Options:
        known = {"root", "segment_bytes", "sync", "sync_interval", "retention_bytes", "retention_seconds",
                 "max_message_bytes", "_file_ops"}
        unknown = [k for k in options if k not in known]
        if unknown:
            raise unknown_options_error("localfs", unknown)
        root = options.get("root")
        if root is None:
            root = os.environ.get("WAL_LOCALFS_ROOT") or "./wal-data"
        if not isinstance(root, str | os.PathLike) or not isinstance(os.fspath(root), str) or not os.fspath(root):
            raise InvalidArgumentError(f"localfs option root must be a path, got {root!r}")
        if "\0" in os.fspath(root):  # accepted here, it failed every open with a bare ValueError
            raise InvalidArgumentError(f"localfs option root contains a NUL character: {root!r}")
        seg = _int(options, "segment_bytes", DEFAULT_SEGMENT_BYTES)
        if not MIN_SEGMENT_BYTES <= seg <= MAX_SEGMENT_BYTES:
            raise InvalidArgumentError(
                f"localfs option segment_bytes must be in [{MIN_SEGMENT_BYTES}, {MAX_SEGMENT_BYTES}], got {seg}"
            )
        sync = options.get("sync", "always")
        if sync not in _SYNC_MODES:
            raise InvalidArgumentError(f"localfs option sync must be one of {', '.join(_SYNC_MODES)}, got {sync!r}")
        interval = seconds(options.get("sync_interval", 0.01), "localfs option sync_interval")
        if "sync_interval" in options and sync != "interval":
            # Accepted, it did nothing: a user who set it believed appends were synced that often.
            raise InvalidArgumentError(
                f"localfs option sync_interval applies only with sync='interval', got sync={sync!r}: drop "
                "sync_interval or set sync='interval'"
            )
        rb = options.get("retention_bytes")
        if rb is not None and (not isinstance(rb, int) or isinstance(rb, bool) or rb < 0):
            raise InvalidArgumentError(f"localfs option retention_bytes must be an int >= 0 or None, got {rb!r}")
        rs = options.get("retention_seconds")
        if rs is not None:
            rs = seconds(rs, "localfs option retention_seconds (or None)", zero=True)
        mmb = _int(options, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        if not MIN_MESSAGE_BYTES <= mmb <= MAX_SEGMENT_BYTES - DATA_START - 64:
            raise InvalidArgumentError(
                f"localfs option max_message_bytes out of range: {mmb} (from {MIN_MESSAGE_BYTES}: below that, the "
                f"WAL's own time ticks would not fit, to {MAX_SEGMENT_BYTES - DATA_START - 64})"
            )
        fops = options.get("_file_ops", DEFAULT_FILE_OPS)
        if not isinstance(fops, FileOps):
            raise InvalidArgumentError(f"localfs option _file_ops must be a FileOps, got {type(fops).__name__}")
        return cls(root=os.path.abspath(os.fspath(root)), segment_bytes=seg, sync=sync, sync_interval=interval,
                   retention_bytes=rb, retention_seconds=rs, max_message_bytes=mmb,
                   file_ops=fops)


def _int(options: dict[str, Any], name: str, default: int) -> int:
    v = options.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgumentError(f"localfs option {name} must be an int, got {v!r}")
    return v


def ensure_dir(fops: FileOps, path: str) -> None:
    """Create ``path`` and its parents with mode 0700 (existing directories are left as they are)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        ensure_dir(fops, parent)
    try:
        fops.mkdir(path, 0o700)
    except FileExistsError:
        pass


MISSING_CHANNEL_WARNING_AFTER = 5.0
"""Seconds a read-only WAL's scanners wait for a channel directory that does not exist before one warning is logged
(logger ``wal.walimpls.localfs._opener``) naming it and the root. They go on waiting: a follower started before its
writer is a supported use, but a mistyped channel name would otherwise wait for ever in silence."""


_openers: weakref.WeakSet[LocalFSOpener] = weakref.WeakSet()
"""Every opener of this process, for :func:`_forget_watches_in_child`."""


def _forget_watches_in_child() -> None:
    """In a forked child: forget the parent's watchdog observer, never stop or unschedule it.

    The child's copy shares the parent's inotify descriptor and kill pipe: unscheduling a watch there removed the
    parent's (its followers got no more wake-ups), and stopping it wrote the kill pipe, which the parent's inotify
    thread then found readable for ever (it spun at 100 % CPU until the parent closed its opener). Review 10e.
    Fresh locks too: a parent thread may have held them at the fork.
    """
    for op in list(_openers):
        op._lock = threading.Lock()
        op._watch_lock = threading.Lock()
        op._observer = None
        op._watches = {}
        for hub in op._hubs.values():
            hub.watchers = 0
            hub.arm = None
            hub.watched = None
            hub.watch_alive = None
            hub.lock = threading.RLock()
            hub.cond = threading.Condition(hub.lock)


os.register_at_fork(after_in_child=_forget_watches_in_child)


class LocalFSOpener(OpenerImpls):
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self._fops = opts.file_ops
        self._lock = threading.Lock()
        # Taken before _lock by whatever schedules or unschedules a watch, for the whole of it: unscheduled after
        # _lock was let go, a watch removed by a closing follower took with it the one a new follower of the same
        # channel had just scheduled (watchdog's watches of one directory are equal), which then polled.
        self._watch_lock = threading.Lock()
        self._hubs: dict[str, Hub] = {}
        self._open: set[_Base] = set()
        self._closed = False
        self._observer: Any = None
        self._watches: dict[str, Any] = {}
        _openers.add(self)

    @property
    def root(self) -> str:
        return self.opts.root

    def _hub(self, name: str, chdir: str) -> Hub:
        with self._lock:
            hub = self._hubs.get(name)
            if hub is None:
                hub = self._hubs[name] = Hub(name, chdir)
            hub.users += 1
            return hub

    def _drop_hub(self, hub: Hub) -> None:
        """Forget ``hub`` once no WAL of its channel is open. Why: the opener kept a hub for every channel name it
        had ever opened (about 1.7 KB each), so a long-lived opener of short-lived channels grew without bound."""
        with self._lock:
            hub.users -= 1
            if hub.users <= 0 and self._hubs.get(hub.name) is hub:
                del self._hubs[hub.name]

    def open(self, opt: OpenOption) -> WALImpls:
        opt.validate()  # before anything is created
        if self._closed:
            raise ShutdownError("localfs opener is closed")
        ch = opt.channel
        fops = self._fops
        chdir = os.path.join(self.opts.root, ch.name)
        if os.path.islink(chdir):  # a planted link must not lead the WAL (or its lock) outside root
            raise InvalidArgumentError(f"localfs: channel directory {chdir} is a symbolic link; refusing to follow it")
        hub = self._hub(ch.name, chdir)
        w: _Base
        try:
            if ch.access_mode is AccessMode.RO:
                # Writes nothing, not even the channel directory: a follower may start before its writer (it reads
                # nothing until the writer makes the directory), and a mistyped name must not leave one behind.
                w = LocalFSROWAL(self, hub, ch, chdir, fops)
                self._watch(hub)
                w._watched_in = _fork.generation
            else:
                try:
                    ensure_dir(fops, chdir)
                except OSError as e:
                    raise WALIOError(f"localfs: cannot create channel directory {chdir}: {e}{limit_hint(e)}") from e
                w = self._open_rw(opt, chdir, hub)
            with self._lock:
                if not self._closed:
                    self._open.add(w)
                    return w
            w.close()  # not under _lock, which its close takes (to release itself): an open racing close hung
            raise ShutdownError("localfs opener is closed")
        except BaseException:
            self._drop_hub(hub)  # no WAL holds it (one closed above is not among the open: it released nothing)
            raise

    def _open_rw(self, opt: OpenOption, chdir: str, hub: Hub) -> LocalFSWAL:
        fops = self._fops
        ch = opt.channel
        lock_path = os.path.join(chdir, LOCK_NAME)
        if lock_deleted(fops, chdir):
            # A writer made LOCK first and never deletes it: someone did, maybe under a live writer, which still holds
            # the deleted file's lock. Locking a new one would let two writers in (measured: the log was damaged).
            raise WALLockedError(
                f"localfs channel {ch.name!r}: {lock_path} was deleted, maybe under a running writer that still "
                "holds it; once no writer runs, `wal repair --no-writer-running` makes a new one"
            )
        try:
            lock_fd = take_lock(fops, lock_path)
        except LockRefusedError as e:
            raise WALLockedError(f"localfs channel {ch.name!r} ({lock_path}): {e.describe()}; stop it first") from None
        except OSError as e:
            raise WALIOError(f"localfs: opening channel {ch.name!r} failed: {e}{limit_hint(e)}") from e
        try:
            stored = read_term(fops, chdir)
            if ch.term < stored:
                raise FencedError(f"localfs channel {ch.name!r}: term {ch.term} is older than the stored term {stored}")
            logged, seg = log_term(fops, chdir)
            if ch.term < logged:  # TERM was deleted or put back from an old copy: the log still fences
                said = f"says {stored}" if os.path.exists(os.path.join(chdir, TERM_NAME)) else "is missing"
                raise FencedError(
                    f"localfs channel {ch.name!r}: term {ch.term} is older than term {logged}, which wrote {seg} "
                    f"(the TERM file {said}: deleted, or copied back from an older state?)"
                )
            if ch.term > stored:
                write_term(fops, chdir, ch.term)
            rec = recover(fops, chdir, write=True, segment_bytes=self.opts.segment_bytes)
            return LocalFSWAL(self, hub, ch, chdir, fops, self.opts, lock_fd, rec)
        except BaseException as e:
            release_lock(fops, lock_fd)
            if isinstance(e, OSError):
                raise WALIOError(f"localfs: opening channel {ch.name!r} failed: {e}{limit_hint(e)}") from e
            raise

    # -- watchdog wake-ups for read-only followers -------------------------------------------------------------------
    def _watch(self, hub: Hub) -> None:
        with self._watch_lock, self._lock:
            hub.watchers += 1
            if hub.watchers > 1 or self._closed:
                return
            if not os.path.isdir(hub.directory):
                # inotify needs the directory, and a read-only open does not make it: its scanners poll, and arm
                # the watch when they find the directory (hub.arm), so a follower started before its writer is
                # woken by events from then on.
                hub.arm = functools.partial(self._arm, hub)
                hub.missing_since = time.monotonic()
                return
            self._schedule(hub)

    def _arm(self, hub: Hub) -> None:
        if not os.path.isdir(hub.directory):
            self._warn_missing(hub)
            return
        with self._watch_lock, self._lock:
            if hub.arm is None:
                return  # armed by another scanner, or no read-only WAL left
            hub.arm = None
            if not self._closed:
                self._schedule(hub)

    def _warn_missing(self, hub: Hub) -> None:
        """Log, once per wait, that ``hub``'s directory has not appeared after :data:`MISSING_CHANNEL_WARNING_AFTER`
        seconds (see there), saying what the root holds so that a mistyped name shows."""
        waited = time.monotonic() - hub.missing_since
        if hub.missing_since == 0.0 or waited < MISSING_CHANNEL_WARNING_AFTER:
            return
        with self._lock:
            if hub.arm is None or hub.missing_since == 0.0:
                return
            hub.missing_since = 0.0  # warned: once per wait
        root = self.opts.root
        try:
            names = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            there = "the root does not exist either"
        except OSError as e:
            there = f"the root cannot be listed: {e.strerror or e}"
        else:
            shown = ", ".join(names[:10]) + (f" ... ({len(names)} in all)" if len(names) > 10 else "")
            there = f"channels there: {shown}" if names else "the root holds no channel"
        log.warning("localfs: read-only channel %r has waited %.0f s for its directory %s, which does not exist "
                    "under root %s (%s); it goes on waiting and reads the channel once a writer opens it: check the "
                    "channel name and the root if none will", hub.name, waited, hub.directory, root, there)

    def _schedule(self, hub: Hub) -> None:
        """Watch ``hub``'s directory (under ``_lock``)."""
        try:
            if self._observer is None:
                from watchdog.observers import Observer

                _quiet_stop_race()
                obs = Observer()
                obs.daemon = True
                obs.start()
                self._observer = obs
            ident = self._fops.identity(hub.directory)  # before the watch: a directory replaced between is moved to
            watch = self._watches[hub.name] = self._observer.schedule(_make_wake(hub), hub.directory, recursive=False)
            hub.watched = ident
            hub.watch_alive = _emitter_alive(self._observer, watch) if _hook_overflow() else None
        except Exception:  # no inotify (limits, platform): polling alone still delivers everything
            self._watches.pop(hub.name, None)

    def _rewatch(self, hub: Hub, ident: tuple[int, int]) -> None:
        """Move ``hub``'s watch to the directory ``ident`` a reader has just bound to, when it is on another one.

        Why: an inotify watch is on a directory, not a path. Once the channel's directory was deleted or renamed
        away, and another made at its path, the watch stayed on the old one (or died with it: watchdog's emitter
        stops at its deletion and a new ``schedule`` of the same path reuses it), so the readers of the new one
        were woken by their polling only, up to 50 ms late. Readers bind to a directory once, so this runs once per
        directory and reader; the usual call finds the watch where it is and returns without a lock.
        """
        if hub.watched is None or hub.watched == ident:  # no watch (polling, or one armed later), or the right one
            return
        with self._watch_lock:
            with self._lock:
                if hub.watchers <= 0 or self._closed or hub.watched is None or hub.watched == ident:
                    return
                hub.watched = None
                hub.watch_alive = None
                watch = self._watches.pop(hub.name, None)
                obs = self._observer
            _unschedule(obs, watch)
            with self._lock:
                if hub.watchers > 0 and not self._closed:
                    self._schedule(hub)

    def _unwatch(self, hub: Hub) -> None:
        with self._watch_lock:
            with self._lock:
                hub.watchers -= 1
                if hub.watchers > 0:
                    return
                hub.arm = None
                hub.watched = None
                hub.watch_alive = None
                watch = self._watches.pop(hub.name, None)
                obs = self._observer
            _unschedule(obs, watch)

    def _release(self, w: _Base) -> None:
        with self._lock:
            if w not in self._open:
                return
            self._open.discard(w)
        if isinstance(w, LocalFSROWAL) and w._watched_in == _fork.generation:  # a parent's watch is not ours
            self._unwatch(w._hub)
        self._drop_hub(w._hub)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ws = list(self._open)
        for w in ws:
            w.close()
        obs = self._observer
        self._observer = None
        if obs is not None:
            obs.stop()
            obs.join()


class _StopRaceFilter(logging.Filter):
    """Drops watchdog's ERROR line for an inotify event read while its emitter stops.

    Why: removing a watch (the last read-only WAL of a channel closing) makes the kernel send that watch an
    ``IN_IGNORED`` event; when the emitter thread reads it just after ``unschedule`` has stopped the emitter,
    watchdog (7.x) logs "InotifyEmitter.queue_events() called when the thread is inactive" at ERROR and drops the
    event, which is what we want. Measured: 8 of 20 read-only WAL closes logged it. An operator should not see an
    ERROR for a clean close; any other watchdog record still passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR and str(record.msg).startswith(_STOP_RACE))


_STOP_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"
_stop_race_filter = _StopRaceFilter()


def _unschedule(obs: Any, watch: Any) -> None:
    """Stop a watch (not under the opener's lock: it joins the emitter thread); a watch already gone is fine."""
    if watch is not None and obs is not None:
        try:
            obs.unschedule(watch)
        except Exception:
            pass


def _quiet_stop_race() -> None:
    logger = logging.getLogger("watchdog.observers.inotify")
    if _stop_race_filter not in logger.filters:
        logger.addFilter(_stop_race_filter)


def _emitter_alive(obs: Any, watch: Any) -> Callable[[], bool] | None:
    """Whether the emitter of ``watch`` still runs, and the thread that reads the observer's inotify descriptor for
    every emitter (watchdog 7), as a call; None when the observer does not say which emitter it is."""
    reader = getattr(obs, "_inotify_fd", None)
    if reader is not None and not callable(getattr(reader, "is_alive", None)):
        return None
    for emitter in list(getattr(obs, "emitters", ())):
        if getattr(emitter, "watch", None) == watch:
            return lambda: (emitter.is_alive() and not emitter.stopped_event.is_set()
                            and (reader is None or reader.is_alive()))
    return None


_overflow_hooked: bool | None = None
_hook_lock = threading.Lock()  # two openers' first watches at once must not wrap watchdog's method twice


def _hook_overflow() -> bool:
    """Bump every watched hub when the kernel's inotify queue overflows; False where that cannot be done.

    Why: an overflow drops events (watchdog 7 has one inotify queue per observer, so per opener: 300 channels
    written at once can fill its 16,384 events), and watchdog only logs it: no handler of a non-recursive watch
    hears of it, so readers trusting their watch (``Hub.watching``) would wait a long poll for data written then.
    The queue overflows before the event saying so is read, so a reader woken after it sees everything that was
    dropped. Every opener's hubs are bumped (a spurious wake costs one poll). Without this hook (an older
    watchdog, which drops the overflow event unreported) no watch is trusted.
    """
    global _overflow_hooked
    if _overflow_hooked is not None:
        return _overflow_hooked
    with _hook_lock:
        if _overflow_hooked is not None:
            return _overflow_hooked
        try:
            from watchdog.observers import inotify_c

            fd_class: Any = inotify_c.InotifyFD
            handle = fd_class.handle_event
            if not hasattr(inotify_c.InotifyEvent, "is_queue_overflow"):
                raise AttributeError("is_queue_overflow")
        except Exception:
            _overflow_hooked = False
        else:
            def handle_event(self: Any, event: Any) -> None:
                try:
                    handle(self, event)
                finally:
                    if event.is_queue_overflow:
                        _overflowed()

            fd_class.handle_event = handle_event
            _overflow_hooked = True
    return _overflow_hooked


def _overflowed() -> None:
    for op in list(_openers):
        for hub in list(op._hubs.values()):
            if hub.watched is not None:
                hub.bump()


def _make_wake(hub: Hub) -> Any:
    from watchdog.events import FileSystemEventHandler

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            hub.bump()

    return Wake()


class LocalFSBuilder(OpenerBuilderImpls):
    @property
    def name(self) -> str:
        return WAL_NAME

    def build(self, **options: Any) -> LocalFSOpener:
        return LocalFSOpener(Options.parse(options))
