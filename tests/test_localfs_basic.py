"""localfs: options, layout, append/read, seeks, group commit, locking, terms, sync modes, faults."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_ro, open_rw, read_all

from wal import OpenOption, PChannelInfo, registry
from wal.errors import (
    AccessModeError,
    FencedError,
    InvalidArgumentError,
    InvalidMessageIDError,
    ShutdownError,
    WALIOError,
    WALLockedError,
    WALTimeoutError,
)
from wal.message import MessageType, MutableMessage, TxnContext, unmarshal_message_id
from wal.options import DeliverPolicy
from wal.registry import get_impls_builder
from wal.walimpls import ReadOption
from wal.walimpls.localfs import FileOps, LocalFSMessageID
from wal.walimpls.localfs._format import parse_term, term_text


def test_registered_with_unmarshaler() -> None:
    assert get_impls_builder("localfs").name == "localfs"
    mid = unmarshal_message_id("localfs", "42")
    assert mid == LocalFSMessageID(42) and mid.wal_name == "localfs" and mid.marshal() == "42"
    assert LocalFSMessageID(3) < LocalFSMessageID(10)
    with pytest.raises(InvalidMessageIDError):
        unmarshal_message_id("localfs", "x1")
    # The form an ID prints in parses too (the README prints r.message_id; `wal dump --from localfs:5` refused it)
    assert unmarshal_message_id("localfs", str(mid)) == mid and str(mid) == "localfs:42"
    for bad in ("memory:42", "localfs:", "localfs:localfs:42", "localfs42"):
        with pytest.raises(InvalidMessageIDError):
            unmarshal_message_id("localfs", bad)


def test_unknown_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="bogus"):
        build(tmp_path, bogus=1)
    for bad in ({"sync": "sometimes"}, {"segment_bytes": 100}, {"sync_interval": 0}, {"retention_bytes": -1},
                {"max_message_bytes": 0}, {"segment_bytes": "big"}):
        with pytest.raises(InvalidArgumentError):
            build(tmp_path, **bad)


@pytest.mark.parametrize("sync", [None, "always", "never"])
def test_sync_interval_without_interval_mode_is_refused(tmp_path: Path, sync: str | None) -> None:
    """It did nothing there, while the user who set it believed appends were synced that often."""
    mode = {} if sync is None else {"sync": sync}
    with pytest.raises(InvalidArgumentError, match=r"sync_interval.*sync="):
        build(tmp_path, sync_interval=0.5, **mode)
    build(tmp_path, sync="interval", sync_interval=0.5).close()


def test_default_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAL_LOCALFS_ROOT", str(tmp_path / "envroot"))
    opener = get_impls_builder("localfs").build(segment_bytes=4096)
    with opener:
        open_rw(opener, "c").close()
    assert (tmp_path / "envroot" / "c").is_dir()


def test_bad_channel_names_create_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with build(root) as opener:
        for name in ("", ".", "..", "a/b", "a\0b", "x" * 201):
            with pytest.raises(InvalidArgumentError):
                opener.open(OpenOption(channel=PChannelInfo(name=name)))
    assert not root.exists()


def test_permissions(tmp_path: Path) -> None:
    root = tmp_path / "r"
    with build(root, segment_bytes=4096) as opener:
        w = open_rw(opener)
        w.append(msg(b"x"))
        w.close()
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "p1").st_mode) == 0o700
    files = list((root / "p1").iterdir())
    assert {f.suffix for f in files} >= {".seg", ".idx", ""}
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


def test_roundtrip_all_fields(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener, term=5)
        m = msg(b"\x00payload\xff", tt=77, vchannel="v1", props={"k": "v", "ü": "ß"}, mtype=MessageType.DELETE)
        m.with_wal_term(5).with_txn_context(TxnContext(txn_id=9, keepalive=2.5))
        m.with_last_confirmed(LocalFSMessageID(1))
        first = w.append(msg(b"a", tt=1).with_last_confirmed_use_message_id())
        second = w.append(m)
        got = read_all(w)
        assert [x.message_id for x in got] == [first, second]
        a, b = got
        assert a.last_confirmed_message_id == first
        assert bytes(b.payload) == b"\x00payload\xff" and b.message_type is MessageType.DELETE
        assert b.time_tick == 77 and b.vchannel == "v1" and dict(b.properties) == {"k": "v", "ü": "ß"}
        assert b.wal_term == 5 and b.txn_ctx == TxnContext(9, 2.5)
        assert b.last_confirmed_message_id == LocalFSMessageID(1)
        assert w.last_time_tick() == 77
        with pytest.raises(InvalidArgumentError, match="term 6 is above this writer's term 5"):
            w.append(msg(b"forged").with_wal_term(6))  # the record terms fence stale writers: none above its own
        w.close()
        w = open_rw(opener, term=5)  # reopen: last_time_tick recovered
        assert w.last_time_tick() == 77
        assert [bytes(x.payload) for x in read_all(w)] == [b"a", b"\x00payload\xff"]
        w.close()


def test_empty_payload_and_big_message_larger_than_segment(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        big = os.urandom(50_000)
        ids = [w.append(msg(b"")), w.append(msg(big)), w.append(msg(b"after"))]
        w.close()
        w = open_rw(opener)
        got = read_all(w)
        assert [x.message_id for x in got] == ids
        assert [bytes(x.payload) for x in got] == [b"", big, b"after"]
        # A big record in the very first (empty) segment grows it instead of rolling.
        w2 = open_rw(opener, "fresh")
        w2.append(msg(big))
        assert bytes(read_all(w2)[0].payload) == big
        w2.close()
        w.close()


def test_max_message_bytes(tmp_path: Path) -> None:
    with build(tmp_path, max_message_bytes=1000) as opener:
        w = open_rw(opener)
        with pytest.raises(InvalidArgumentError, match="max_message_bytes"):
            w.append(msg(b"x" * 2000))
        assert w.append(msg(b"x" * 100)) == LocalFSMessageID(1)  # nothing was stored for the refused one
        w.close()


def test_seek_policies_across_segments(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        ids = w.append_batch([msg(f"m{i}".encode() * 20, tt=i + 1) for i in range(500)])
        assert [i.value for i in ids] == list(range(1, 501))
        assert len(list((tmp_path / "p1").glob("*.seg"))) > 10
        for k in (1, 2, 77, 250, 499, 500):
            got = read_all(w, DeliverPolicy.start_from(ids[k - 1]), idle=0.05)
            assert [m.message_id.value for m in got] == list(range(k, 501))
            got = read_all(w, DeliverPolicy.start_after(ids[k - 1]), idle=0.05)
            assert [m.message_id.value for m in got] == list(range(k + 1, 501))
        # beyond the end: waits for the next append
        s = w.read(ReadOption(name="far", deliver_policy=DeliverPolicy.start_from(LocalFSMessageID(502))))
        late = w.read(ReadOption(name="late", deliver_policy=DeliverPolicy.latest()))
        w.append(msg(b"501"))
        w.append(msg(b"502"))
        assert s.recv(2.0).message_id == LocalFSMessageID(502)
        assert late.recv(2.0).message_id == LocalFSMessageID(501)
        s.close()
        late.close()
        w.close()


def test_recv_timeout_and_close_wakes_blocked_recv(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        s = w.read(ReadOption(name="s"))
        t0 = time.monotonic()
        with pytest.raises(WALTimeoutError):
            s.recv(0.1)
        assert time.monotonic() - t0 >= 0.09
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                s.recv(None)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.1)
        s.close()
        t.join(3.0)
        assert not t.is_alive() and isinstance(errors[0], ShutdownError)
        assert s.done().is_set() and s.error() is None
        # Closing the WAL closes its scanners.
        s2 = w.read(ReadOption(name="s2"))
        w.close()
        assert s2.done().is_set()
        with pytest.raises(ShutdownError):
            s2.recv(0.1)
        with pytest.raises(ShutdownError):
            w.append(msg(b"x"))


def test_blocked_recv_wakes_on_append(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        s = w.read(ReadOption(name="s"))
        got: list[int] = []
        t = threading.Thread(target=lambda: got.append(s.recv(5.0).message_id.value))  # type: ignore[attr-defined]
        t.start()
        time.sleep(0.05)
        w.append(msg(b"wake"))
        t.join(3.0)
        assert got == [1]
        s.close()
        w.close()


class CountingOps(FileOps):
    def __init__(self) -> None:
        self.syncs = 0
        self.writes = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        super().fdatasync(fd)

    def pwritev(self, fd: int, buffers: list, offset: int) -> int:  # type: ignore[type-arg]
        self.writes += 1
        return super().pwritev(fd, buffers, offset)


def test_group_commit_shares_syncs(tmp_path: Path) -> None:
    ops = CountingOps()
    with build(tmp_path, _file_ops=ops) as opener:
        w = open_rw(opener)
        base = ops.syncs
        n_threads, per = 16, 40
        results: dict[int, list[int]] = {}

        def worker(k: int) -> None:
            results[k] = [w.append(msg(f"{k}:{j}".encode())).value for j in range(per)]  # type: ignore[attr-defined]

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        total = n_threads * per
        assert ops.syncs - base < total, "concurrent appends must share fdatasyncs"
        for ids in results.values():
            assert ids == sorted(ids)
        got = read_all(w)
        assert len(got) == total and len({m.message_id for m in got}) == total
        for m in got:  # each thread's messages are in its own order
            k, j = bytes(m.payload).decode().split(":")
            assert results[int(k)][int(j)] == m.message_id.value  # type: ignore[attr-defined]
        w.close()


def test_append_batch_is_one_write_and_one_sync(tmp_path: Path) -> None:
    ops = CountingOps()
    with build(tmp_path, _file_ops=ops) as opener:
        w = open_rw(opener)
        s0, w0 = ops.syncs, ops.writes
        ids = w.append_batch([msg(b"x" * 100) for _ in range(500)])
        assert len(ids) == 500
        assert ops.syncs - s0 == 1 and ops.writes - w0 == 1
        w.close()


@pytest.mark.parametrize("sync", ["interval", "never"])
def test_other_sync_modes(tmp_path: Path, sync: str) -> None:
    ops = CountingOps()
    interval = {"sync_interval": 0.02} if sync == "interval" else {}
    with build(tmp_path, sync=sync, _file_ops=ops, **interval) as opener:
        w = open_rw(opener)
        base = ops.syncs
        for i in range(200):
            w.append(msg(str(i).encode()))
        during = ops.syncs - base
        assert during < 200
        if sync == "interval":
            time.sleep(0.2)
            assert ops.syncs - base >= 1  # the background sync ran for the dirty tail
        w.close()
        w = open_rw(opener)
        assert [bytes(m.payload) for m in read_all(w)] == [str(i).encode() for i in range(200)]
        w.close()


def test_second_writer_refused_at_once(tmp_path: Path) -> None:
    with build(tmp_path) as o1, build(tmp_path) as o2:
        w = open_rw(o1)
        t0 = time.monotonic()
        with pytest.raises(WALLockedError):
            open_rw(o2)
        with pytest.raises(WALLockedError):
            open_rw(o1)  # same opener, another "thread" of the program
        errs: list[BaseException] = []
        def other_thread() -> None:
            try:
                open_rw(o2)
            except WALLockedError as e:
                errs.append(e)

        th = threading.Thread(target=other_thread)
        th.start()
        th.join()
        assert isinstance(errs[0], WALLockedError)
        assert time.monotonic() - t0 < 2.0
        w.close()
        open_rw(o2).close()  # free again once closed


def test_second_writer_in_another_process_refused(tmp_path: Path) -> None:
    import subprocess

    from _localfs_util import PY, child_env

    with build(tmp_path) as opener:
        w = open_rw(opener)
        code = (
            "import sys; sys.path.insert(0, 'tests');"
            "from _localfs_util import build, open_rw;"
            "from wal.errors import WALLockedError\n"
            f"o = build({str(tmp_path)!r})\n"
            "try:\n    open_rw(o)\nexcept WALLockedError:\n    print('locked')\n"
        )
        out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60,
                             cwd=str(Path(__file__).resolve().parent.parent))
        assert out.stdout.strip() == "locked", out.stderr
        w.close()


def test_terms_persist_and_fence(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        open_rw(opener, term=3).close()
        with pytest.raises(FencedError):
            open_rw(opener, term=2)
        open_rw(opener, term=3).close()  # same term: a restart of the same owner
        open_rw(opener, term=5).close()
    with build(tmp_path) as opener:  # persisted across openers
        with pytest.raises(FencedError):
            open_rw(opener, term=4)


def _full_wal_append(root: Path, term: int, payload: bytes) -> None:
    """One append through the whole stack, which stamps the writer's term on every record (the bare backend
    stores the term a message carries)."""
    with registry.must_get_builder("localfs").build(root=str(root), segment_bytes=1 << 20) as opener:
        with opener.open(OpenOption(channel=PChannelInfo(name="p1", term=term))) as w:
            w.append(MutableMessage(MessageType.INSERT, payload, vchannel="v"))


@pytest.mark.parametrize("term_file", ["deleted", "older copy"])
def test_a_stale_writer_is_fenced_by_the_log_when_the_term_file_is_gone(tmp_path: Path, term_file: str) -> None:
    """A writer of term 5 goes on in the segment a writer of term 1 made, so no header says 5: with TERM deleted (or
    put back from an older copy), a writer of term 1 opened and appended after term 5 (found by review 10f)."""
    _full_wal_append(tmp_path, 1, b"one")
    _full_wal_append(tmp_path, 5, b"five")
    assert len(list((tmp_path / "p1").glob("*.seg"))) == 1
    if term_file == "deleted":
        (tmp_path / "p1" / "TERM").unlink()
    else:
        (tmp_path / "p1" / "TERM").write_bytes(term_text(1))
    with build(tmp_path) as opener:
        for stale in (1, 4):
            with pytest.raises(FencedError, match="older than term 5"):
                open_rw(opener, term=stale)
    _full_wal_append(tmp_path, 5, b"five again")  # the owner of term 5 may go on, and writes TERM back
    assert parse_term((tmp_path / "p1" / "TERM").read_bytes()) == 5
    with build(tmp_path) as opener:
        got = [bytes(m.payload) for m in read_all(open_ro(opener)) if m.message_type is MessageType.INSERT]
    assert got == [b"one", b"five", b"five again"]


def test_read_only_wal_refuses_writes(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        w.append(msg(b"one"))
        ro = open_ro(opener)
        with pytest.raises(AccessModeError):
            ro.append(msg(b"x"))
        with pytest.raises(AccessModeError):
            ro.append_batch([msg(b"x")])
        with pytest.raises(AccessModeError):
            ro.truncate(LocalFSMessageID(1))
        s = ro.read(ReadOption(name="ro"))
        assert bytes(s.recv(2.0).payload) == b"one"
        w.append(msg(b"two"))
        assert bytes(s.recv(2.0).payload) == b"two"
        s.close()
        ro.close()
        w.close()


class FailingSync(FileOps):
    def __init__(self) -> None:
        self.fail = False
        self.syncs_after_failure = 0

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            self.syncs_after_failure += 1
            raise OSError(5, "Input/output error")
        super().fdatasync(fd)


def test_failed_fdatasync_closes_the_wal(tmp_path: Path) -> None:
    ops = FailingSync()
    with build(tmp_path, _file_ops=ops) as opener:
        w = open_rw(opener)
        w.append(msg(b"durable"))
        ops.fail = True
        with pytest.raises(WALIOError):
            w.append(msg(b"not acknowledged"))
        assert ops.syncs_after_failure == 1  # never retried as if the data were safe
        with pytest.raises((WALIOError, ShutdownError)):
            w.append(msg(b"later"))
        assert ops.syncs_after_failure == 1
        ops.fail = False
        w.close()
        w = open_rw(opener)  # the lock was released; reopening recovers
        payloads = [bytes(m.payload) for m in read_all(w)]
        assert payloads[0] == b"durable"
        w.close()


class NoSpace(FileOps):
    def fallocate(self, fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")


def test_enospc_on_roll_is_walioerror(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        open_rw(opener).close()  # first segment exists
    with build(tmp_path, segment_bytes=4096, _file_ops=NoSpace()) as opener:
        w = open_rw(opener)
        acked = []
        with pytest.raises(WALIOError, match="No space"):
            for i in range(100):
                w.append(msg(b"y" * 200))
                acked.append(i)
        w.close()
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        assert len(read_all(w)) >= len(acked)  # every acknowledged append is there
        w.close()


@pytest.mark.parametrize("wall_ns", [-86_400 * 10**9, 2**64 + 10**9], ids=["before-1970", "after-2554"])
def test_a_wall_clock_outside_the_u64_ns_range_still_creates_and_seals_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wall_ns: int
) -> None:
    """Segment headers and summaries store ns since the epoch as u64: such a clock made the open fail with a bare
    ``struct.error`` (no segment could be created), and a roll closed the channel for good."""
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 200) for _ in range(10)])
        monkeypatch.setattr(time, "time_ns", lambda: wall_ns)
        for _ in range(30):  # rolls
            w.append(msg(b"b" * 200))
        w.close()
    with build(tmp_path, segment_bytes=4096) as opener:  # and an open from scratch under that clock
        w = open_rw(opener, name="p2")
        w.append_batch([msg(b"c" * 200) for _ in range(30)])
        w.close()
    monkeypatch.undo()
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener, term=2)
        assert [bytes(m.payload)[:1] for m in read_all(w)] == [b"a"] * 10 + [b"b"] * 30
        w.close()
        w = open_rw(opener, name="p2", term=2)
        assert len(read_all(w)) == 30
        w.close()


def test_truncate_deletes_whole_segments(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        ids = w.append_batch([msg(b"z" * 200) for _ in range(300)])
        segs_before = sorted((tmp_path / "p1").glob("*.seg"))
        s = w.read(ReadOption(name="old"))  # a reader positioned at the start, then its files go away
        first = s.recv(1.0)
        w.truncate(ids[150])
        segs_after = sorted((tmp_path / "p1").glob("*.seg"))
        assert len(segs_after) < len(segs_before)
        assert len(list((tmp_path / "p1").glob("*.idx"))) == len(segs_after)
        got = read_all(w)
        assert got[0].message_id <= ids[150] and got[-1].message_id == ids[-1]
        assert [m.message_id.value for m in got] == list(range(got[0].message_id.value, 301))  # type: ignore
        rest = [first]
        while True:  # the early reader keeps going (its maps stay valid); no SIGBUS, nothing out of order
            try:
                rest.extend(s.recv_batch(1000, 0.1))
            except WALTimeoutError:
                break
        ids_read = [m.message_id.value for m in rest]  # type: ignore[attr-defined]
        assert ids_read == sorted(ids_read) and ids_read[-1] == 300
        s.close()
        w.close()
        w = open_rw(opener)  # still opens after the deletion
        assert read_all(w)[0].message_id == got[0].message_id
        w.close()

def test_a_seek_into_a_segment_deleted_under_it_moves_on_to_what_is_kept(tmp_path: Path) -> None:
    """A sealed segment's index is read from its ``.idx`` file when a reader seeks in it (the writer keeps none in
    memory). A reader that found the segment, which retention or a truncate then deleted before it read the index,
    rebuilt the index from the deleted segment: the open of its file raised out of the seek (``WALIOError``), where
    the writer's in-memory index had let the reader enter the segment, find it gone and move on to what is kept."""
    hooks: list[Callable[[], object]] = []

    class DeleteBeforeIndexRead(FileOps):
        def read_file(self, path: str) -> bytes:
            if path.endswith(".idx") and hooks:
                hooks.pop()()  # the deletion lands between the reader's lookup and its read of the index
            return super().read_file(path)

    with build(tmp_path, segment_bytes=64 << 10, sync="never", _file_ops=DeleteBeforeIndexRead()) as opener:
        w = open_rw(opener)
        for _ in range(6):
            w.append_batch([msg(b"x" * 200) for _ in range(300)])
        segs = w._log.segments
        assert len(segs) >= 3 and segs[0].sealed
        kept = segs[1].first_id
        hooks.append(lambda: w.truncate(LocalFSMessageID(kept)))
        seek = DeliverPolicy.start_from(LocalFSMessageID(segs[0].first_id + 200))
        with w.read(ReadOption(name="t", deliver_policy=seek)) as s:
            assert s.recv(5.0).message_id == LocalFSMessageID(kept)  # WALIOError before
        assert not hooks
        assert sorted(p.name for p in (tmp_path / "p1").glob("*.idx")) == [
            Path(s.path).with_suffix(".idx").name for s in w._log.segments
        ]
        w.close()

def _sealed_segment_without_index(w: Any) -> tuple[Any, LocalFSMessageID]:
    """Fill writer ``w`` (64 KiB segments) past its first segment, delete that sealed segment's ``.idx``, and return
    the segment and an ID inside it, whose seek must rebuild the index."""
    for _ in range(4):
        w.append_batch([msg(b"x" * 200) for _ in range(300)])
    seg = w._log.segments[0]
    assert seg.sealed
    os.unlink(Path(seg.path).with_suffix(".idx"))
    return seg, LocalFSMessageID(seg.first_id + 200)


def test_a_seek_into_a_sealed_segment_whose_index_is_gone_works_on_a_full_disk(tmp_path: Path) -> None:
    """A writer's reader that seeks in a sealed segment reads its ``.idx`` file (the writer keeps no sealed index in
    memory), and rebuilds it from the data when it is missing or damaged. The rebuilt index was written back first,
    so on a full disk the write's ENOSPC failed the seek (``WALIOError``, retried for as long as the disk stayed full):
    no reader could start in that segment, for want of a file that only speeds a seek up."""
    full: list[bool] = []

    class FullDisk(FileOps):
        def write_file_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            super().write_file_atomic(path, data, durable=durable)

    with build(tmp_path, segment_bytes=64 << 10, sync="never", _file_ops=FullDisk()) as opener:
        w = open_rw(opener)
        seg, target = _sealed_segment_without_index(w)
        full.append(True)
        with w.read(ReadOption(name="t", deliver_policy=DeliverPolicy.start_from(target))) as s:
            assert s.recv(5.0).message_id == target  # WALIOError before
        full.clear()
        with w.read(ReadOption(name="t", deliver_policy=DeliverPolicy.start_from(target))) as s:
            assert s.recv(5.0).message_id == target  # space again: rebuilt and written
        assert Path(seg.path).with_suffix(".idx").exists()
        w.close()

def test_two_readers_rebuilding_the_same_missing_index_both_seek(tmp_path: Path) -> None:
    """Readers of the writer rebuild a sealed segment's missing ``.idx`` and write it back through one temporary name
    (``<index>.tmp``). Two doing so at once: the first rename took the file, and the second's rename found no
    temporary file and its ``FileNotFoundError`` failed the seek (``WALIOError``; 4 threads seeking into 23 segments
    whose indexes were deleted: 349 of 920 seeks). The index the other wrote is the same: the seek goes on."""
    nested: list[Callable[[], object]] = []

    class OtherReaderFirst(FileOps):
        def rename(self, src: str, dst: str) -> None:
            if ".idx." in src and src.endswith(".tmp") and nested:
                nested.pop()()  # another reader rebuilds and renames the same index first
            super().rename(src, dst)

    with build(tmp_path, segment_bytes=64 << 10, sync="never", _file_ops=OtherReaderFirst()) as opener:
        w = open_rw(opener)
        seg, target = _sealed_segment_without_index(w)
        seek = ReadOption(name="t", deliver_policy=DeliverPolicy.start_from(target))

        def other() -> None:
            with w.read(seek) as s2:
                assert s2.recv(5.0).message_id == target

        nested.append(other)
        with w.read(seek) as s:
            assert s.recv(5.0).message_id == target  # WALIOError before
        assert not nested
        assert Path(seg.path).with_suffix(".idx").exists()
        w.close()


def test_an_index_rebuilt_for_a_segment_deleted_meanwhile_is_not_left_behind(tmp_path: Path) -> None:
    """A writer's reader rebuilding a sealed segment's missing ``.idx`` while retention (or a truncate) deletes the
    segment wrote the index after both files were gone: a stray ``.idx`` for a segment that no longer exists, which
    ``wal verify`` reports and the next open deleted. The index writer checks that its segment is still there."""
    deleting: list[Callable[[], object]] = []

    class DeletedMeanwhile(FileOps):
        def write_file_atomic(self, path: str, data: bytes, *, durable: bool = True) -> None:
            if path.endswith(".idx") and deleting:
                deleting.pop()()  # retention deletes the segment (and its index) between the rebuild and its write
            super().write_file_atomic(path, data, durable=durable)

    with build(tmp_path, segment_bytes=64 << 10, sync="never", _file_ops=DeletedMeanwhile()) as opener:
        w = open_rw(opener)
        seg, target = _sealed_segment_without_index(w)
        deleting.append(lambda: w.truncate(LocalFSMessageID(seg.last_id + 1)))
        with w.read(ReadOption(name="t", deliver_policy=DeliverPolicy.start_from(target))) as s:
            s.recv(5.0)
        assert not deleting
        assert not Path(seg.path).exists()
        assert not Path(seg.path).with_suffix(".idx").exists()  # left behind before
        assert sorted(p.name for p in (tmp_path / "p1").glob("*.idx")) == [
            Path(s.path).with_suffix(".idx").name for s in w._log.segments
        ]
        w.close()


def test_two_threads_writing_one_file_atomically_do_not_share_a_temporary_file(tmp_path: Path) -> None:
    """``write_file_atomic`` wrote through ``<path>.tmp`` whoever called it: a second thread writing the same file
    (two readers rebuilding one index) truncated the first's temporary file and renamed it away, so the first's
    rename failed (``FileNotFoundError``) or renamed a file half rewritten. Each caller has its own."""
    path = str(tmp_path / "f")
    other = threading.Thread(target=lambda: ops.write_file_atomic(path, b"B" * 4096))

    class SecondWriterFirst(FileOps):
        def rename(self, src: str, dst: str) -> None:
            if threading.current_thread() is not other and not other.is_alive() and other.ident is None:
                other.start()  # the other thread writes and renames the same file while this one is about to
                other.join()
            super().rename(src, dst)

    ops = SecondWriterFirst()
    ops.write_file_atomic(path, b"A" * 4096)  # FileNotFoundError before
    assert Path(path).read_bytes() == b"A" * 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_retention_bytes_and_seconds(tmp_path: Path) -> None:
    with build(tmp_path / "b", segment_bytes=4096, retention_bytes=5 * 4096) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"q" * 300) for _ in range(200)])
        assert len(list((tmp_path / "b" / "p1").glob("*.seg"))) <= 5
        got = read_all(w)
        assert got[-1].message_id == LocalFSMessageID(200)
        w.close()
    with build(tmp_path / "s", segment_bytes=4096, retention_seconds=0.2) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"q" * 300) for _ in range(100)])
        time.sleep(0.3)
        w.append_batch([msg(b"q" * 300) for _ in range(15)])  # a roll triggers the check
        segs = sorted((tmp_path / "s" / "p1").glob("*.seg"))
        assert len(segs) <= 3
        w.close()


def test_retention_seconds_goes_on_after_a_segment_sealed_while_the_clock_ran_years_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One roll under a wall clock ten years ahead stamped its segment's seal in the future: retention stopped at
    it, and every later segment was kept (the channel grew without bound) until the clock caught up. Time passes
    for both clocks below: a segment is old enough by the monotonic clock too (since retention saw it sealed)."""
    real, offset, mono, passed = time.time_ns, [0], time.monotonic_ns, [0]
    monkeypatch.setattr(time, "time_ns", lambda: real() + offset[0])
    monkeypatch.setattr(time, "monotonic_ns", lambda: mono() + passed[0])
    with build(tmp_path, segment_bytes=4096, retention_seconds=10) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 200) for _ in range(40)])
        offset[0] = 10 * 365 * 86_400 * 10**9
        for _ in range(20):  # a roll or two under the clock ten years ahead
            w.append(msg(b"b" * 200))
        offset[0] = 0  # the clock is set right
        for step in (100, 200, 300):  # then time passes: each round's segments are past 10 s at the next
            offset[0] = passed[0] = step * 10**9
            for _ in range(60):
                w.append(msg(b"c" * 200))
        assert len(list((tmp_path / "p1").glob("*.seg"))) <= 8
        got = read_all(w)
        assert got[-1].message_id == LocalFSMessageID(40 + 20 + 180)
        w.close()


def test_retention_seconds_keeps_recent_segments_after_a_roll_under_a_clock_stepped_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ages counted from the earliest later seal time: one roll under a wall clock ten years behind (a machine whose
    clock read 2016 at boot, before NTP) aged every segment before it ten years once the clock was set right, so
    retention deleted them at once, seconds after they were written, far inside ``retention_seconds``."""
    real, offset = time.time_ns, [0]
    monkeypatch.setattr(time, "time_ns", lambda: real() + offset[0])
    with build(tmp_path, segment_bytes=4096, retention_seconds=3600) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 200) for _ in range(40)])
        offset[0] = -10 * 365 * 86_400 * 10**9
        for _ in range(20):  # a roll or two under the clock ten years behind
            w.append(msg(b"b" * 200))
        offset[0] = 0  # the clock is set right
        for _ in range(40):
            w.append(msg(b"c" * 200))
        got = read_all(w)
        assert got[0].message_id == LocalFSMessageID(1) and len(got) == 100  # nothing is an hour old
        w.close()
        w = open_rw(opener)  # nor after a reopen
        assert read_all(w)[0].message_id == LocalFSMessageID(1)
        w.close()


def test_vchannel_hint_skips_sealed_segments_by_bloom(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class VReadOption(ReadOption):
        vchannel: str | None = None

    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 100, vchannel="a") for _ in range(200)])
        w.append_batch([msg(b"b" * 100, vchannel="b") for _ in range(50)])
        for source in (w, open_ro(opener)):
            with source.read(VReadOption(name="b", vchannel="b")) as s:
                got = s.recv_batch(1000, 1.0)
            assert got[0].message_id.value > 150  # type: ignore[attr-defined]
            assert [m.vchannel for m in got].count("b") == 50 or len(got) < 250
            ids = [m.message_id.value for m in got]  # type: ignore[attr-defined]
            assert ids == list(range(ids[0], 251))
            with source.read(ReadOption(name="all")) as s:  # without the hint nothing is skipped
                assert s.recv(1.0).message_id == LocalFSMessageID(1)
        w.close()


def test_foreign_message_ids_are_refused(tmp_path: Path) -> None:
    from wal.message import IntMessageID

    class OtherID(IntMessageID):
        __slots__ = ()
        WAL_NAME = "other"

    with build(tmp_path) as opener:
        w = open_rw(opener)
        with pytest.raises(InvalidMessageIDError):
            w.read(ReadOption(name="x", deliver_policy=DeliverPolicy.start_from(OtherID(1))))
        with pytest.raises(InvalidMessageIDError):
            w.truncate(OtherID(1))
        assert w.append_batch([]) == []
        w.close()
        w.close()  # idempotent
        with pytest.raises(ShutdownError):
            w.read(ReadOption(name="closed"))
    with pytest.raises(ShutdownError):
        opener.open(OpenOption(channel=PChannelInfo(name="p1")))


def test_out_of_range_fields_are_invalid_arguments(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        with pytest.raises(InvalidArgumentError):
            w.append(msg(b"x", tt=-1))
        with pytest.raises(InvalidArgumentError):
            w.append(msg(b"x").with_txn_context(TxnContext(txn_id=1, keepalive=-5.0)))
        assert w.append(msg(b"ok")) == LocalFSMessageID(1)
        w.close()


def test_scanned_messages_match_the_constructor(tmp_path: Path) -> None:
    """Scans fill ImmutableMessage slots directly (a speed-up); they must equal what the constructor builds."""
    from wal.message import ImmutableMessage

    with build(tmp_path) as opener:
        w = open_rw(opener, term=3)
        m = msg(b"p", tt=5, vchannel="v", props={"a": "b"}).with_wal_term(3)
        w.append(m.with_txn_context(TxnContext(4, 1.0)))
        w.append(msg(b"q", tt=6).with_last_confirmed(LocalFSMessageID(1)))
        w.append(msg(b"r", tt=7))
        for got in read_all(w):
            ref = ImmutableMessage(
                message_id=got.message_id, message_type=got.message_type, payload=got.payload,
                properties=dict(got.properties), vchannel=got.vchannel, time_tick=got.time_tick,
                last_confirmed_message_id=got.last_confirmed_message_id, txn_ctx=got.txn_ctx,
                wal_term=got.wal_term, not_persisted=got.not_persisted,
            )
            for slot in ImmutableMessage.__slots__:
                a, b = getattr(got, slot), getattr(ref, slot)
                if slot == "_props":
                    a, b = dict(got.properties), dict(ref.properties)
                assert a == b, slot
            assert got.is_persisted and got.estimate_size() == ref.estimate_size()
        w.close()


class _BytesPath(os.PathLike):  # type: ignore[type-arg]
    def __init__(self, p: bytes) -> None:
        self._p = p

    def __fspath__(self) -> bytes:
        return self._p


@pytest.mark.parametrize(
    "root",
    [lambda t: str(t / "a\0b"), lambda t: t / "a\0b", lambda t: _BytesPath(os.fsencode(t))],
    ids=["str-with-nul", "path-with-nul", "pathlike-of-bytes"],
)
def test_a_root_no_open_can_use_is_refused_at_build(tmp_path: Path, root: Callable[[Path], object]) -> None:
    # build() took them and every open then raised a bare ValueError ("embedded null byte") or TypeError
    with pytest.raises(InvalidArgumentError, match="root"):
        registry.must_get_builder("localfs").build(root=root(tmp_path))


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_an_open_that_the_openers_close_overtakes_raises_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """An open the opener's close overtook (closed after the open's first check) closed its new WAL while holding
    the opener's lock, which that WAL's close takes to release itself: the open hung for ever, its channel locked."""
    import wal.walimpls.localfs._opener as opener_mod

    op = build(tmp_path)
    if mode == "rw":
        recover = opener_mod.recover

        def recover_then_close(*a: object, **k: object) -> object:
            r = recover(*a, **k)  # type: ignore[arg-type]
            op.close()
            return r

        monkeypatch.setattr(opener_mod, "recover", recover_then_close)
    else:
        watch = op._watch  # type: ignore[attr-defined]

        def watch_then_close(hub: object) -> None:
            watch(hub)
            op.close()

        monkeypatch.setattr(op, "_watch", watch_then_close)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            (open_rw if mode == "rw" else open_ro)(op)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)  # a hang, not a speed: the open returns at once
    assert not t.is_alive(), "the open hung"
    assert len(errors) == 1 and isinstance(errors[0], ShutdownError)
    if mode == "rw":  # the channel's lock was released: another opener can write it
        monkeypatch.undo()
        with build(tmp_path) as op2:
            open_rw(op2).close()
