"""Closes, in a thread of its own, what a scanner dropped without ``close()`` still held.

Why: ``for m in w.read(...): break`` (or ``async for``) drops the scanner without closing it. The WAL used to keep
every scanner it made until it closed, so each such loop left its backend reader open for the WAL's life: a
localfs reader kept its segment mapped and open, so the disk space of segments retention had deleted stayed in use
(a follower reading now and then pinned every segment it had read), and an ``async for`` left its worker thread
waiting. The WAL now holds its scanners weakly, and a scanner collected while open hands its backend reader here.
The opener holds its read-only WALs weakly in the same way (a localfs follower kept its channel's watchdog thread):
one collected unclosed hands its backend WAL here.

Why not close it in ``__del__``: the collector runs finalizers in whatever thread allocates, at any point, even
while that thread holds a backend's lock that the reader's ``close()`` takes (a deadlock). ``SimpleQueue.put`` is
the one step that is safe there (it is reentrant); the closing runs in this module's thread, which takes no lock
of its caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from queue import SimpleQueue

__all__ = ["ensure_running", "put"]

_log = logging.getLogger(__name__)

_queue: SimpleQueue[Callable[[], object]] = SimpleQueue()
_thread: threading.Thread | None = None
_start_lock = threading.Lock()


def _run(queue: SimpleQueue[Callable[[], object]]) -> None:
    while True:
        release = queue.get()
        try:
            release()
        except Exception:  # a reader that fails to close must not stop the closing of the others
            _log.warning("closing a scanner or a read-only WAL dropped without close() failed", exc_info=True)
        del release  # not kept while waiting for the next: it holds the reader (a localfs reader, its segment's map)


def ensure_running() -> None:
    """Start the thread if this process has none yet (called where starting a thread is safe: a scanner's
    ``__init__``, never a finalizer). One idle daemon thread per process that ever made a scanner."""
    global _thread
    t = _thread
    if t is not None and t.is_alive():
        return
    with _start_lock:
        if _thread is None or not _thread.is_alive():
            t = threading.Thread(target=_run, args=(_queue,), name="wal-scanner-reaper", daemon=True)
            try:
                t.start()
            except RuntimeError:  # at the thread limit: what is dropped waits in the queue for the next call's thread
                return  # (raised, it failed the read or open that called, a bare RuntimeError, half made)
            _thread = t


def put(release: Callable[[], object]) -> None:
    """Run ``release`` in the reaper's thread. Safe in a finalizer: one reentrant ``SimpleQueue.put``."""
    _queue.put(release)


def _fresh_in_child() -> None:
    """A forked child has no copy of the thread, and what the parent queued is the parent's to close."""
    global _queue, _thread, _start_lock
    _queue = SimpleQueue()
    _thread = None
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_in_child)
