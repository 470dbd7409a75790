"""Fault injection on localfs (bare backend and full WAL): every injected fault reaches the appender as a
WALError, the WAL closes (or recovers), nothing acknowledged is lost and nothing half-written is delivered after
reopening. A failed fdatasync is never followed by an acknowledged append on the same WAL."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from _faults import INJECTED, Fault, FaultyFileOps
from _localfs_util import build, msg, open_rw, read_all

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import ShutdownError, WALError, WALIOError, WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy

pytestmark = pytest.mark.timeout(60)

SEG = 4096


@pytest.fixture(scope="module", autouse=True)
def _report_injected() -> Any:
    yield
    print("\nfaults injected by kind:", dict(sorted(INJECTED.items())), "total", sum(INJECTED.values()))

# (name, fault, what arms it). Each fault is armed after a healthy warm-up, then appends run until one fails.
FAULTS: list[tuple[str, Fault]] = [
    ("pwritev-ENOSPC", Fault("pwritev", errno.ENOSPC)),
    ("pwritev-EIO", Fault("pwritev", errno.EIO)),
    ("pwritev-short-then-ENOSPC", Fault("pwritev", short=True)),  # the byte-wise completion gets ENOSPC
    ("fdatasync-EIO", Fault("fdatasync", errno.EIO)),
    ("fdatasync-EIO-later", Fault("fdatasync", errno.EIO, nth=7)),
    ("index-write-EIO", Fault("write", errno.EIO, path_contains=".idx")),
    ("index-write-short-then-ENOSPC", Fault("write", short=True, path_contains=".idx")),
    ("fallocate-ENOSPC", Fault("fallocate", errno.ENOSPC)),  # the next segment cannot be preallocated
    ("rename-EIO", Fault("rename", errno.EIO)),  # the next segment cannot get its name
    ("open-EMFILE", Fault("open", errno.EMFILE)),  # no descriptor for the next segment
    ("fsync-EIO", Fault("fsync", errno.EIO)),  # the next segment's header/directory sync fails
]


def _payload(i: int) -> bytes:
    return f"msg-{i:06d}|".encode() + bytes([i % 251]) * (40 + (i * 37) % 700)


class _Appender:
    """Appends from ``threads`` threads until one fails; records what was acknowledged and what failed."""

    def __init__(self, append: Any, threads: int, start: int) -> None:
        self.append = append
        self.lock = threading.Lock()
        self.acked: dict[bytes, int] = {}  # payload -> id value
        self.attempted: set[bytes] = set()
        self.errors: list[BaseException] = []
        self.next = start
        self.stop = threading.Event()
        self.threads = threads

    def _one(self) -> bool:
        with self.lock:
            i = self.next
            self.next += 1
        p = _payload(i)
        with self.lock:
            self.attempted.add(p)
        try:
            mid = self.append(p)
        except Exception as e:
            with self.lock:
                self.errors.append(e)
            self.stop.set()
            return False
        with self.lock:
            self.acked[p] = mid
        return True

    def run(self, limit: int = 400) -> None:
        def loop() -> None:
            n = 0
            while not self.stop.is_set() and n < limit:
                if not self._one():
                    return
                n += 1

        ts = [threading.Thread(target=loop) for _ in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
            assert not t.is_alive(), "an appender hung after a fault"


def _check_recovered(delivered: list[tuple[int, bytes]], app: _Appender, what: str) -> None:
    ids = [i for i, _ in delivered]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"{what}: IDs out of order or duplicated"
    by_payload = {p: i for i, p in delivered}
    for p, mid in app.acked.items():
        assert p in by_payload, f"{what}: acknowledged message {mid} ({p[:12]!r}) lost"
        assert by_payload[p] == mid, f"{what}: acknowledged message moved from ID {mid} to {by_payload[p]}"
    for _i, p in delivered:
        assert p in app.attempted, f"{what}: delivered bytes nobody appended (half-written?): {p[:40]!r}"


def _arm(fops: FaultyFileOps, fault: Fault) -> Fault:
    return fops.arm(Fault(fault.op, fault.err, fault.nth, fault.times, fault.short, fault.path_contains))


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize(("name", "fault"), FAULTS, ids=[n for n, _ in FAULTS])
def test_backend_fault_surfaces_and_loses_nothing(tmp_path: Path, name: str, fault: Fault, threads: int) -> None:
    fops = FaultyFileOps()
    opener = build(tmp_path, segment_bytes=SEG, _file_ops=fops)
    w = open_rw(opener, "p1", 1)
    tt = iter(range(1, 1 << 30))
    tt_lock = threading.Lock()

    def append(p: bytes) -> int:
        with tt_lock:
            t = next(tt)
        return int(w.append(msg(p, tt=t, vchannel="v1")).value)

    warm = _Appender(append, 1, 0)
    warm.run(limit=20)
    assert not warm.errors
    armed = _arm(fops, fault)
    app = _Appender(append, threads, 10_000)
    app.acked.update(warm.acked)
    app.attempted |= warm.attempted
    app.run()
    assert armed.fired >= 1, f"{name}: the fault was never reached"
    assert app.errors, f"{name}: the fault was swallowed (every append succeeded)"
    for e in app.errors:
        assert isinstance(e, WALError), f"{name}: {type(e).__name__} is not a WALError: {e}"
    assert any(isinstance(e, WALIOError) for e in app.errors) or all(
        isinstance(e, ShutdownError) and "I/O error" in str(e) for e in app.errors
    ), f"{name}: no appender was told about the I/O error: {app.errors!r}"
    # The WAL is closed for good after an I/O error: no later append can be acknowledged on it (fsyncgate).
    with pytest.raises(WALError):
        w.append(msg(b"after-fault", tt=next(tt)))
    w.close()
    opener.close()

    opener = build(tmp_path, segment_bytes=SEG)
    try:
        w = open_rw(opener, "p1", 2)
        delivered = [(int(m.message_id.value), bytes(m.payload)) for m in read_all(w, idle=0.1)]  # type: ignore
        _check_recovered(delivered, app, name)
        assert len(app.acked) >= 20
        nxt = w.append(msg(b"after-reopen", tt=1 << 31))  # the recovered WAL takes appends again
        assert int(nxt.value) == (delivered[-1][0] + 1 if delivered else 1)  # type: ignore[attr-defined]
        w.close()
    finally:
        opener.close()


def test_fdatasync_failure_is_never_retried_as_success(tmp_path: Path) -> None:
    """fsyncgate: after a failed fdatasync, the writer must not call fdatasync again on the same descriptor and
    then acknowledge (the retry would "succeed" with the dirty pages dropped)."""

    class Watch(FaultyFileOps):
        def __init__(self) -> None:
            super().__init__()
            self.failed_fds: set[int] = set()
            self.retried = 0

        def fdatasync(self, fd: int) -> None:
            if fd in self.failed_fds:
                self.retried += 1
            try:
                super().fdatasync(fd)
            except OSError:
                self.failed_fds.add(fd)
                raise

    fops = Watch()
    opener = build(tmp_path, segment_bytes=SEG, _file_ops=fops)
    w = open_rw(opener)
    for i in range(5):
        w.append(msg(_payload(i), tt=i + 1))
    fops.arm(Fault("fdatasync", errno.EIO))
    with pytest.raises(WALIOError):
        w.append(msg(_payload(5), tt=6))
    for i in range(3):
        with pytest.raises(WALError):
            w.append(msg(_payload(6 + i), tt=7 + i))
    w.close()
    opener.close()
    assert fops.retried == 0, "fdatasync was called again on a descriptor whose fdatasync failed"


def test_open_faults_surface_as_walerror_and_retry_works(tmp_path: Path) -> None:
    """Faults while opening (lock file, term, recovery reads) are WALErrors; nothing is held, a retry opens."""
    opener = build(tmp_path, segment_bytes=SEG)
    w = open_rw(opener)
    for i in range(30):
        w.append(msg(_payload(i), tt=i + 1))
    w.close()
    opener.close()
    kinds = [Fault("open", errno.EMFILE, nth=n) for n in (1, 2, 3, 4, 5, 6)] + [
        Fault("mmap", errno.ENOMEM), Fault("rename", errno.EIO), Fault("fsync", errno.EIO),
        Fault("fdatasync", errno.EIO), Fault("write", errno.ENOSPC),
    ]
    surfaced = 0
    for term, f in enumerate(kinds, start=2):
        fops = FaultyFileOps(f)
        opener = build(tmp_path, segment_bytes=SEG, _file_ops=fops)
        try:
            try:
                w = open_rw(opener, "p1", term)
            except Exception as e:
                assert isinstance(e, WALError), f"{f.kind}: opening raised {type(e).__name__}: {e}"
                surfaced += 1
            else:
                assert f.fired == 0, f"{f.kind}: the fault fired but opening succeeded silently"
                w.close()
        finally:
            opener.close()
        opener = build(tmp_path, segment_bytes=SEG)
        try:
            w = open_rw(opener, "p1", 100 + term)
            got = [bytes(m.payload) for m in read_all(w, idle=0.05)]
            assert got[:30] == [_payload(i) for i in range(30)]
            w.close()
        finally:
            opener.close()
    assert surfaced >= 5


def test_lock_file_open_fault_is_walerror(tmp_path: Path) -> None:
    opener = build(tmp_path, _file_ops=FaultyFileOps(Fault("open", errno.EMFILE, path_contains="LOCK")))
    try:
        with pytest.raises(WALError):
            open_rw(opener)
    finally:
        opener.close()


def test_scanner_mmap_fault_is_walioerror_and_retry_delivers_everything(tmp_path: Path) -> None:
    fops = FaultyFileOps()
    opener = build(tmp_path, segment_bytes=SEG, _file_ops=fops)
    w = open_rw(opener)
    want = [_payload(i) for i in range(60)]
    for i, p in enumerate(want):
        w.append(msg(p, tt=i + 1))
    from wal.walimpls import ReadOption as ImplsReadOption

    s = w.read(ImplsReadOption(name="s", deliver_policy=DeliverPolicy.all()))
    f = fops.arm(Fault("mmap", errno.ENOMEM))
    got: list[bytes] = []
    errors = 0
    while len(got) < len(want):
        try:
            got.extend(bytes(m.payload) for m in s.recv_batch(7, 1.0))
        except WALIOError:
            errors += 1
            assert errors < 5
    assert f.fired == 1 and errors == 1
    assert got == want
    s.close()
    w.close()
    opener.close()


# -- the full WAL (adaptor + interceptors) over a faulty localfs ------------------------------------------------------
FULL_FAULTS = [
    ("pwritev-ENOSPC", Fault("pwritev", errno.ENOSPC)),
    ("pwritev-short-then-ENOSPC", Fault("pwritev", short=True)),
    ("fdatasync-EIO", Fault("fdatasync", errno.EIO)),
    ("fallocate-ENOSPC", Fault("fallocate", errno.ENOSPC)),
    ("index-write-EIO", Fault("write", errno.EIO, path_contains=".idx")),
    ("rename-EIO", Fault("rename", errno.EIO)),
]


def _full(root: Path, fops: FaultyFileOps | None = None) -> Any:
    opts: dict[str, Any] = {"root": str(root), "segment_bytes": SEG, "time_tick_interval": 30.0}
    if fops is not None:
        opts["_file_ops"] = fops
    return registry.must_get_builder("localfs").build(**opts)


def _user_messages(w: Any, idle: float = 0.2) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
        while True:
            try:
                m = s.recv(timeout=idle)
            except (WALTimeoutError, TimeoutError):
                return out
            if m.message_type is MessageType.INSERT:
                out.append((int(m.message_id.value), bytes(m.payload)))


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize(("name", "fault"), FULL_FAULTS, ids=[n for n, _ in FULL_FAULTS])
def test_full_wal_fault_surfaces_and_loses_nothing(tmp_path: Path, name: str, fault: Fault, use_async: bool) -> None:
    fops = FaultyFileOps()
    opener = _full(tmp_path, fops)
    w = opener.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))

    def append(p: bytes) -> int:
        m = MutableMessage(MessageType.INSERT, p, {"k": "v"}, "v1")
        r = w.append_async(m).result(timeout=20) if use_async else w.append(m, timeout=20)
        return int(r.message_id.value)

    warm = _Appender(append, 1, 0)
    warm.run(limit=20)
    assert not warm.errors, warm.errors
    reader = w.read(ReadOption())  # open before the fault: it must end loudly, not wait for ever
    armed = _arm(fops, fault)
    app = _Appender(append, 3, 10_000)
    app.acked.update(warm.acked)
    app.attempted |= warm.attempted
    app.run()
    assert armed.fired >= 1, f"{name}: the fault was never reached"
    assert app.errors, f"{name}: the fault was swallowed (every append succeeded)"
    for e in app.errors:
        assert isinstance(e, WALError), f"{name}: {type(e).__name__} is not a WALError: {e!r}"
    with pytest.raises(WALError):
        w.append(MutableMessage(MessageType.INSERT, b"after-fault", None, "v1"), timeout=5)
    # The backend closed itself: the WAL says so (it said available while every append failed) and its readers
    # end with the error (they waited for ever).
    assert not w.is_available() and w.available().is_set(), name
    ended: BaseException | None = None
    while ended is None:
        try:
            reader.recv(timeout=10)  # what it had, then the error; a timeout (nothing more, no error) fails
        except WALTimeoutError:
            raise AssertionError(f"{name}: the reader neither got more nor ended") from None
        except WALError as e:
            ended = e
    assert reader.done().is_set() and reader.error() is not None, name
    w.close()
    opener.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("wal-localfs-sync")]

    opener = _full(tmp_path)
    try:
        w = opener.open(OpenOption(channel=PChannelInfo(name="p1", term=2)))
        _check_recovered(_user_messages(w), app, name)
        w.append(MutableMessage(MessageType.INSERT, b"after-reopen", None, "v1"), timeout=5)
        w.close()
    finally:
        opener.close()


def test_files_left_after_faults_are_owner_only(tmp_path: Path) -> None:
    """A fault in the middle of a roll leaves no world-readable file behind (temporary files included)."""
    fops = FaultyFileOps()
    opener = build(tmp_path, segment_bytes=SEG, _file_ops=fops)
    w = open_rw(opener)
    fops.arm(Fault("rename", errno.EIO, nth=2))
    with pytest.raises(WALError):
        for i in range(200):
            w.append(msg(_payload(i), tt=i + 1))
    w.close()
    opener.close()
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for d in dirnames:
            assert os.stat(os.path.join(dirpath, d)).st_mode & 0o077 == 0
        for f in filenames:
            assert os.stat(os.path.join(dirpath, f)).st_mode & 0o077 == 0, f
