"""Child processes forked from a warm server (``multiprocessing``'s forkserver), for the SIGKILL tests.

Why: a fresh interpreter spends ~0.17 s importing ``wal`` before it opens its WAL (measured in session 17: 0.175 s
from ``Popen`` to the child's "ready", 0.006 s from a fork of an interpreter that had imported it), and the crash
tests start about a hundred of them. Forked from the test process they would be no better: it runs other threads
(a follower's watch, a test's workers), and a fork copies their locks in whatever state they are. The forkserver is
a fresh interpreter of its own that imports ``wal`` and forks each child from its one thread (each child checks that
it was the only one). A child is still a separate process, with its own descriptors and files, killed by its own
SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

_CTX = multiprocessing.get_context("forkserver")
# Modules found where ``wal`` is (3.11's forkserver imports its preload before it sets its sys.path: this tests
# directory is not there yet, and a module it cannot import is passed over in silence).
_CTX.set_forkserver_preload(["wal", "wal.walimpls.localfs", "wal.adaptor"])


def _run(out: Any, err: Any, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    out.close()
    err.close()
    # A fork copies the forking thread only: one more in the server (started by an import) would leave its locks,
    # in whatever state they were, to every child.
    threads = len(os.listdir(f"/proc/{os.getppid()}/task"))
    if threads != 1:
        raise RuntimeError(f"forked from a process that runs {threads} threads: unsafe")
    target(*args)


class WarmChild:
    """``target(*args)`` in a forked child whose fd 1 and 2 are pipes to this process (as ``Popen``'s)."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        out_r, out_w = _CTX.Pipe(duplex=False)
        err_r, err_w = _CTX.Pipe(duplex=False)
        self._p = _CTX.Process(target=_run, args=(out_w, err_w, target, args), daemon=True)
        try:
            self._p.start()
        finally:
            out_w.close()  # the child's copies were sent with the start: EOF once it is gone
            err_w.close()
        self._out = out_r
        self._err = err_r
        self.pid = self._p.pid
        self.stdout_fd = out_r.fileno()

    def readline(self, timeout: float) -> bytes:
        """One line of its stdout, byte by byte (a buffered read could take later lines with it); what came
        before EOF or ``timeout``."""
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.stdout_fd], [], [], left)[0]:
                break
            b = os.read(self.stdout_fd, 1)
            if not b:
                break
            line += b
        return line

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]

    def communicate(self) -> tuple[bytes, bytes, int | None]:
        """Its stdout and stderr to EOF (it must end: killed or done), and its exit code (-9 when killed)."""
        out = _drain(self._out.fileno(), self._err.fileno())
        self._p.join()
        self._out.close()
        self._err.close()
        return out[0], out[1], self._p.exitcode


def _drain(fd1: int, fd2: int) -> tuple[bytes, bytes]:
    got = {fd1: bytearray(), fd2: bytearray()}
    open_fds = [fd1, fd2]
    while open_fds:
        for fd in select.select(open_fds, [], [])[0]:
            b = os.read(fd, 65536)
            if b:
                got[fd] += b
            else:
                open_fds.remove(fd)
    return bytes(got[fd1]), bytes(got[fd2])
