"""Fault-injecting ``FileOps`` for the reliability tests (not a test module).

:class:`FaultyFileOps` makes the Nth call of one operation fail (ENOSPC, EIO, a short write followed by an error,
a failed fdatasync...), through the localfs private build option ``_file_ops``, so an injected fault takes the
same path as a real one.

:class:`PowerLossFileOps` records every write made since the last ``fdatasync``/``fsync`` of its file, with the
bytes it overwrote. :meth:`PowerLossFileOps.power_loss` freezes the process's view of the disk (every later call
fails) and rewrites each file as the disk could have it after a power cut: unsynced writes dropped, kept, torn at
a random byte or zero-filled, in any combination. Directory entries (creations, renames, deletions) are durable
by default; with ``dir_entries=True`` those made since the last fsync of their directory are lost too, all but a
random prefix of them in the order they were made (a journaling filesystem such as ext4 commits metadata in order).
:meth:`PowerLossFileOps.cut_before_sync`
cuts the power inside a chosen ``fdatasync`` instead (the flush it was to make durable stays unsynced), and a
``plan`` can replace the random generator to build one exact disk image.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from wal.walimpls.localfs import FileOps

__all__ = ["INJECTED", "Fault", "FaultyFileOps", "PowerLossFileOps"]

# Faults injected by kind over the whole test session (figures for docs/RELIABILITY.md).
INJECTED: Counter[str] = Counter()


@dataclass
class Fault:
    """Fail the ``nth`` call (1-based) of ``op`` and the ``times - 1`` calls after it (``times=0``: all later)."""

    op: str
    err: int = errno.EIO
    nth: int = 1
    times: int = 1
    short: bool = False  # write ops: write half of the data, return that count; the next write on the fd: ENOSPC
    path_contains: str = ""  # only calls on paths containing this (open/rename/mmap/fd ops through their path)
    fired: int = 0

    @property
    def kind(self) -> str:
        return f"{self.op}:{'short' if self.short else errno.errorcode.get(self.err, str(self.err))}"


class FaultyFileOps(FileOps):
    """Counts calls per operation and raises the configured faults."""

    def __init__(self, *faults: Fault) -> None:
        self.faults = list(faults)
        self.calls: Counter[str] = Counter()
        self.fd_paths: dict[int, str] = {}
        self._full_fds: set[int] = set()  # a short write happened here: the disk is full for the next write
        self._lock = threading.Lock()

    def arm(self, fault: Fault) -> Fault:
        """Add a fault counting from the current number of calls (``nth=1`` is the next call)."""
        with self._lock:
            fault.nth += self.calls[fault.op]
            self.faults.append(fault)
        return fault

    def fired(self) -> int:
        return sum(f.fired for f in self.faults)

    def _check(self, op: str, path: str = "") -> Fault | None:
        with self._lock:
            self.calls[op] += 1
            n = self.calls[op]
            for f in self.faults:
                if f.op != op or (f.path_contains and f.path_contains not in path):
                    continue
                if n >= f.nth and (f.times == 0 or f.fired < f.times):
                    f.fired += 1
                    INJECTED[f.kind] += 1
                    return f
        return None

    def _raise(self, f: Fault, what: str) -> None:
        raise OSError(f.err, f"injected {os.strerror(f.err)} in {what}")

    def _disk_full(self, fd: int, what: str) -> None:
        if fd in self._full_fds:
            self._full_fds.discard(fd)
            INJECTED[f"{what}:ENOSPC-after-short"] += 1
            raise OSError(errno.ENOSPC, f"injected {os.strerror(errno.ENOSPC)} in {what} after a short write")

    def _short(self, fd: int) -> None:
        self._full_fds.add(fd)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        f = self._check("open", path)
        if f is not None:
            self._raise(f, f"open({path})")
        fd = super().open(path, flags, mode)
        self.fd_paths[fd] = path
        return fd

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        self._disk_full(fd, "pwrite")
        f = self._check("pwrite", self.fd_paths.get(fd, ""))
        if f is not None:
            if f.short and len(data) > 1:
                self._short(fd)
                return super().pwrite(fd, memoryview(data)[: len(data) // 2], offset)
            self._raise(f, "pwrite")
        return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        self._disk_full(fd, "pwritev")
        f = self._check("pwritev", self.fd_paths.get(fd, ""))
        if f is not None:
            if f.short:
                joined = b"".join(bytes(b) for b in buffers)
                if len(joined) > 1:
                    self._short(fd)
                    return super().pwrite(fd, joined[: len(joined) // 2], offset)
            self._raise(f, "pwritev")
        return super().pwritev(fd, buffers, offset)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        self._disk_full(fd, "write")
        f = self._check("write", self.fd_paths.get(fd, ""))
        if f is not None:
            if f.short and len(data) > 1:
                self._short(fd)
                return super().write(fd, memoryview(data)[: len(data) // 2])
            self._raise(f, "write")
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        f = self._check("fdatasync", self.fd_paths.get(fd, ""))
        if f is not None:
            self._raise(f, "fdatasync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        f = self._check("fsync", self.fd_paths.get(fd, ""))
        if f is not None:
            self._raise(f, "fsync")
        super().fsync(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        f = self._check("fallocate", self.fd_paths.get(fd, ""))
        if f is not None:
            self._raise(f, "fallocate")
        super().fallocate(fd, offset, length)

    def rename(self, src: str, dst: str) -> None:
        f = self._check("rename", src)
        if f is not None:
            self._raise(f, f"rename({src})")
        super().rename(src, dst)

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        f = self._check("mmap", self.fd_paths.get(fd, ""))
        if f is not None:
            self._raise(f, "mmap")
        return super().mmap(fd, length)

    def close(self, fd: int) -> None:
        self.fd_paths.pop(fd, None)
        self._full_fds.discard(fd)
        super().close(fd)


class _Crashed(OSError):
    pass


@dataclass
class _Write:
    offset: int
    data: bytes
    before: bytes  # what the range held (shorter than data when the write extended the file)


@dataclass
class _DirOp:
    """A directory entry changed since its directory was last synced, and how to take the change back."""

    kind: str  # "create", "rename" (``src`` -> ``path``) or "unlink"
    path: str
    src: str = ""
    backup: str | None = None  # a hard link to the file the entry named before (unlink; rename over a file)


class PowerLossFileOps(FileOps):
    """Every write since the last sync of its file is kept so that a power cut can be simulated in-process.

    Writes and syncs are serialised under one lock (fine for tests) so that :meth:`power_loss` sees a quiet disk.
    """

    def __init__(self, rng: random.Random, *, dir_entries: bool = False) -> None:
        self.rng = rng
        self.dir_entries = dir_entries
        self._dir_ops: dict[str, list[_DirOp]] = {}  # directory -> entries changed since its last fsync
        self._dirs: set[int] = set()  # descriptors of directories (their fsync makes their entries durable)
        self._backups: str | None = None
        self.entries_undone = 0
        self._lock = threading.RLock()
        self._paths: dict[int, str] = {}
        self._unsynced: dict[str, list[_Write]] = {}
        self.crashed = False
        self.syncs = 0
        self.dropped = 0
        self.torn = 0
        self.zeroed = 0
        self.kept = 0
        self._cut_in = 0  # > 0: the power goes off when that many more fdatasyncs have been asked for
        self._cut_plan: Callable[[str, int, int], bool] | None = None

    def cut_before_sync(self, n: int = 1, plan: Callable[[str, int, int], bool] | None = None) -> None:
        """Cut the power when the ``n``th next ``fdatasync`` is called, before it syncs anything (so the write it
        was to make durable is still unsynced), with ``plan`` deciding what survives (see :meth:`power_loss`)."""
        with self._lock:
            self._cut_in = n
            self._cut_plan = plan

    def _guard(self) -> None:
        if self.crashed:
            raise _Crashed(errno.EIO, "power is off")

    def _record(self, fd: int, offset: int, data: bytes) -> None:
        path = self._paths.get(fd)
        if path is None or not data:
            return
        try:
            before = os.pread(fd, len(data), offset)
        except OSError:  # a write-only descriptor: read the old bytes through the path
            rfd = os.open(path, os.O_RDONLY)
            try:
                before = os.pread(rfd, len(data), offset)
            finally:
                os.close(rfd)
        self._unsynced.setdefault(path, []).append(_Write(offset, bytes(data), before))

    # -- directory entries (dir_entries=True) ----------------------------------------------------------------------
    def _note_entry(self, op: _DirOp) -> None:
        self._dir_ops.setdefault(os.path.dirname(os.path.normpath(op.path)), []).append(op)

    def _backup(self, path: str) -> str | None:
        """A hard link to the file at ``path`` (outside the log's directories), so a power cut can bring it back."""
        if not os.path.exists(path):
            return None
        if self._backups is None:
            self._backups = tempfile.mkdtemp(prefix="powerloss-entries-")
        dst = os.path.join(self._backups, f"{len(os.listdir(self._backups))}")
        try:
            os.link(path, dst)
        except OSError:  # another filesystem: a copy is as good for a test
            shutil.copy2(path, dst)
        return dst

    def _undo_entries(self) -> None:
        """Take back all but a random prefix of each directory's unsynced entry changes, newest first."""
        rng = self.rng
        for ops in self._dir_ops.values():
            keep = rng.randint(0, len(ops))
            for op in reversed(ops[keep:]):
                self.entries_undone += 1
                if op.kind == "create":
                    if os.path.exists(op.path):
                        os.unlink(op.path)
                    self._unsynced.pop(op.path, None)
                elif op.kind == "rename":
                    if os.path.exists(op.path):
                        os.rename(op.path, op.src)
                        if op.path in self._unsynced:
                            self._unsynced[op.src] = self._unsynced.pop(op.path)
                    if op.backup is not None:
                        os.link(op.backup, op.path)
                elif op.backup is not None and not os.path.exists(op.path):  # unlink
                    os.link(op.backup, op.path)
        self._dir_ops.clear()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        with self._lock:
            self._guard()
            created = self.dir_entries and bool(flags & os.O_CREAT) and not os.path.exists(path)
            fd = super().open(path, flags, mode)
            if created:
                self._note_entry(_DirOp("create", path))
            if flags & os.O_TRUNC:
                self._unsynced.pop(path, None)
            if flags & os.O_DIRECTORY:
                self._dirs.add(fd)
            self._paths[fd] = path
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._guard()
            self._paths.pop(fd, None)
            self._dirs.discard(fd)
            super().close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        with self._lock:
            self._guard()
            self._record(fd, offset, bytes(data))
            return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        with self._lock:
            self._guard()
            pos = offset
            for b in buffers:  # one record per buffer: a power cut may keep any of them
                self._record(fd, pos, bytes(b))
                pos += len(b)
            return super().pwritev(fd, buffers, offset)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        with self._lock:
            self._guard()
            path = self._paths.get(fd)
            if path is not None:
                self._record(fd, os.fstat(fd).st_size, bytes(data))  # O_APPEND files only write at the end
            return super().write(fd, data)

    def _synced(self, fd: int) -> None:
        path = self._paths.get(fd)
        if path is not None:
            self._unsynced.pop(path, None)
        self.syncs += 1

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            if self._cut_in and not self.crashed:
                self._cut_in -= 1
                if not self._cut_in:
                    self.power_loss(self._cut_plan)
            self._guard()
            super().fdatasync(fd)
            self._synced(fd)

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._guard()
            super().fsync(fd)
            self._synced(fd)
            if fd in self._dirs:
                self._dir_ops.pop(os.path.normpath(self._paths[fd]), None)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._guard()
            backup = self._backup(dst) if self.dir_entries else None
            super().rename(src, dst)
            if self.dir_entries:
                self._note_entry(_DirOp("rename", dst, src, backup))
            if src in self._unsynced:
                self._unsynced[dst] = self._unsynced.pop(src)
            else:
                self._unsynced.pop(dst, None)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._guard()
            backup = self._backup(path) if self.dir_entries else None
            super().unlink(path)
            if self.dir_entries:
                self._note_entry(_DirOp("unlink", path, backup=backup))
            self._unsynced.pop(path, None)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            self._guard()
            super().fallocate(fd, offset, length)

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        with self._lock:
            self._guard()
            return super().mmap(fd, length)

    def flock(self, fd: int, operation: int) -> None:
        with self._lock:
            self._guard()
            super().flock(fd, operation)

    def power_loss(self, plan: Callable[[str, int, int], bool] | None = None) -> dict[str, int]:
        """Cut the power: from now on every call fails; each file keeps its synced bytes and, of each unsynced
        write, all, none, a torn prefix, or zeros. Every descriptor this object opened is closed (locks released),
        so the same process can reopen the channel as if it had rebooted.

        ``plan(path, i, n)``, when given, decides instead of the random generator: unsynced write ``i`` of the
        ``n`` of ``path`` (in the order they were made; a ``pwritev`` is one write per buffer, i.e. per record)
        survives whole when it returns True, else it is lost."""
        with self._lock:
            self.crashed = True
            rng = self.rng
            if self.dir_entries:
                self._undo_entries()
            for path, writes in self._unsynced.items():
                if not os.path.exists(path):
                    continue
                fd = os.open(path, os.O_RDWR)
                try:
                    for w in reversed(writes):  # back to the last synced image
                        os.pwrite(fd, w.before + bytes(len(w.data) - len(w.before)), w.offset)
                    if plan is not None:
                        for i, w in enumerate(writes):
                            if plan(path, i, len(writes)):
                                os.pwrite(fd, w.data, w.offset)
                                self.kept += 1
                            else:
                                self.dropped += 1
                        continue
                    mode = rng.choice(("prefix", "any"))
                    cut = rng.randint(0, len(writes))
                    for i, w in enumerate(writes):
                        keep = i < cut if mode == "prefix" else rng.random() < 0.5
                        torn = (mode == "prefix" and i == cut) or (mode == "any" and rng.random() < 0.2)
                        if keep:
                            os.pwrite(fd, w.data, w.offset)
                            self.kept += 1
                        elif torn:
                            n = rng.randint(0, len(w.data))
                            if rng.random() < 0.3:
                                os.pwrite(fd, bytes(n), w.offset)
                                self.zeroed += 1
                            else:
                                os.pwrite(fd, w.data[:n], w.offset)
                                self.torn += 1
                        else:
                            self.dropped += 1
                finally:
                    os.close(fd)
            self._unsynced.clear()
            self._drop_fds()
            if self._backups is not None:
                shutil.rmtree(self._backups, ignore_errors=True)
                self._backups = None
            return {"kept": self.kept, "dropped": self.dropped, "torn": self.torn, "zeroed": self.zeroed}

    def process_crash(self) -> None:
        """SIGKILL without a dead process: every written byte stays (the page cache survives), every later call
        fails, every descriptor (and so the write lock) is released."""
        with self._lock:
            self.crashed = True
            self._unsynced.clear()
            self._dir_ops.clear()
            self._drop_fds()

    def _drop_fds(self) -> None:
        for fd in list(self._paths):
            try:
                os.close(fd)
            except OSError:
                pass
        self._paths.clear()
