"""What a long-lived localfs writer holds (maps, descriptors, caches), through the full adaptor.

Each test counts a resource after a run that used to make it grow with the log or with the number of vchannels.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import WALError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.walimpls import ReadOption as ImplsReadOption


def _channel_maps(chdir: Path) -> int:
    """Maps of the channel's files in this process (each ``mmap`` also keeps a file descriptor)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if str(chdir) + "/" in line)


def _open_fds(chdir: Path) -> int:
    n = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()).startswith(str(chdir) + "/"):
                n += 1
        except OSError:
            pass
    return n


@pytest.mark.parametrize("vchannel", [None, "rare"])
def test_a_writers_scanner_keeps_no_map_of_segments_it_has_read_past(tmp_path: Path, vchannel: str | None) -> None:
    """A scanner of the writer's own WAL left every sealed segment it read (or skipped by its vchannel filter)
    mapped, each map with its descriptor, until retention deleted the file: without retention, one descriptor per
    segment of the log for the writer's life (and after its close while the WAL object was referenced), so catching
    up with a log of 1,000 segments ran the process out of descriptors at the common limit of 1,024."""
    op = registry.must_get_builder("localfs").build(
        root=str(tmp_path), segment_bytes=16 << 10, sync="never", write_ahead_buffer_bytes=4096
    )
    chdir = tmp_path / "p1"
    w = op.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
    w.append(MutableMessage(MessageType.INSERT, b"r", vchannel="rare"))
    for _ in range(30):  # 30 segments
        w.append_messages([MutableMessage(MessageType.INSERT, b"x" * 500, vchannel="v1") for _ in range(30)])
    w.append(MutableMessage(MessageType.INSERT, b"r", vchannel="rare"))
    assert sum(1 for p in chdir.iterdir() if p.suffix == ".seg") >= 20
    # A tiny write-ahead buffer: the scanner reads the segments, as a reader far behind does.
    with w.read(ReadOption(deliver_policy=DeliverPolicy.all(), vchannel=vchannel)) as s:
        got = 0
        while got < 2:
            m = s.recv(timeout=10)
            if m.message_type is MessageType.INSERT and bytes(m.payload) == b"r":
                got += 1
        assert _channel_maps(chdir) <= 3
        assert _open_fds(chdir) <= 5  # LOCK, the active segment and its index, a map or two
    w.close()
    assert _channel_maps(chdir) == 0  # a closed WAL holds nothing, even while the object is still referenced
    assert _open_fds(chdir) == 0
    op.close()


def test_the_writers_vchannel_cache_stays_bounded_under_many_vchannels(tmp_path: Path) -> None:
    """The writer kept the bloom filter positions of every vchannel it had ever written, for its whole life: a
    long-lived writer whose vchannels come and go (one per collection, as in Milvus) grew by about 180 bytes per
    vchannel it had ever seen (50,000 vchannels: 9 MB) although only the current segment's need the filter."""
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=256 << 10, sync="never")
    with op, op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        for b in range(40):
            w.append_messages(
                [MutableMessage(MessageType.INSERT, b"x", vchannel=f"dml_{b}_{i}v0") for i in range(500)]
            )
        impls = w._impls
        assert len(impls._bloom_cache) <= 5000  # 20,000 vchannels written


def test_an_open_that_rebuilds_sealed_indexes_keeps_no_map_of_them(tmp_path: Path) -> None:
    """An open that rebuilt the missing indexes of sealed segments (a log copied without them, a repair) kept each
    segment mapped, with its descriptor, for the writer's life: with the indexes of 1,000 segments missing the open
    itself ran out of descriptors at the common limit of 1,024."""
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=16 << 10, sync="never")
    chdir = tmp_path / "p1"
    with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        for _ in range(30):  # 30 segments
            w.append_messages([MutableMessage(MessageType.INSERT, b"x" * 500, vchannel="v1") for _ in range(30)])
    for p in chdir.glob("*.idx"):
        p.unlink()
    with op, op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        assert len(list(chdir.glob("*.idx"))) >= 20  # rebuilt
        assert _channel_maps(chdir) <= 2
        assert _open_fds(chdir) <= 5
        with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:  # still readable, from the start
            m = s.recv(timeout=10)
            while m.message_type is not MessageType.INSERT:
                m = s.recv(timeout=10)
            assert bytes(m.payload) == b"x" * 500


def test_the_opener_forgets_channels_no_wal_has_open(tmp_path: Path) -> None:
    """The opener kept its per-channel state (a hub: lock, condition, about 1.7 KB) for every channel name it had ever
    opened, closed or failed: a long-lived opener of short-lived channels grew with every new name."""
    from wal.errors import FencedError

    # Small segments: at the default 64 MiB, preallocated, its 200 channels took 13 GB of the test machine's disk.
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), sync="never", segment_bytes=1 << 16)
    with op:
        impls = op._impls
        with op.open(OpenOption(channel=PChannelInfo(name="kept", term=2))) as kept:
            for i in range(200):
                with op.open(OpenOption(channel=PChannelInfo(name=f"tmp-{i}", term=1))) as w:
                    w.append(MutableMessage(MessageType.INSERT, b"x"))
                ro = op.open(OpenOption(channel=PChannelInfo(name=f"tmp-{i}", term=1, access_mode=AccessMode.RO)))
                ro.close()
            op.open(OpenOption(channel=PChannelInfo(name="fenced", term=2))).close()
            with pytest.raises(FencedError):  # a failed open
                op.open(OpenOption(channel=PChannelInfo(name="fenced", term=1)))
            assert len(impls._hubs) <= 2
            # A follower and the writer of one channel in one opener still share theirs: it wakes on each append.
            ro = op.open(OpenOption(channel=PChannelInfo(name="kept", term=2, access_mode=AccessMode.RO)))
            with ro, ro.read(ReadOption(deliver_policy=DeliverPolicy.latest())) as s:
                assert impls._hubs["kept"] is kept._impls._hub is ro._impls._hub
                kept.append(MutableMessage(MessageType.INSERT, b"y"))
                m = s.recv(timeout=10)
                while m.message_type is not MessageType.INSERT:
                    m = s.recv(timeout=10)
                assert bytes(m.payload) == b"y"
        assert len(impls._hubs) == 0


@pytest.mark.parametrize("mode", [AccessMode.RO, AccessMode.RW], ids=["ro", "rw"])
def test_a_closed_scanner_keeps_no_map_without_a_garbage_collection(tmp_path: Path, mode: AccessMode) -> None:
    """A follower's reader and its segments referred to each other, so ``close()`` freed the segment it was in (its
    map and the map's descriptor) only at the next collection of cycles, which a long-lived process with a large
    heap runs rarely: until then a segment that retention deleted kept its disk space (a scanner closed while
    still referenced, or one collected, pinned it). Collections are off here, as between two full ones."""
    op = registry.must_get_builder("localfs").build(
        root=str(tmp_path), segment_bytes=16 << 10, sync="never", write_ahead_buffer_bytes=4096
    )
    chdir = tmp_path / "p1"
    w = op.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
    for _ in range(4):  # a few sealed segments, then the active one
        w.append_messages([MutableMessage(MessageType.INSERT, b"x" * 500, vchannel="v1") for _ in range(30)])
    r = w if mode is AccessMode.RW else op.open(OpenOption(channel=PChannelInfo(name="p1", term=1, access_mode=mode)))
    gc.collect()
    gc.disable()
    try:
        held = []
        for _ in range(3):
            s = r.read(ReadOption(deliver_policy=DeliverPolicy.all()))
            for _ in range(40):  # into the second segment, which is sealed
                s.recv(timeout=10)
            assert _channel_maps(chdir) >= 1
            s.close()
            held.append(s)  # a closed scanner still referenced, as a consumer object keeps it
        base = 1 if mode is AccessMode.RW else 0  # the writer maps its active segment
        assert _channel_maps(chdir) <= base
        del held, s
        assert _channel_maps(chdir) <= base
    finally:
        gc.enable()
    if r is not w:
        r.close()
    w.close()
    op.close()


def test_the_writer_keeps_no_index_of_sealed_segments_in_memory(tmp_path: Path) -> None:
    """The writer kept the sparse index (an entry per 4 KiB: id, time tick, position) of every segment it had sealed,
    and of every sealed segment a reader had sought in, for its whole life, although each is on disk in its
    ``.idx`` file: RAM of about 5 % of the log it kept (a 100 GB log without retention: 5 GB). A sealed segment's
    index is read from its file when a reader seeks in it, and kept by that reader only."""
    op = registry.must_get_builder("localfs").build(
        root=str(tmp_path), segment_bytes=64 << 10, sync="never", write_ahead_buffer_bytes=4096
    )
    with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        ids = []
        for _ in range(40):  # 40 segments of ~15 index entries
            rs = w.append_messages([MutableMessage(MessageType.INSERT, b"x" * 200, vchannel="v1") for _ in range(300)])
            ids.append(rs[150].message_id)
        log = w._impls._log
        assert len(log.segments) >= 30
        per_segment = (64 << 10) // 4096

        def held() -> int:
            return sum(len(s.index) for s in log.segments)

        assert held() <= 2 * per_segment  # the active segment's
        for mid in ids[::4]:  # seek into sealed segments, then read on
            with w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(mid))) as s:
                m = s.recv(timeout=10)
                assert m.message_id == mid  # the seek still finds it
                for _ in range(400):
                    s.recv(timeout=10)
        assert held() <= 2 * per_segment
    with op, op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:  # and after a reopen
        with w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(ids[3]))) as s:
            assert s.recv(timeout=10).message_id == ids[3]
        assert sum(len(s.index) for s in w._impls._log.segments) <= 2 * per_segment


def test_an_open_that_cannot_start_its_sync_thread_leaves_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``sync="interval"``, an open whose sync thread could not start (a process at its thread limit:
    ``RuntimeError: can't start new thread``) raised but kept the active segment's and its index's descriptors open
    for good: each failed open leaked two, until the process ran out of them. Its segments also stayed counted in the
    ``wal_segments`` gauge (as after a failed recovery): each failed open added the channel's segments for good."""
    import threading

    from wal._metrics import metrics

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, sync="interval")
    chdir = tmp_path / "p1"
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("wal-localfs-sync-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    def gauge() -> float:
        reg = metrics.registry
        return (reg.get_sample_value("wal_segments") or 0.0) if reg is not None else 0.0

    with op:
        kept = gauge()
        monkeypatch.setattr(threading.Thread, "start", start)
        for _ in range(5):
            with pytest.raises(WALError, match="thread limit"):  # a bare RuntimeError before session 17
                op.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
        assert _open_fds(chdir) == 0
        assert gauge() == kept  # 5 more before
        monkeypatch.undo()
        with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:  # and the channel still opens
            w.append(MutableMessage(MessageType.INSERT, b"x"))


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_at_the_thread_limit_opens_and_reads_raise_a_wal_error_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
) -> None:
    """Review 17b (many channels in one process): each open writer has a thread (two with ``sync="interval"``), so a
    process with hundreds of channels can reach its thread limit. The open then raised a bare ``RuntimeError: can't
    start new thread`` (every error of the library is a ``WALError``), and so did ``async for`` on a scanner (its
    worker thread) and the first read-only open or read of the process (the reaper's thread). Now: a ``WALError``
    that names the limit, nothing half open (no descriptor, the channel's lock free), the other channels unharmed;
    the reaper, one per process, is started at a later call instead."""
    import asyncio
    import threading

    from wal.adaptor import _reaper

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), sync=sync, segment_bytes=1 << 20)
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name.startswith("wal-"):  # the library's threads (watchdog's keep theirs: it falls back to polling)
            raise RuntimeError("can't start new thread")
        real_start(self)

    with op:
        good = op.open(OpenOption(channel=PChannelInfo(name="good", term=1)))
        good.append(MutableMessage(MessageType.INSERT, b"g1"))
        s = good.read(ReadOption(deliver_policy=DeliverPolicy.all()))
        monkeypatch.setattr(_reaper, "_thread", None)  # as in a process that has not started it yet
        limit = pytest.MonkeyPatch()
        limit.setattr(threading.Thread, "start", start)
        for _ in range(3):
            with pytest.raises(WALError, match="thread limit"):
                op.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
        assert _open_fds(tmp_path / "p1") == 0

        async def first() -> object:
            async for m in s:
                return m
            return None

        with pytest.raises(WALError, match="thread limit"):
            asyncio.run(first())
        ro = op.open(OpenOption(channel=PChannelInfo(name="good", access_mode=AccessMode.RO)))
        with ro.read(ReadOption(deliver_policy=DeliverPolicy.all())) as rs:
            assert rs.recv(timeout=10).message_type is MessageType.TIME_TICK
        limit.undo()
        assert _reaper._thread is None
        assert good.append(MutableMessage(MessageType.INSERT, b"g2")).message_id is not None
        assert asyncio.run(first()) is not None  # the same scanner, once threads start again
        with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:  # its lock was left free
            w.append(MutableMessage(MessageType.INSERT, b"x"))
        ro.close()
        s.close()
        with good.read(ReadOption(deliver_policy=DeliverPolicy.all())):
            assert _reaper._thread is not None and _reaper._thread.is_alive()  # started by a later call


_AT_THE_FD_LIMIT = """
import os, resource, sys
from wal import OpenOption, PChannelInfo, registry
from wal.errors import WALIOError
from wal.message import MessageType, MutableMessage

def fds():  # without a descriptor of its own (listing /proc/self/fd needs one)
    n = 0
    for fd in range(1024):
        try:
            os.fstat(fd)
            n += 1
        except OSError:
            pass
    return n

op = registry.must_get_builder("localfs").build(root=sys.argv[1], segment_bytes=64 << 10)
ws = [op.open(OpenOption(channel=PChannelInfo(name=f"c{i}", term=1))) for i in range(3)]
resource.setrlimit(resource.RLIMIT_NOFILE, (fds() + 6, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
failed = None
for i in range(3, 20):
    before = fds()
    try:
        ws.append(op.open(OpenOption(channel=PChannelInfo(name=f"c{i}", term=1))))
    except WALIOError as e:
        assert fds() == before, (before, fds())  # nothing half open
        failed = i
        print(e)
        break
assert failed is not None
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for w in ws:
    w.append(MutableMessage(MessageType.INSERT, b"x"))  # the others unharmed
with op.open(OpenOption(channel=PChannelInfo(name=f"c{failed}", term=1))) as w:  # its lock was left free
    w.append(MutableMessage(MessageType.INSERT, b"x"))
op.close()
print("ok")
"""


def test_an_open_at_the_descriptor_limit_says_which_limit_and_leaves_nothing(tmp_path: Path) -> None:
    """Review 17b (many channels in one process; a real ``RLIMIT_NOFILE``, in a child process): an open at the
    limit raised ``WALIOError: ... [Errno 24] Too many open files: '.../00000000000000000001.idx'``, which names a
    file and reads like a disk problem. It now says that the process has no descriptor left, which limit to raise,
    and what a channel uses; as before, it leaves nothing open and the other channels work on."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _AT_THE_FD_LIMIT, str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout + r.stderr
    assert "Too many open files" in r.stdout and "ulimit -n" in r.stdout and "a writer holds 4" in r.stdout, r.stdout


def test_a_writer_failing_at_the_descriptor_limit_says_which_limit(tmp_path: Path) -> None:
    """Review 17b: a writer that reaches the limit while it rolls a segment closes for good (as for any I/O error:
    see README), and its error named only the file. It says which limit now, and so does a reader's."""
    import errno

    from wal.walimpls.localfs import FileOps

    class AtTheLimit(FileOps):
        full = False

        def open(self, path: str, flags: int, mode: int = 0o600) -> int:
            if self.full:
                raise OSError(errno.EMFILE, "Too many open files", path)
            return super().open(path, flags, mode)

    ops = AtTheLimit()
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=64 << 10, _file_ops=ops)
    with op, op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        ops.full = True
        with pytest.raises(WALError, match="ulimit -n"):
            for _ in range(400):  # 200 KB: a roll
                w.append(MutableMessage(MessageType.INSERT, b"z" * 500))
        ro = op.open(OpenOption(channel=PChannelInfo(name="p1", access_mode=AccessMode.RO)))
        backend = ro._impls.read(ImplsReadOption(name="r", deliver_policy=DeliverPolicy.all()))  # type: ignore[attr-defined]
        with pytest.raises(WALError, match="ulimit -n"):
            backend.recv_batch(1, timeout=0)
        backend.close()
        ops.full = False


def test_an_open_txn_does_not_keep_the_payloads_appended_after_it(tmp_path: Path) -> None:
    """While a transaction was open, the last-confirmed ID waited at its begin, and the manager that advances it kept
    the whole ack detail of every message appended after it, the message and its payload included, until the txn
    ended: a long txn (its keepalive renewed by each body message) beside other producers held all they wrote in
    RAM (2,000 appends of 10 KB: 20 MB, with a write-ahead buffer of 64 KiB). It keeps their IDs only."""
    import tracemalloc

    op = registry.must_get_builder("localfs").build(
        root=str(tmp_path), segment_bytes=1 << 20, sync="never", write_ahead_buffer_bytes=64 << 10
    )
    with op, op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        txn = w.begin_txn(vchannel="v1", keepalive=3600)
        txn.append(MutableMessage(MessageType.INSERT, b"t", vchannel="v1"))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2000):  # each payload its own object, as a producer's are
                r = w.append(MutableMessage(MessageType.INSERT, b"%05d" % i * 2000, vchannel="v2"))
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert r.last_confirmed_message_id < r.message_id  # still held back at the txn's begin
        assert held < 2000 * 10_000 // 4  # 21 MB before
        txn.commit()


def test_an_open_that_fails_after_recovery_leaves_the_segments_gauge_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's segments count in the ``wal_segments`` gauge from the moment its recovered list is made; an open
    that failed after it (an I/O error opening the active segment, a full disk making its first segment) left them
    counted for good, so the gauge grew by the channel's segments with each failed open."""
    from wal._metrics import metrics
    from wal.errors import WALIOError
    from wal.walimpls.localfs._wal import LocalFSWAL

    def gauge() -> float:
        reg = metrics.registry
        return (reg.get_sample_value("wal_segments") or 0.0) if reg is not None else 0.0

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096)
    with op:
        with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
            w.append_messages([MutableMessage(MessageType.INSERT, b"x" * 200) for _ in range(40)])
        kept = gauge()

        def fail(self: LocalFSWAL, seg: object) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(LocalFSWAL, "_open_active", fail)
        for _ in range(3):
            with pytest.raises(WALIOError):
                op.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
        assert gauge() == kept  # before: the channel's 4 segments more per failed open
        monkeypatch.undo()
        with op.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
            assert gauge() > kept
        assert gauge() == kept
