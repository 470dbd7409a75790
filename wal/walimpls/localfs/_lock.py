"""The channel's write lock: ``flock(LOCK_EX)`` on ``LOCK``, taken by the writer and by ``repair``.

Three things a bare ``flock`` gets wrong, each seen by a review:

- *fork*: the lock belongs to the open file description, which a forked child shares. A ``multiprocessing``
  worker forked by the writer then kept the channel locked after the writer closed it or was killed, and no new
  writer could take over until the worker exited. Every lock this process holds is registered, and a forked child
  closes its copies at once (``os.register_at_fork``): closing a copy drops the child's reference only, so the
  parent keeps its lock (``LOCK_UN`` would release the parent's, so it is never used here). A fork waits while
  another thread opens or closes a lock's descriptor (``register_at_fork(before=...)`` takes the registry's
  mutex): a descriptor forked between its open and its registration, or between its unregistration and its close,
  kept the lock in the child (a review: 556 of 2000 forks beside a thread taking and releasing the lock, and 2 of
  200 beside a thread opening and closing a writer), and a child forked while the mutex was held hung at its
  first lock (4 of 2000).
- *a probe*: ``wal info`` / ``verify`` test the lock with a shared ``flock`` for a few microseconds; a writer
  opening then used to get ``WALLockedError`` though no writer existed. A refused lock is retried for a moment
  (:data:`RETRY_SECONDS`) before the error.
- *a LOCK replaced*: after ``LOCK`` was deleted (by hand, "clearing a stale lock") a second writer locked a new
  file while the first kept writing, and the log was damaged. After locking, the descriptor must still be the
  file named ``LOCK``; if not, the new one is locked instead. And a ``LOCK`` deleted and made again (``rm LOCK;
  touch LOCK``) under a live writer leaves nothing at the path to say the writer runs: :func:`deleted_lock_holders`
  asks Linux which processes hold a lock on a deleted file once named ``LOCK`` (a review: ``repair`` locked the new
  file and zeroed a record the writer was writing, 97 of 473 acknowledged messages lost).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from ._fileops import FileOps

__all__ = ["RETRY_SECONDS", "LockRefusedError", "probe", "release", "take", "try_flock"]

RETRY_SECONDS = 0.05
"""How long a refused lock is retried (a probe holds it for microseconds; a writer holds it for good)."""

_held: set[int] = set()
_held_lock = threading.RLock()  # reentrant: a fork from a signal handler that interrupted this thread in it
_held_in: dict[int, tuple[int, int] | None] = {}
"""(st_dev, st_ino) of the directory each of ``_held`` was opened in (None: unknown), so that
:func:`deleted_lock_holders` looks at this process's descriptors of that channel only."""


class LockRefusedError(Exception):
    """Another process (or another opener of this one) holds the lock. ``holders``: the processes that still hold a
    lock on a deleted file once named ``LOCK`` (it was deleted and made again under them), else empty."""

    def __init__(self, path: str, holders: tuple[int, ...] = ()) -> None:
        super().__init__(path)
        self.holders = holders

    def describe(self) -> str:
        """Who holds it, for an error message."""
        if not self.holders:
            return "a writer holds its lock (a process has it open for writing)"
        return (
            f"its LOCK file was deleted and made again while process(es) {', '.join(map(str, self.holders))} still "
            "hold the deleted file's lock (a writer keeps it until it exits)"
        )


def _before_fork() -> None:
    _held_lock.acquire()  # no descriptor is being opened, registered, unregistered or closed while the fork copies them


def _after_fork_in_parent() -> None:
    _held_lock.release()


def _drop_in_child() -> None:
    global _held_lock
    for fd in list(_held):  # the fork copied the set; no other thread runs in the child yet
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _held_in.clear()
    _held_lock = threading.RLock()  # the copy is held (by ``_before_fork``), for a thread that does not exist here


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_drop_in_child)


def take(fops: FileOps, path: str) -> int:
    """Lock ``path`` (created if missing) and return its descriptor; raises :class:`LockRefusedError`, also when
    a process still holds the lock of a deleted file once named ``path`` (:func:`deleted_lock_holders`)."""
    deadline = time.monotonic() + RETRY_SECONDS
    at = _dir_key(path)  # not under _held_lock, which every channel's open and close takes
    while True:
        with _held_lock:  # open and register as one step: a fork in between would copy an unregistered descriptor
            fd = fops.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            _held.add(fd)  # before the lock: a child forked later closes its copy
            _held_in[fd] = at
        try:
            locked = try_flock(fops, fd, fcntl.LOCK_EX)
            if locked and _same_file(fd, path):
                if holders := deleted_lock_holders(path):
                    raise LockRefusedError(path, tuple(holders))
                return fd
        except BaseException:
            release(fops, fd)
            raise
        release(fops, fd)
        if locked:
            continue  # LOCK was replaced under us: lock the file that has the name now
        if time.monotonic() >= deadline:
            raise LockRefusedError(path)
        time.sleep(0.002)


def probe(fops: FileOps, path: str) -> bool | None:
    """Whether a process holds ``path``'s lock (None when it does not exist): a shared ``flock`` for a moment.

    Its descriptor is registered like a writer's: a child forked by another thread while it was open kept it, and
    with it the shared lock, for the child's whole life, and no writer could open meanwhile (a review: 18 of 1000
    forks beside a thread running ``info``)."""
    at = _dir_key(path)
    with _held_lock:
        try:
            fd = fops.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        _held.add(fd)
        _held_in[fd] = at
    try:
        return not try_flock(fops, fd, fcntl.LOCK_SH)
    finally:
        release(fops, fd)  # closing drops the probe lock (at once: a writer opening meanwhile waits for it)


def try_flock(fops: FileOps, fd: int, operation: int) -> bool:
    """``flock(fd, operation | LOCK_NB)``: False when another holder refuses it (other errors raise)."""
    try:
        fops.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def deleted_lock_holders(path: str) -> list[int]:
    """The processes holding an ``flock`` on a deleted file that was named ``path`` (Linux: ``/proc/locks`` and the
    holders' ``/proc/PID/fd``); empty where ``/proc`` cannot tell (another OS, another user's process, another PID
    namespace).

    Only the few processes that hold flocks on the directory's device are looked at, so it costs about one read.
    A holder's descriptor names the file as the holder reached it, which may be another path to the same directory
    (a bind mount, a container's volume: ``/data/wal`` here is ``/wal`` there), so the directory it names is looked
    up (as this process sees it, and from the holder's root, ``/proc/PID/root``) and compared with ``path``'s by
    device and inode, not by text (a review: a writer in its own mount namespace, the channel bind-mounted at another
    path, was not seen, and a second writer opened beside it).
    """
    try:
        st = os.stat(os.path.dirname(path) or ".")
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dev, want_dir = st.st_dev, (st.st_dev, st.st_ino)
    prefix = f"{os.major(dev):02x}:{os.minor(dev):02x}:"
    suffix = f"/{os.path.basename(path)} (deleted)"
    # One look per holder process, not per lock: a process holding many flocks (a server with a channel open per
    # LOCK) made this read every descriptor of it once per lock, seconds per open at a few hundred channels.
    inos: dict[int, set[int]] = {}
    for line in lines:
        parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:15695916 0 EOF" ("->" marks a waiter)
        if len(parts) < 6 or parts[1] != "FLOCK" or not parts[5].startswith(prefix):
            continue
        try:
            inos.setdefault(int(parts[4]), set()).add(int(parts[5][len(prefix):]))
        except ValueError:
            continue
    out: list[int] = []
    me = os.getpid()
    for pid, held in inos.items():
        try:
            fd_dir = f"/proc/{pid}/fd"
            # This process's own: only those opened in the channel's directory (or unknown), which a dictionary
            # tells without a system call; looking at each (a readlink and a stat) made every open of a process
            # with n channels open cost n looks, O(n^2) in all (500 opens: 125,000 readlinks, 2.5 s).
            names = (
                [str(fd) for fd, at in list(_held_in.items()) if at is None or at == want_dir]
                if pid == me else os.listdir(fd_dir)
            )
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
                if not target.endswith(suffix) or os.stat(f"{fd_dir}/{name}").st_ino not in held:
                    continue
                where = target[: -len(suffix)] or "/"
                # as this process sees it (a holder in a chroot), then as the holder does (its own mounts)
                if _dir_is(where, want_dir) or _dir_is(f"/proc/{pid}/root{where}", want_dir):
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def _dir_key(path: str) -> tuple[int, int] | None:
    """The identity of the directory holding ``path`` (None when it cannot be had: the descriptor is then looked
    at by every check, as all were)."""
    try:
        st = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _dir_is(path: str, key: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key


def release(fops: FileOps, fd: int) -> None:
    """Close a descriptor :func:`take` returned (which drops the lock)."""
    with _held_lock:  # close and unregister as one step: a fork in between would copy a descriptor still locked
        _held.discard(fd)
        _held_in.pop(fd, None)
        try:
            fops.close(fd)
        except OSError:
            pass
