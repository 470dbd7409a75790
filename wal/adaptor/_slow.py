"""A warning while a close waits on a backend that does not return (a stalled disk, a hung server).

A close waits for the appends it accepted and for the backend's last write and sync: nothing else keeps what it
acknowledged, or is about to, and a thread stuck in ``fdatasync`` cannot be abandoned (it holds the channel's files
and lock). On a disk that stalls (a full NFS server, a dying SSD, a cgroup I/O limit) that wait lasts as long as the
stall, for ever if the disk never answers, and it used to be silent: a program's shutdown hung with nothing in the
log to say why. :class:`CloseWatch` says, from a thread of its own (the closing thread is the one stuck), which step
the close waits in, after :data:`CLOSE_WARNING_AFTER` and then every :data:`CLOSE_WARNING_EVERY` seconds, and how
long it took once it ends.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["CLOSE_WARNING_AFTER", "CLOSE_WARNING_EVERY", "CloseWatch"]

log = logging.getLogger("wal.adaptor")

CLOSE_WARNING_AFTER = 10.0
"""Seconds a close may take before it is logged as waiting (a healthy close takes milliseconds)."""

CLOSE_WARNING_EVERY = 60.0
"""Seconds between the warnings of a close that still waits."""


class CloseWatch:
    """Logs a warning naming :attr:`step` while the close it watches has not ended (see the module doc).

    A context manager: the watching thread starts on enter and ends on exit. ``step`` is set by the close as it
    goes, a plain store (the watcher reads it; a stale read only names the step before).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.step = "closing"
        self._done = threading.Event()
        self._started = time.monotonic()
        self._warned = False

    def __enter__(self) -> CloseWatch:
        try:
            threading.Thread(target=self._watch, name=f"wal-close-watch-{self.what}", daemon=True).start()
        except RuntimeError:  # no new thread (interpreter shutdown, a thread limit): the close goes on unwatched
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._warned:  # here, not in the watcher: logged before the close returns
            log.warning("%s: close finished after %.1f s", self.what, time.monotonic() - self._started)

    def _watch(self) -> None:
        wait = CLOSE_WARNING_AFTER
        while not self._done.wait(wait):
            self._warned = True
            log.warning(
                "%s: close has not finished after %.1f s, waiting for %s: a backend write or sync has not returned "
                "(a stalled disk or server?); the close ends when it does",
                self.what, time.monotonic() - self._started, self.step,
            )
            wait = CLOSE_WARNING_EVERY
