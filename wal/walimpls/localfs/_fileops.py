"""Every operating-system file call the backend makes, in one replaceable object.

Fault-injection tests pass a subclass through the private build option ``_file_ops`` and make any call fail
(ENOSPC from ``fallocate``, EIO from ``fdatasync``...). Nothing in the backend (opener, writer, recovery,
scanners) calls ``os`` file functions directly, so an injected fault always takes the same path as a real one.
The tools in ``tools.py`` open and read files through :data:`DEFAULT_FILE_OPS` too (so they refuse what is not a
regular file); only their directory listings and sizes call ``os`` directly.

How failures surface: any ``OSError`` while appending, rolling or syncing becomes
:class:`~wal.errors.WALIOError` for every append not yet acknowledged, and the WAL closes itself (a failed
``fdatasync`` is never retried: the kernel may have dropped the dirty pages). Reopening recovers.

Every file it opens must be a regular file (:class:`NotRegularFileError` otherwise), and opening never waits: a
FIFO planted under a segment's, an index's, ``TERM``'s or ``LOCK``'s name made a reader's open block for good.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import threading
import time

from ..._metrics import metrics

__all__ = ["DEFAULT_FILE_OPS", "FileOps", "NotRegularFileError", "limit_hint"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_IOV_MAX = 1024


class NotRegularFileError(OSError):
    """A file the backend opened is a FIFO, a device, a socket or a directory, not the regular file its name says."""


def limit_hint(e: BaseException) -> str:
    """What to do, for an error that is a limit of the process or the system rather than the disk (else "").

    Why: a process with hundreds of channels open reaches these limits, and ``[Errno 24] Too many open files``
    alone does not say which limit, what uses it, or that the disk is fine."""
    n = getattr(e, "errno", None)
    if n == errno.EMFILE:
        return (" (this process has no file descriptor left: raise its limit, `ulimit -n` or systemd's LimitNOFILE=, "
                "or open fewer channels; a writer holds 4, a read-only WAL 1, and each segment a reader maps 1 more)")
    if n == errno.ENFILE:
        return " (the system has no file descriptor left: raise fs.file-max, or close files)"
    if n == errno.ENOMEM:
        return (" (no memory for a new map: the process may be at vm.max_map_count, where each segment a reader "
                "maps is one map, or at its memory limit)")
    return ""


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


class FileOps:
    """Thin wrappers over ``os``/``fcntl``/``mmap``; one method per operation."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """``os.open``; anything but a directory opened with ``O_DIRECTORY`` must be a regular file: else
        :class:`NotRegularFileError`, at once (opened with ``O_NONBLOCK``, so a FIFO is not waited on)."""
        if flags & os.O_DIRECTORY:
            return os.open(path, flags | _CLOEXEC, mode)
        fd = os.open(path, flags | _CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, mode)
        try:
            kind = os.fstat(fd).st_mode
            if not stat.S_ISREG(kind):
                raise NotRegularFileError(errno.EINVAL, f"{_kind(kind)}, not a regular file", path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        return os.pwritev(fd, buffers, offset)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        return os.write(fd, data)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def fdatasync(self, fd: int) -> None:
        if metrics.enabled:
            t = time.perf_counter()
            os.fdatasync(fd)
            metrics.fsync_seconds.observe(time.perf_counter() - t)
        else:
            os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fstat_size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def fstat_links(self, fd: int) -> int:
        """How many names an open file has: 0 once it was deleted."""
        return os.fstat(fd).st_nlink

    def stat_size(self, path: str) -> int:
        return os.stat(path).st_size

    def identity(self, path: str) -> tuple[int, int]:
        """(st_dev, st_ino) of ``path`` itself, a symbolic link not followed: which file or directory it names now."""
        st = os.stat(path, follow_symlinks=False)
        return st.st_dev, st.st_ino

    def fidentity(self, fd: int) -> tuple[int, int]:
        """(st_dev, st_ino) of an open file: while it is open, no other file can have it."""
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        os.mkdir(path, mode)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def list_files(self, path: str) -> list[str]:
        """Names in ``path`` that are not symbolic links; the kind comes from readdir, so no stat per entry."""
        with os.scandir(path) as it:
            return [e.name for e in it if not e.is_symlink()]

    def flock(self, fd: int, operation: int) -> None:
        fcntl.flock(fd, operation)

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        """A read-only map; the backend never writes through a map (inotify would not see it)."""
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)

    def fsync_dir(self, path: str) -> None:
        """Make a created, renamed or deleted directory entry durable."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    # -- compound helpers built only from the methods above (so an override of one op covers them) -------------------
    def pwrite_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.pwrite(fd, view, offset)
            if n <= 0:
                raise OSError(f"pwrite wrote {n} bytes")
            view = view[n:]
            offset += n

    def pwritev_all(
        self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int, total: int | None = None
    ) -> None:
        """Write ``buffers`` back to back at ``offset`` in as few system calls as the kernel allows: one, unless
        there are more than ``IOV_MAX`` buffers (every append's path, so the usual case copies no list).
        ``total``: their length when the caller knows it already."""
        for i in range(0, len(buffers), _IOV_MAX):
            if len(buffers) <= _IOV_MAX:
                chunk = buffers
                want = sum(map(len, chunk)) if total is None else total
            else:
                chunk = buffers[i : i + _IOV_MAX]
                want = sum(map(len, chunk))
            n = self.pwritev(fd, chunk, offset)
            if n != want:  # short write: finish this chunk byte-wise
                self.pwrite_all(fd, b"".join(chunk)[n:], offset + n)
            offset += want

    def write_all(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            if n <= 0:
                raise OSError(f"write wrote {n} bytes")
            view = view[n:]

    def read_file(self, path: str) -> bytes:
        fd = self.open(path, os.O_RDONLY)
        try:
            size = self.fstat_size(fd)
            chunks = []
            off = 0
            while off < size:
                b = self.pread(fd, size - off, off)
                if not b:
                    break
                chunks.append(b)
                off += len(b)
            return b"".join(chunks)
        finally:
            self.close(fd)

    def write_file_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``path`` via a temporary file and a rename, so a reader sees the old or the new content.

        The temporary name is the caller's own (process and thread): two threads rebuilding the same index shared
        ``<path>.tmp``, truncated each other's file and renamed it from under each other. Recovery deletes every
        ``*.tmp`` a crash leaves."""
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.write_all(fd, data)
            if durable:
                self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(tmp, path)
        if durable:
            self.fsync_dir(os.path.dirname(path) or ".")


DEFAULT_FILE_OPS = FileOps()
