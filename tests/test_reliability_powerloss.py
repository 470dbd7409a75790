"""Simulated power loss: bytes written since the last fdatasync may vanish, survive, be torn at any byte or become
zeros (tests/_faults.PowerLossFileOps); recovery must keep every message acknowledged under sync="always", deliver
nothing that was not appended, and take appends again. Trials chain on one directory (recovering from a power cut
that hit a recovered log). WAL_POWERLOSS_TRIALS sets the number of trials (default 30)."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _faults import PowerLossFileOps
from _localfs_util import build, msg, open_rw, read_all

from wal.errors import WALError, WALIOError
from wal.walimpls.localfs import FileOps

TRIALS = int(os.environ.get("WAL_POWERLOSS_TRIALS", "30"))
STATS: dict[str, int] = {"trials": 0, "acked": 0, "kept": 0, "dropped": 0, "torn": 0, "zeroed": 0, "tails_cut": 0,
                         "cut_with_intact_records": 0, "entries_undone": 0}


class _CutCounter(logging.Handler):
    """Counts recovery's torn-tail cuts, and those that also cut intact records of a never-synced flush (the
    reordered writeback of issue 6, which format 1 refused to open)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "torn bytes" in text:
            STATS["tails_cut"] += 1
            STATS["cut_with_intact_records"] += "intact record" in text


def _payload(trial: int, t: int, n: int, size: int) -> bytes:
    head = f"{trial}/{t}/{n}|".encode()
    return (head * (size // len(head) + 1))[: max(size, len(head))]


def _trial(root: Path, trial: int, rng: random.Random, acked: dict[int, bytes], attempted: set[bytes],
           dir_entries: bool) -> None:
    fops = PowerLossFileOps(rng, dir_entries=dir_entries)
    seg = rng.choice((4096, 8192, 65536))
    opener = build(root, segment_bytes=seg, sync="always", _file_ops=fops)
    w = open_rw(opener, "p1", 2 * trial + 1)
    lock = threading.Lock()
    tt = [0]
    stop = threading.Event()

    def loop(t: int) -> None:
        trng = random.Random(trial * 100 + t)
        n = 0
        while not stop.is_set():
            # Sometimes a batch: several records in one flush, whose writeback a power cut may reorder.
            ps, ms = [], []
            for _ in range(1 if trng.random() < 0.7 else trng.randint(2, 6)):
                size = trng.choice((trng.randint(0, 100), trng.randint(100, 3000), trng.randint(3000, 9000)))
                p = _payload(trial, t, n, size)
                n += 1
                with lock:
                    tt[0] += 1
                    attempted.add(p)
                    ms.append(msg(p, tt=tt[0], vchannel=f"v{t}"))
                ps.append(p)
            try:
                mids = [int(i.value) for i in w.append_batch(ms)]
            except WALError:
                return
            with lock:
                acked.update(zip(mids, ps, strict=True))

    if rng.random() < 0.5:  # cut between a flush's pwritev and its fdatasync: the last flush is always unsynced
        fops.cut_before_sync(rng.randint(1, 30))
    threads = [threading.Thread(target=loop, args=(t,)) for t in range(rng.randint(1, 4))]
    for th in threads:
        th.start()
    time.sleep(rng.uniform(0.0, 0.08))
    stats = fops.power_loss()  # (nothing left to do if the armed cut came first)
    stop.set()
    for th in threads:
        th.join(10)
        assert not th.is_alive()
    for k in ("kept", "dropped", "torn", "zeroed"):
        STATS[k] += stats[k]
    STATS["entries_undone"] += fops.entries_undone
    # The crashed WAL and opener are abandoned (a dead machine closes nothing); its descriptors and lock are gone.


def _verify(root: Path, trial: int, acked: dict[int, bytes], attempted: set[bytes]) -> None:
    counter = _CutCounter()
    logging.getLogger("wal.localfs").addHandler(counter)
    opener = build(root, segment_bytes=4096)
    try:
        w = open_rw(opener, "p1", 2 * trial + 2)
        got = read_all(w, idle=0.05)
        ids = [int(m.message_id.value) for m in got]  # type: ignore[attr-defined]
        assert ids == list(range(1, len(ids) + 1)), f"trial {trial}: IDs not dense"
        by_id = {int(m.message_id.value): bytes(m.payload) for m in got}  # type: ignore[attr-defined]
        for mid, p in acked.items():
            assert mid in by_id, f"trial {trial}: acknowledged message {mid} lost after a power cut"
            assert by_id[mid] == p, f"trial {trial}: acknowledged message {mid} changed"
        for mid, p in by_id.items():
            assert p in attempted, f"trial {trial}: message {mid} holds bytes nobody appended"
        # Unacknowledged messages that survived are now part of the log: later trials must keep them too.
        acked.clear()
        acked.update(by_id)
        w.close()
    finally:
        opener.close()
        logging.getLogger("wal.localfs").removeHandler(counter)


def _run_trials(n: int, seed: int, dir_entries: bool = False) -> None:
    for k in STATS:
        STATS[k] = 0
    rng = random.Random(seed)
    acked: dict[int, bytes] = {}
    attempted: set[bytes] = set()
    for trial in range(n):
        if trial % 10 == 0:  # a fresh log now and then: small logs hit segment starts more often
            root = TMP[0] / f"r{trial}"
            acked.clear()
        before = len(acked)
        _trial(root, trial, rng, acked, attempted, dir_entries)
        STATS["acked"] += len(acked) - before
        _verify(root, trial, acked, attempted)
        STATS["trials"] += 1


TMP: list[Path] = []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_power_loss_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    TMP[:] = [tmp_path]
    _run_trials(TRIALS, int(os.environ.get("WAL_POWERLOSS_SEED", "424242")))
    print("power loss:", STATS)
    assert STATS["acked"] > TRIALS * 5, STATS
    assert STATS["dropped"] + STATS["torn"] + STATS["zeroed"] > TRIALS, f"the power cuts hit nothing: {STATS}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_power_loss_that_also_takes_back_unsynced_directory_entries(tmp_path: Path) -> None:
    """As above, and each directory also loses the entry changes (files created, renamed, deleted) made since its
    last fsync, all but a prefix of them: an index file renamed into place without a directory sync may be missing
    or back under its temporary name, a lock file may be gone. Recovery must still keep every acknowledged message.
    """
    # Which cuts find an unsynced entry depends on thread timing too, not only on the seed: under load a round of
    # TRIALS found none now and then (CI), so up to four rounds, each checked in full, until one does.
    seed = int(os.environ.get("WAL_POWERLOSS_SEED", "424242")) + 1
    for extra in range(4):
        TMP[:] = [tmp_path / f"round{extra}"]
        TMP[0].mkdir()
        _run_trials(TRIALS, seed + 1000 * extra, dir_entries=True)
        print("power loss with directory entries:", STATS)
        if STATS["entries_undone"]:
            break
    assert STATS["acked"] > TRIALS * 5, STATS
    assert STATS["entries_undone"] > 0, f"no power cut took back a directory entry: {STATS}"


def test_power_loss_model_takes_back_unsynced_directory_entries(tmp_path: Path) -> None:
    """The directory model itself: entries changed since the directory's last fsync are taken back (here all of
    them), those made durable by an fsync of the directory stay."""

    class KeepNone(random.Random):
        def randint(self, a: int, b: int) -> int:
            return a

    def make(path: Path, data: bytes) -> None:
        fd = fops.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fops.write_all(fd, data)
        fops.fsync(fd)
        fops.close(fd)

    d = tmp_path / "ch"
    d.mkdir()
    fops = PowerLossFileOps(KeepNone(1), dir_entries=True)
    make(d / "durable", b"d")
    make(d / "old", b"o")
    make(d / "victim", b"v")
    make(d / "replaced", b"r-old")
    fops.fsync_dir(str(d))
    make(d / "new", b"n")  # created, never made durable
    fops.rename(str(d / "old"), str(d / "renamed"))
    fops.unlink(str(d / "victim"))
    make(d / "tmp", b"r-new")
    fops.rename(str(d / "tmp"), str(d / "replaced"))
    fops.power_loss()
    assert sorted(os.listdir(d)) == ["durable", "old", "replaced", "victim"]
    assert (d / "victim").read_bytes() == b"v"
    assert (d / "replaced").read_bytes() == b"r-old"
    assert fops.entries_undone == 5  # 2 creations ("new", "tmp"), 2 renames, 1 deletion

    fops2 = PowerLossFileOps(KeepNone(1), dir_entries=True)
    fops = fops2
    make(d / "new", b"n")
    fops2.unlink(str(d / "victim"))
    fops2.fsync_dir(str(d))
    fops2.power_loss()
    assert sorted(os.listdir(d)) == ["durable", "new", "old", "replaced"]
    assert fops2.entries_undone == 0


def test_power_loss_model_can_lose_unsynced_data(tmp_path: Path) -> None:
    """The simulation itself bites: with sync="never" an acknowledged append is not durable, and a power cut that
    drops every unsynced write loses it (so the test above would notice a writer that skips fdatasync)."""

    class DropAll(random.Random):
        def choice(self, seq):  # type: ignore[no-untyped-def, override]
            return "prefix" if "prefix" in seq else super().choice(seq)

        def randint(self, a: int, b: int) -> int:
            return a

        def random(self) -> float:
            return 0.99

    fops = PowerLossFileOps(DropAll(1))
    opener = build(tmp_path, segment_bytes=65536, sync="never", _file_ops=fops)
    w = open_rw(opener)
    for i in range(20):
        w.append(msg(b"x" * 100 + bytes([i]), tt=i + 1))
    fops.power_loss()
    opener2 = build(tmp_path)
    try:
        w2 = open_rw(opener2, "p1", 2)
        assert len(read_all(w2, idle=0.05)) < 20
        w2.close()
    finally:
        opener2.close()


@pytest.mark.parametrize("lost", [[0], [0, 1], [1]])
def test_power_cut_reordering_the_last_flush_keeps_the_log_available(tmp_path: Path, lost: list[int]) -> None:
    """Issue 6, deterministic: the power goes off between the last group commit's pwritev and its fdatasync, and
    the disk kept a later record of that flush but not an earlier one (writeback is not ordered). Nothing of that
    flush was acknowledged; recovery must cut it as a torn tail (it raised CorruptedError before format 2), keep
    every acknowledged message, and take appends again."""
    fops = PowerLossFileOps(random.Random(1))
    opener = build(tmp_path, segment_bytes=65536, sync="always", _file_ops=fops)
    w = open_rw(opener)
    acked = {int(w.append(msg(f"acked-{i}".encode() * 20, tt=i + 1)).value): f"acked-{i}".encode() * 20
             for i in range(12)}
    batch = [msg(f"lost-{k}".encode() * 30, tt=20 + k) for k in range(4)]
    fops.cut_before_sync(1, lambda path, i, n: not (path.endswith(".seg") and i in lost))
    with pytest.raises(WALError):
        w.append_batch(batch)  # one pwritev of 4 records; the power fails before its fdatasync
    assert fops.dropped == len(lost) and fops.kept >= 4 - len(lost)

    opener2 = build(tmp_path, segment_bytes=65536)
    try:
        w2 = open_rw(opener2, "p1", 2)
        got = {int(m.message_id.value): bytes(m.payload) for m in read_all(w2, idle=0.05)}  # type: ignore[attr-defined]
        # The flush's records before the first lost one survive (valid, in order); from it on everything is cut.
        kept = {13 + k: f"lost-{k}".encode() * 30 for k in range(min(lost))}
        assert got == {**acked, **kept}
        assert int(w2.append(msg(b"after", tt=99)).value) == 13 + min(lost)
        w2.close()
    finally:
        opener2.close()


class _FsyncgateOps(PowerLossFileOps):
    """Linux after a failed fdatasync: the pages that failed to write are marked clean and stay in the page cache,
    so later fdatasyncs of the file do not write them; only writing those bytes again makes them durable."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.fail_next_segment_sync = False
        self.poisoned: dict[str, list[Any]] = {}

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            path = self._paths.get(fd, "")
            if self.fail_next_segment_sync and path.endswith(".seg"):
                self.fail_next_segment_sync = False
                self.poisoned.setdefault(path, []).extend(self._unsynced.pop(path, []))
                raise OSError(errno.EIO, "Input/output error (injected writeback failure)")
        super().fdatasync(fd)

    def _record(self, fd: int, offset: int, data: bytes) -> None:
        super()._record(fd, offset, data)
        path = self._paths.get(fd)
        if path in self.poisoned:  # written again: these pages are dirty once more and the next sync takes them
            end = offset + len(data)
            self.poisoned[path] = [w for w in self.poisoned[path]
                                   if not (offset <= w.offset and w.offset + len(w.data) <= end)]

    def _synced(self, fd: int) -> None:
        super()._synced(fd)
        path = self._paths.get(fd)
        if path in self.poisoned:  # clean pages are not written by a later sync: still not durable
            self._unsynced[path] = list(self.poisoned[path]) + self._unsynced.get(path, [])


def test_reopen_in_the_same_process_after_a_failed_fdatasync_loses_nothing_at_the_next_power_cut(
    tmp_path: Path,
) -> None:
    """"The WAL is closed, reopen it to recover": a reopen in the same process reads the never-written bytes back
    from the page cache, and its fdatasync would not write them. Recovery must write the kept tail again before
    trusting it, or a later power cut leaves zeros under a flush that vouches for them: a log that will not open,
    and every message acknowledged after the reopen out of reach."""
    fops = _FsyncgateOps(random.Random(1))
    op1 = build(tmp_path, segment_bytes=1 << 20, sync="always", _file_ops=fops)
    w1 = open_rw(op1, "p1", 1)
    acked = [bytes(f"durable-{i}", "ascii") for i in range(5)]
    for i, p in enumerate(acked):
        w1.append(msg(p, tt=i + 1))
    fops.fail_next_segment_sync = True
    with pytest.raises(WALIOError):
        w1.append_batch([msg(b"eio-%d" % i, tt=10 + i) for i in range(3)])  # never acknowledged
    w1.close()
    op1.close()

    op2 = build(tmp_path, segment_bytes=1 << 20, sync="always", _file_ops=fops)
    w2 = open_rw(op2, "p1", 2)
    after = [b"acked-after-%d" % i for i in range(5)]
    for i, p in enumerate(after):
        w2.append(msg(p, tt=100 + i))
    fops.power_loss(lambda path, i, n: False)  # the power goes off; nothing that is not durable survives

    op3 = build(tmp_path, segment_bytes=1 << 20)
    try:
        w3 = open_rw(op3, "p1", 3)
        got = [bytes(m.payload) for m in read_all(w3, idle=0.05)]
        w3.close()
    finally:
        op3.close()
    assert [p for p in got if not p.startswith(b"eio-")] == acked + after  # the failed batch may or may not be there


class _CutBeforeOp(PowerLossFileOps):
    """The power goes off just before the ``at``-th call that changes the disk or makes something durable (an
    ``open`` that creates or truncates, a write, ``fallocate``, ``rename``, ``unlink``, ``fsync``, ``fdatasync``):
    every unsynced write is then kept (``keep_data``) or lost, and of each directory's entry changes not yet made
    durable the first ``keep_entries`` survive. Syncs only do the bookkeeping (the model decides what is durable),
    so that the hundreds of runs below stay fast."""

    def __init__(self, at: int, keep_entries: int, keep_data: bool) -> None:
        super().__init__(random.Random(0), dir_entries=True)
        self.at = at
        self.calls = 0
        self.pending_entries = -1  # entry changes not yet durable when the power went off
        keep = keep_entries

        class _Prefix(random.Random):
            def randint(self, a: int, b: int) -> int:
                return min(keep, b)

        self._prefix_rng = _Prefix(0)
        self._keep_data = keep_data

    def _step(self) -> None:
        if not self.crashed:
            self.calls += 1
            if self.calls == self.at:
                self.pending_entries = sum(len(ops) for ops in self._dir_ops.values())
                self.rng = self._prefix_rng
                keep = self._keep_data
                self.power_loss(lambda path, i, n: keep)
        self._guard()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        with self._lock:
            if flags & (os.O_CREAT | os.O_TRUNC):
                self._step()
            return super().open(path, flags, mode)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        with self._lock:
            self._step()
            return super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        with self._lock:
            self._step()
            return super().pwritev(fd, buffers, offset)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        with self._lock:
            self._step()
            return super().write(fd, data)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        with self._lock:
            self._step()
            super().fallocate(fd, offset, length)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._step()
            super().rename(src, dst)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._step()
            super().unlink(path)

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self._step()
            self._synced(fd)

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._step()
            self._synced(fd)
            if fd in self._dirs:
                self._dir_ops.pop(os.path.normpath(self._paths[fd]), None)


class _NoSync(FileOps):
    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass


# Batches of payload sizes for 4 KiB segments: rolls inside a batch, a record bigger than a segment, small ones.
_CUT_BATCHES = [[50], [3500, 40], [9000], [100, 2500, 700]]


def _run_cut(base: Path, work: Path, before: dict[int, bytes], at: int, keep_entries: int,
             keep_data: bool) -> _CutBeforeOp:
    """Copy ``base`` to ``work``, open it and append ``_CUT_BATCHES`` with the power cut before operation ``at``,
    recover, and check that every acknowledged message is there."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    fops = _CutBeforeOp(at, keep_entries, keep_data)
    acked = dict(before)
    attempted = set(before.values())
    opener = build(work, segment_bytes=4096, sync="always", _file_ops=fops)
    try:
        w = open_rw(opener, "p1", 2)
        for n, sizes in enumerate(_CUT_BATCHES):
            ps = [_payload(1, n, k, s) for k, s in enumerate(sizes)]
            attempted.update(ps)
            ids = w.append_batch([msg(p, tt=100 + 10 * n + k) for k, p in enumerate(ps)])
            acked.update(zip((int(i.value) for i in ids), ps, strict=True))
    except (WALError, OSError):
        assert fops.crashed, f"operation {at}: an append failed with the power on"
    if not fops.crashed:  # ``at`` is past the workload's last operation
        w.close()
        opener.close()
        return fops
    # The dead machine closes nothing: its opener is abandoned, as in the trials above.
    where = (f"power cut before operation {at}, {keep_entries} of {fops.pending_entries} directory entry changes "
             f"kept, unsynced writes {'kept' if keep_data else 'lost'}")
    opener = build(work, segment_bytes=4096, _file_ops=_NoSync())
    try:
        w2 = open_rw(opener, "p1", 3)
        got = {int(m.message_id.value): bytes(m.payload) for m in read_all(w2, idle=0)}  # type: ignore[attr-defined]
        w2.close()
    finally:
        opener.close()
    assert sorted(got) == list(range(1, len(got) + 1)), f"{where}: IDs not dense"
    for mid, p in acked.items():
        assert got.get(mid) == p, f"{where}: acknowledged message {mid} lost or changed"
    for mid, p in got.items():
        assert p in attempted, f"{where}: message {mid} holds bytes nobody appended"
    return fops


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("start", ["empty", "closed", "crashed"])
def test_a_power_cut_before_any_file_operation_keeps_every_acknowledged_message(tmp_path: Path, start: str) -> None:
    """The random trials above, made exhaustive for one single-threaded workload: the power goes off before each
    file operation in turn (the open and its recovery included: LOCK, TERM, index rebuilds, the first segment; then
    appends, rolls with their index renames, segment renames, directory syncs and successor marks), keeping each
    prefix of the directory's entry changes not yet made durable, and all or none of the unsynced writes. Every
    acknowledged message must come back, IDs dense, nothing nobody appended. ``start``: the log opened is new,
    closed cleanly, or left by a crash that kept every written byte."""
    base = tmp_path / "base"
    base.mkdir()
    before: dict[int, bytes] = {}
    if start != "empty":
        pre = PowerLossFileOps(random.Random(0))
        opener = build(base, segment_bytes=4096, sync="always", _file_ops=pre)
        w = open_rw(opener, "p1", 1)
        for i, size in enumerate((300, 3000, 5000, 200)):
            p = _payload(0, 9, i, size)
            before[int(w.append(msg(p, tt=i + 1)).value)] = p
        if start == "closed":
            w.close()
            opener.close()
        else:
            pre.process_crash()
    logging.disable(logging.CRITICAL)  # thousands of recoveries, each saying what it cut
    runs = 0
    try:
        at = 1
        while True:
            keep_entries, pending = 0, 0
            while keep_entries <= pending:
                for keep_data in (False, True):
                    fops = _run_cut(base, tmp_path / "work", before, at, keep_entries, keep_data)
                    if not fops.crashed:
                        assert at > 60, f"the workload made only {at - 1} file operations"
                        return
                    pending = fops.pending_entries
                    runs += 1
                keep_entries += 1
            at += 1
    finally:
        logging.disable(logging.NOTSET)
        print(f"power cuts before each file operation ({start}): {runs} runs, {at - 1} operations")
