"""Torn tails, flipped bytes and lost indexes: recovery cuts what may be torn and refuses what is damage."""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_rw, read_all

from wal.errors import CorruptedError, WALTimeoutError
from wal.options import DeliverPolicy
from wal.walimpls.localfs import FileOps, LocalFSMessageID
from wal.walimpls.localfs._format import (
    DATA_START,
    NEXT_MARK,
    NEXT_OFF,
    first_text,
    parse_first,
    parse_next_mark,
    scan_segment,
)
from wal.walimpls.localfs.tools import channel_info, repair, verify

SEG = 8192


def _payload(i: int) -> bytes:
    return f"message-{i:05d}-".encode() * 3


def _write(root: Path, n: int, *, crash_image: Path | None = None) -> None:
    """Append ``n`` messages; with ``crash_image``, copy the directory while the writer is open (a crash)."""
    opener = build(root, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        for i in range(n):
            w.append(msg(_payload(i), tt=100 + i, vchannel=f"v{i % 3}", props={"i": str(i)}))
        if crash_image is not None:
            shutil.copytree(root, crash_image)
        w.close()
    finally:
        opener.close()


def _segments(root: Path) -> list[Path]:
    return sorted((root / "p1").glob("*.seg"))


def _records(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every valid record of a segment."""
    with open(path, "rb") as f:
        data = f.read()
    fid = int(path.name[:20])
    out = []
    pos = DATA_START
    res = scan_segment(data, fid, len(data))
    from wal.walimpls.localfs._format import check_record

    while pos < res.end:
        r = check_record(data, pos, len(data))
        assert r is not None
        out.append((pos, r[0]))
        pos += r[0]
    return out


def _reopen_payloads(root: Path) -> list[bytes]:
    opener = build(root, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        got = [bytes(m.payload) for m in read_all(w, idle=0.1)]
        # appends continue after what was recovered
        mid = w.append(msg(b"next", tt=10**6))
        assert mid.value == len(got) + 1  # type: ignore[attr-defined]
        w.close()
        return got
    finally:
        opener.close()


@pytest.fixture
def crash(tmp_path: Path) -> Path:
    image = tmp_path / "image"
    _write(tmp_path / "live", 200, crash_image=image)
    return image


def test_crash_image_reopens_with_everything(crash: Path) -> None:
    assert _reopen_payloads(crash) == [_payload(i) for i in range(200)]


def test_cut_mid_record_is_torn_tail(crash: Path, caplog: pytest.LogCaptureFixture) -> None:
    last = _segments(crash)[-1]
    off, size = _records(last)[-1]
    os.truncate(last, off + size // 2)  # the file is cut inside its last record
    with caplog.at_level(logging.WARNING, logger="wal.localfs"):
        got = _reopen_payloads(crash)
    assert got == [_payload(i) for i in range(199)]
    assert any("torn" in r.getMessage() and str(off) in r.getMessage() for r in caplog.records)


def test_a_segment_cut_at_a_record_boundary_is_logged(crash: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cut exactly between records looks like a clean end; the file being shorter than its preallocation is the
    only trace. Recovery restored the size silently: now it says records past the cut may be lost."""
    last = _segments(crash)[-1]
    off, _size = _records(last)[-1]
    os.truncate(last, off)  # the last record is gone, the one before ends exactly here
    with caplog.at_level(logging.WARNING, logger="wal.localfs"):
        assert _reopen_payloads(crash) == [_payload(i) for i in range(199)]
    assert any("cut from outside" in r.getMessage() and str(off) in r.getMessage() for r in caplog.records)


def test_zeroed_half_record_is_torn_tail(crash: Path, caplog: pytest.LogCaptureFixture) -> None:
    last = _segments(crash)[-1]
    off, size = _records(last)[-1]
    with open(last, "r+b") as f:
        f.seek(off + 8)
        f.write(bytes(size - 8))  # header start survives, the rest never reached the disk
    with caplog.at_level(logging.WARNING, logger="wal.localfs"):
        assert _reopen_payloads(crash) == [_payload(i) for i in range(199)]
    assert any("cut" in r.getMessage() for r in caplog.records)


def test_appended_zeros_are_harmless(crash: Path) -> None:
    last = _segments(crash)[-1]
    with open(last, "ab") as f:
        f.write(bytes(10000))
    assert _reopen_payloads(crash) == [_payload(i) for i in range(200)]


@pytest.mark.parametrize("garbage", [os.urandom(300), b"\xa5" * 64, bytes(range(256)) * 3])
def test_appended_garbage_is_cut(crash: Path, garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    last = _segments(crash)[-1]
    off, size = _records(last)[-1]
    with open(last, "r+b") as f:
        f.seek(off + size)
        f.write(garbage)
    with caplog.at_level(logging.WARNING, logger="wal.localfs"):
        assert _reopen_payloads(crash) == [_payload(i) for i in range(200)]
    assert any(f"at offset {off + size}" in r.getMessage() for r in caplog.records)
    # The garbage is gone from the file (zeroed, not truncated), so the next writer appends cleanly.
    with open(last, "rb") as f:
        f.seek(off + size)
        assert f.read(len(garbage)) != garbage


def test_garbage_after_clean_close_is_cut(tmp_path: Path) -> None:
    _write(tmp_path, 50)
    last = _segments(tmp_path)[-1]
    off, size = _records(last)[-1]
    with open(last, "r+b") as f:
        f.seek(off + size)
        f.write(b"\x01garbage" * 10)
    assert _reopen_payloads(tmp_path) == [_payload(i) for i in range(50)]


def test_flip_in_tail_segment_before_valid_records_is_corruption(crash: Path) -> None:
    last = _segments(crash)[-1]
    recs = _records(last)
    assert len(recs) >= 3
    off, _size = recs[len(recs) // 2]
    with open(last, "r+b") as f:
        f.seek(off + 40)
        b = f.read(1)
        f.seek(off + 40)
        f.write(bytes([b[0] ^ 0x01]))
    opener = build(crash, segment_bytes=SEG)
    try:
        with pytest.raises(CorruptedError) as ei:
            open_rw(opener)
        assert ei.value.path == str(last) and ei.value.offset == off
        assert str(last) in str(ei.value) and str(off) in str(ei.value)
    finally:
        opener.close()
    # Nothing was cut: the damaged record and everything after it are still there for forensics.
    assert len(_records(last)) == len(recs) // 2


def test_flip_in_sealed_segment_raises_when_scanner_reaches_it(tmp_path: Path) -> None:
    _write(tmp_path, 200)
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    victim = segs[1]
    recs = _records(victim)
    off, size = recs[2]
    with open(victim, "r+b") as f:
        f.seek(off + size - 9)  # inside the payload
        b = f.read(1)
        f.seek(off + size - 9)
        f.write(bytes([b[0] ^ 0x40]))
    first_bad = int(victim.name[:20]) + 2
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        w = open_rw(opener)  # sealed segments are not scanned on open: their summaries vouch for them
        from wal.walimpls import ReadOption

        with w.read(ReadOption(name="s")) as s:
            got = []
            with pytest.raises(CorruptedError) as ei:
                while True:
                    for m in s.recv_batch(7, 1.0):
                        got.append(m)
                        assert bytes(m.payload) == _payload(m.message_id.value - 1)  # never a wrong payload
            assert ei.value.path == str(victim) and ei.value.offset == off
            assert [m.message_id.value for m in got] == list(range(1, first_bad))
            assert s.error() is ei.value and s.done().is_set()
            with pytest.raises(CorruptedError):
                s.recv(0.1)  # stays failed
        w.close()
    finally:
        opener.close()
    problems = verify(str(tmp_path))
    assert any(p.path == str(victim) and p.offset == off for p in problems)


def test_flipped_segment_header_is_corruption(tmp_path: Path) -> None:
    _write(tmp_path, 100)
    seg = _segments(tmp_path)[0]
    with open(seg, "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        with pytest.raises(CorruptedError, match="header"):
            open_rw(opener)
    finally:
        opener.close()


def _start_from(root: Path, mid: int) -> list[int]:
    opener = build(root, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        got = read_all(w, DeliverPolicy.start_from(LocalFSMessageID(mid)), idle=0.1)
        w.close()
        return [m.message_id.value for m in got]  # type: ignore[attr-defined]
    finally:
        opener.close()


def test_deleted_index_is_rebuilt_on_open(tmp_path: Path) -> None:
    _write(tmp_path, 300)
    idxs = sorted((tmp_path / "p1").glob("*.idx"))
    original = idxs[1].read_bytes()
    idxs[1].unlink()
    idxs[-1].unlink()  # the active segment's too
    assert _start_from(tmp_path, 150) == list(range(150, 301))
    assert idxs[1].read_bytes() == original
    assert idxs[-1].exists()


def test_corrupt_index_is_rebuilt_when_a_seek_uses_it(tmp_path: Path) -> None:
    _write(tmp_path, 300)
    segs = _segments(tmp_path)
    target_seg = segs[2]
    first = int(target_seg.name[:20])
    idx = target_seg.with_suffix(".idx")
    original = idx.read_bytes()
    raw = bytearray(original)
    raw[40] ^= 0xFF  # inside the first entry: same size, the header still looks right
    idx.write_bytes(bytes(raw))
    assert _start_from(tmp_path, first + 3) == list(range(first + 3, 301))
    assert idx.read_bytes() == original


def test_index_pointing_elsewhere_is_not_trusted(tmp_path: Path) -> None:
    """An index whose entries are well-formed but wrong (pointing at other records) is detected and rebuilt."""
    _write(tmp_path, 300)
    segs = _segments(tmp_path)
    seg = segs[1]
    idx = seg.with_suffix(".idx")
    from wal.walimpls.localfs._format import index_file_bytes, parse_index

    entries = parse_index(idx.read_bytes(), int(seg.name[:20])).entries
    wrong = [(mid + 1, tt, pos) for mid, tt, pos in entries]
    idx.write_bytes(index_file_bytes(int(seg.name[:20]), wrong, sealed=True))
    first = int(seg.name[:20])
    assert _start_from(tmp_path, first + 1) == list(range(first + 1, 301))


def test_never_reads_a_wrong_payload_after_random_flips(tmp_path: Path) -> None:
    """Flip random bytes in the data area; whatever is delivered is exactly what was written."""
    import random

    rng = random.Random(7)
    _write(tmp_path, 200)
    segs = _segments(tmp_path)
    for _ in range(20):
        seg = rng.choice(segs[:-1])
        recs = _records(seg)
        if not recs:
            continue
        with open(seg, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
            end = recs[-1][0] + recs[-1][1]
            p = rng.randrange(DATA_START, end)
            mm[p] ^= 1 << rng.randrange(8)
            mm.close()
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        from wal.walimpls import ReadOption

        with w.read(ReadOption(name="s")) as s:
            with pytest.raises(CorruptedError):
                while True:
                    for m in s.recv_batch(64, 1.0):
                        assert bytes(m.payload) == _payload(m.message_id.value - 1)
                        assert m.properties["i"] == str(m.message_id.value - 1)
        w.close()
    finally:
        opener.close()


# -- issue 6: a power cut that reorders the writeback of the last, never-synced flush --------------------------------
# Every test below builds its damage exactly: a log whose last group commit (records A B C, one pwritev) never got
# its fdatasync (injected EIO: the appends fail, nothing of it is acknowledged), then A's bytes are zeroed while C
# stays, as a disk whose page writeback is not ordered can leave it.


def _flags(path: Path, off: int) -> int:
    with open(path, "rb") as f:
        f.seek(off + 9)
        return f.read(1)[0]


def _last_flush_unsynced(root: Path, *, sync: str = "always", then_synced: bool = False) -> list[int]:
    """Ten acknowledged appends, then the flush A B C (acknowledged, plus one more flush D, when ``then_synced``;
    else its fdatasync fails). Returns the IDs that were acknowledged."""
    from _faults import Fault, FaultyFileOps

    from wal.errors import WALIOError

    fops = FaultyFileOps()
    opener = build(root, segment_bytes=65536, sync=sync, _file_ops=fops)
    acked: list[int] = []
    try:
        w = open_rw(opener)
        for i in range(10):
            acked.append(w.append(msg(_payload(i), tt=100 + i)).value)
        batch = [msg(_payload(10 + k) * 4, tt=110 + k) for k in range(3)]
        if then_synced:
            acked += [m.value for m in w.append_batch(batch)]
            acked.append(w.append(msg(_payload(13), tt=113)).value)
            w._close_fds()  # a crash: no clean-close summary, so the next open scans the tail
        else:
            fops.arm(Fault("fdatasync"))
            with pytest.raises(WALIOError):
                w.append_batch(batch)  # written by one pwritev, never synced: not acknowledged
    finally:
        opener.close()
    return acked


def _zero(path: Path, off: int, size: int) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(size))


def test_reordered_power_cut_in_last_flush_is_a_torn_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    acked = _last_flush_unsynced(tmp_path)
    seg = _segments(tmp_path)[-1]
    recs = _records(seg)
    assert len(recs) == 13
    (a_off, a_size), _b, (c_off, c_size) = recs[-3:]
    assert _flags(seg, a_off) == 3 and _flags(seg, c_off) == 0  # A starts a flush written onto durable data
    _zero(seg, a_off, a_size)  # writeback lost A, kept B and C
    assert seg.read_bytes()[c_off : c_off + c_size] != bytes(c_size)  # C is intact on disk
    with caplog.at_level(logging.WARNING, logger="wal.localfs"):
        got = _reopen_payloads(tmp_path)  # before format 2: CorruptedError "a valid record follows"
    assert got == [_payload(i) for i in range(10)] and len(acked) == 10
    cut = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert len(cut) == 1 and f"at offset {a_off}" in cut[0] and "IDs 12..13" in cut[0]
    assert seg.read_bytes()[c_off : c_off + c_size] == bytes(c_size)  # C was zeroed (the next append is smaller)


def test_reordered_power_cut_keeping_only_a_later_record_is_cut(tmp_path: Path) -> None:
    _last_flush_unsynced(tmp_path)
    seg = _segments(tmp_path)[-1]
    (a_off, a_size), (b_off, b_size), _c = _records(seg)[-3:]
    with open(seg, "r+b") as f:  # A torn in the middle (its header survives), B lost, C kept
        f.seek(a_off + 40)
        f.write(bytes(a_size - 40))
    _zero(seg, b_off, b_size)
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        assert [bytes(m.payload) for m in read_all(w, idle=0.1)] == [_payload(i) for i in range(10)]
        assert w.append(msg(b"next")).value == 11
        w.close()
    finally:
        opener.close()


def test_damage_before_a_flush_written_onto_durable_data_is_corruption(tmp_path: Path) -> None:
    acked = _last_flush_unsynced(tmp_path, then_synced=True)
    seg = _segments(tmp_path)[-1]
    recs = _records(seg)
    assert len(recs) == 14 and len(acked) == 14
    (a_off, a_size), _b, _c, (d_off, _d) = recs[-4:]
    assert _flags(seg, d_off) == 3  # D's flush was written after A B C were synced: it vouches for them
    _zero(seg, a_off, a_size)
    before = seg.read_bytes()
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        with pytest.raises(CorruptedError) as ei:
            open_rw(opener)
    finally:
        opener.close()
    assert ei.value.path == str(seg) and ei.value.offset == a_off
    assert f"offset {a_off}" in str(ei.value) and f"PREV_DURABLE) follows at offset {d_off}" in str(ei.value)
    assert seg.read_bytes() == before  # nothing cut: the acknowledged B, C, D are still there


def _torn_and_damaged(tmp_path: Path, keep: int) -> tuple[Path, Path, int]:
    """Two logs whose last flush wrote record A (the 11th) and later ones: in ``torn`` that flush was never synced,
    in ``damaged`` a later flush vouches for it. A is zeroed after its first ``keep`` bytes in both; returns the
    roots and A's offset."""
    torn, damaged = tmp_path / "torn", tmp_path / "damaged"
    _last_flush_unsynced(torn)
    _last_flush_unsynced(damaged, then_synced=True)
    off = 0
    for root in (torn, damaged):
        seg = _segments(root)[-1]
        off, size = _records(seg)[10]
        _zero(seg, off + keep, size - keep)
    return torn, damaged, off


def test_read_only_follower_agrees_with_recovery(tmp_path: Path) -> None:
    """A follower waits at a torn tail (the next writer cuts it) and fails at proven damage."""
    from _localfs_util import open_ro

    torn, damaged, _ = _torn_and_damaged(tmp_path, 8)  # a zero header is a follower's frontier: keep 8 bytes
    opener = build(torn, segment_bytes=SEG)
    try:
        r = open_ro(opener)
        assert [bytes(m.payload) for m in read_all(r, idle=0.1)] == [_payload(i) for i in range(10)]
        r.close()
    finally:
        opener.close()
    opener = build(damaged, segment_bytes=SEG)
    try:
        r = open_ro(opener)
        with pytest.raises(CorruptedError) as ei:
            read_all(r, idle=0.1)
        assert ei.value.offset == _records(_segments(damaged)[-1])[-1][0] + _records(_segments(damaged)[-1])[-1][1]
        r.close()
    finally:
        opener.close()


def test_sync_never_flushes_vouch_for_nothing(tmp_path: Path) -> None:
    """Under sync="never" no flush but a segment's first is written onto known-durable data, so a power cut may
    take any of them: damage followed only by such flushes is a torn tail, cut from the first bad record."""
    _last_flush_unsynced(tmp_path, sync="never", then_synced=True)
    seg = _segments(tmp_path)[-1]
    recs = _records(seg)
    assert _flags(seg, recs[0][0]) == 3  # the segment's first flush: only the synced header before it
    assert [_flags(seg, off) for off, _ in recs[1:]] == [1] * 10 + [0, 0, 1]
    _zero(seg, recs[10][0], recs[10][1])
    assert _reopen_payloads(tmp_path) == [_payload(i) for i in range(10)]


@pytest.mark.parametrize(("interval", "want"), [(0.005, 3), (60.0, 1)])
def test_interval_flush_vouches_only_after_a_sync(tmp_path: Path, interval: float, want: int) -> None:
    import time

    opener = build(tmp_path, segment_bytes=SEG, sync="interval", sync_interval=interval)
    try:
        w = open_rw(opener)
        w.append(msg(b"first"))
        time.sleep(0.1)  # the syncer runs (short interval) or not (long one)
        w.append(msg(b"second"))
        seg = _segments(tmp_path)[-1]
        assert _flags(seg, _records(seg)[1][0]) == want
        w.close()
    finally:
        opener.close()


def _to_format_1(path: Path) -> None:
    """Rewrite a segment as format 1 wrote it: header version 1, record flags 0 (CRCs re-stamped)."""
    from wal.walimpls.localfs._format import SEG_HEADER, SegmentHeader, crc32c

    recs = _records(path)
    raw = bytearray(path.read_bytes())
    hdr = SegmentHeader.unpack(bytes(raw[: SEG_HEADER.size]), str(path))
    hdr.version = 1
    raw[: SEG_HEADER.size] = hdr.pack()
    for off, _size in recs:
        raw[off + 9] = 0
        body_len = int.from_bytes(raw[off + 4 : off + 8], "little")
        raw[off : off + 4] = crc32c(bytes(raw[off + 4 : off + 32 + body_len])).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def _version(path: Path) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(10)[8:10], "little")


def test_format_1_log_opens_and_continues_in_format_2(tmp_path: Path) -> None:
    _write(tmp_path, 200)
    for seg in _segments(tmp_path):
        _to_format_1(seg)
    old = _segments(tmp_path)
    assert verify(str(tmp_path)) == []
    assert _reopen_payloads(tmp_path) == [_payload(i) for i in range(200)] + []
    segs = _segments(tmp_path)
    # The format-1 tail was sealed on open: new records go to a format-2 segment, old segments stay as they were.
    assert segs[: len(old)] == old and [_version(s) for s in old] == [1] * len(old)
    assert len(segs) == len(old) + 1 and _version(segs[-1]) == 2
    assert _reopen_payloads(tmp_path)[-1] == b"next"


def test_format_1_keeps_the_strict_rule(tmp_path: Path) -> None:
    """Format 1 has no flush marks: any valid record after a bad one is damage, as it always was."""
    _last_flush_unsynced(tmp_path)
    seg = _segments(tmp_path)[-1]
    _to_format_1(seg)
    a_off, a_size = _records(seg)[-3]
    _zero(seg, a_off, a_size)
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        with pytest.raises(CorruptedError) as ei:
            open_rw(opener)
        assert ei.value.offset == a_off and "a valid record follows" in str(ei.value)
    finally:
        opener.close()


def test_verify_and_repair_agree_with_recovery(tmp_path: Path) -> None:
    from wal.walimpls.localfs.tools import repair

    torn, damaged, _ = _torn_and_damaged(tmp_path, 0)
    seg = _segments(torn)[-1]
    a_off = _records(seg)[-1][0] + _records(seg)[-1][1]
    problems = verify(str(torn))
    assert len(problems) == 1 and problems[0].offset == a_off and "torn tail of" in problems[0].message
    nbytes = int(problems[0].message.split("torn tail of ")[1].split()[0])
    assert "IDs 12..13" in problems[0].message
    report = repair(str(torn), "p1")
    assert report.cut == [f"{seg}: cut {nbytes} torn bytes at offset {a_off} (end of data); 2 intact record(s) "
                          "after it, IDs 12..13, were never known durable and were cut too"]
    assert verify(str(torn)) == [] and repair(str(torn), "p1").cut == []
    assert _reopen_payloads(torn) == [_payload(i) for i in range(10)]

    seg = _segments(damaged)[-1]
    before = seg.read_bytes()
    problems = verify(str(damaged))
    assert [p.offset for p in problems] == [a_off] and "PREV_DURABLE" in problems[0].message
    with pytest.raises(CorruptedError) as ei:
        repair(str(damaged), "p1")
    assert ei.value.offset == a_off and seg.read_bytes() == before


def test_first_flush_after_a_crash_vouches_for_what_recovery_kept(tmp_path: Path) -> None:
    """Recovery syncs the tail it keeps (it may have come from a dead writer's page cache), so the first flush of
    the next writer carries PREV_DURABLE, and damage in the old writer's last flush is then caught."""
    _last_flush_unsynced(tmp_path, then_synced=True)  # 14 records, crashed writer (no clean close)
    opener = build(tmp_path, segment_bytes=65536)
    try:
        w = open_rw(opener, "p1", 2)
        w.append(msg(b"after the crash"))
        w._close_fds()  # crash again
    finally:
        opener.close()
    seg = _segments(tmp_path)[-1]
    recs = _records(seg)
    assert len(recs) == 15 and _flags(seg, recs[-1][0]) == 3
    _zero(seg, recs[-2][0], recs[-2][1])  # the old writer's last flush (D), acknowledged and durable
    opener = build(tmp_path, segment_bytes=65536)
    try:
        with pytest.raises(CorruptedError) as ei:
            open_rw(opener, "p1", 3)
        assert ei.value.offset == recs[-2][0]
    finally:
        opener.close()


def test_a_flush_split_by_a_roll_marks_both_parts(tmp_path: Path) -> None:
    """A group commit that does not fit is written as two flushes, one per segment; each part starts with
    FLUSH_START|PREV_DURABLE (sync="always": the old segment was synced; the new one holds only its header)."""
    opener = build(tmp_path, segment_bytes=4096)
    try:
        w = open_rw(opener)
        w.append(msg(b"a" * 1000))
        w.append_batch([msg(bytes([65 + k]) * 1000) for k in range(3)])
        w.close()
    finally:
        opener.close()
    old, new = _segments(tmp_path)
    assert [_flags(old, off) for off, _ in _records(old)] == [3, 3]
    assert [_flags(new, off) for off, _ in _records(new)] == [3, 0]


def test_sync_never_still_makes_a_segment_durable_before_sealing_it(tmp_path: Path) -> None:
    """A sealed segment is trusted on open (never scanned), so even under sync="never" its data must be synced
    before the seal summary is written, and the summary synced before the next segment starts: otherwise a power
    cut leaves a sealed segment with a torn tail and a log that will not open."""
    from wal.walimpls.localfs import FileOps
    from wal.walimpls.localfs._format import SEAL_OFF

    class Recording(FileOps):
        def __init__(self) -> None:
            self.ops: list[tuple[str, int, int]] = []

        def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
            self.ops.append(("pwrite", fd, offset))
            return super().pwrite(fd, data, offset)

        def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
            self.ops.append(("pwritev", fd, offset))
            return super().pwritev(fd, buffers, offset)

        def fdatasync(self, fd: int) -> None:
            self.ops.append(("fdatasync", fd, 0))
            super().fdatasync(fd)

    fops = Recording()
    opener = build(tmp_path, segment_bytes=4096, sync="never", _file_ops=fops)
    try:
        w = open_rw(opener)
        for i in range(40):
            w.append(msg(b"x" * 200, tt=i + 1))
        w.close()
    finally:
        opener.close()
    seals = [k for k, (op, _fd, off) in enumerate(fops.ops) if op == "pwrite" and off == SEAL_OFF]
    assert len(seals) >= 2, "the test needs segment rolls"
    for k in seals:
        fd = fops.ops[k][1]
        data_writes = [j for j, (op, f, _o) in enumerate(fops.ops[:k]) if f == fd and op == "pwritev"]
        syncs_before = [j for j, (op, f, _o) in enumerate(fops.ops[:k]) if f == fd and op == "fdatasync"]
        assert data_writes and syncs_before and syncs_before[-1] > data_writes[-1], "data not synced before its seal"
        assert ("fdatasync", fd, 0) in fops.ops[k + 1 :], "seal summary never synced"


def test_retention_makes_each_deletion_durable_before_the_next(tmp_path: Path) -> None:
    """Retention deletes the oldest segments first; with a directory sync after each, a power cut can bring back
    only a prefix of them, never leave a gap between segments (which recovery refuses as corruption)."""
    from wal.walimpls.localfs import FileOps

    class Recording(FileOps):
        def __init__(self) -> None:
            self.ops: list[tuple[str, str]] = []

        def unlink(self, path: str) -> None:
            self.ops.append(("unlink", os.path.basename(path)))
            super().unlink(path)

        def fsync_dir(self, path: str) -> None:
            self.ops.append(("fsync_dir", ""))
            super().fsync_dir(path)

    fops = Recording()
    opener = build(tmp_path, segment_bytes=4096, _file_ops=fops)
    try:
        w = open_rw(opener)
        ids = [w.append(msg(b"x" * 300, tt=i + 1)) for i in range(60)]
        fops.ops.clear()
        w.truncate(ids[-1])
        w.close()
    finally:
        opener.close()
    seg_unlinks = [k for k, (op, name) in enumerate(fops.ops) if op == "unlink" and name.endswith(".seg")]
    assert len(seg_unlinks) >= 3, "the test needs several segments deleted at once"
    for a, b in itertools.pairwise(seg_unlinks):
        assert ("fsync_dir", "") in fops.ops[a + 1 : b], "a segment deleted before the previous deletion was durable"
    assert fops.ops[seg_unlinks[-1] + 1 :].count(("fsync_dir", "")) >= 1


def test_read_only_follower_reports_a_zeroed_header_once_a_later_flush_vouches_for_it(tmp_path: Path) -> None:
    """A whole record zeroed, header included: zeros are a follower's frontier on every wait, so it looks past
    them only after waiting there a while. Damage proven by a later vouching flush is then CorruptedError (as
    recovery says), within seconds instead of never; a torn tail of the same shape is still waited at."""
    from _localfs_util import open_ro

    torn, damaged, off = _torn_and_damaged(tmp_path, 0)
    opener = build(torn, segment_bytes=SEG)
    try:
        r = open_ro(opener)
        # Idle for 3.5 s: past the first look (after 1 s) and the second (2 s later); still only a frontier.
        assert [bytes(m.payload) for m in read_all(r, idle=3.5)] == [_payload(i) for i in range(10)]
        r.close()
    finally:
        opener.close()
    opener = build(damaged, segment_bytes=SEG)
    try:
        r = open_ro(opener)
        t0 = time.monotonic()
        with pytest.raises(CorruptedError) as ei:
            read_all(r, idle=5.0)
        assert time.monotonic() - t0 < 4.5
        assert ei.value.offset == off
        r.close()
    finally:
        opener.close()


def test_a_follower_looking_past_zeros_while_the_writer_appends_there_sees_no_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower reads zeros at its frontier, then the writer appends two flushes (the second vouching for
    everything before it) before the follower looks past the zeros: the vouching record is there, but so is a
    valid record where the zeros were. That is the frontier moving, not damage (found by review)."""
    from _localfs_util import open_ro

    import wal.walimpls.localfs._scanner as sc
    from wal.walimpls import ReadOption

    monkeypatch.setattr(sc, "_ZERO_CHECK_FIRST", 0.05)
    w_op = build(tmp_path, sync="always")
    w = open_rw(w_op)
    tt = [0]

    def append(n: int) -> None:
        for _ in range(n):
            tt[0] += 1
            w.append(msg(b"x" * 100, tt=tt[0]))

    append(3)
    r_op = build(tmp_path)
    r = open_ro(r_op)
    real = sc.find_valid_record_after
    state = {"armed": False, "fired": False}

    def racing(mv, pos, limit, after_id, *more):  # type: ignore[no-untyped-def]
        if state["armed"] and not state["fired"]:  # the writer runs between the zeros and the look past them
            state["fired"] = True
            append(2)
        return real(mv, pos, limit, after_id, *more)

    monkeypatch.setattr(sc, "find_valid_record_after", racing)
    try:
        with r.read(ReadOption(name="t", deliver_policy=DeliverPolicy.all())) as s:
            got = s.recv_batch(100, 1.0)
            assert len(got) == 3
            time.sleep(0.2)  # waited at the frontier past the first look's delay
            with pytest.raises(WALTimeoutError):
                s.recv_batch(100, 0.1)
            state["armed"] = True
            while len(got) < 5:
                got += s.recv_batch(100, 2.0)
        assert state["fired"]
        assert [int(m.message_id.value) for m in got] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    finally:
        r.close()
        r_op.close()
        w.close()
        w_op.close()


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "p1").iterdir())}


def _delete_newest(root: Path, n: int) -> int:
    """Delete the ``n`` newest segments (and their indexes) from outside; the first ID deleted."""
    segs = _segments(root)
    for seg in segs[-n:]:
        seg.unlink()
        seg.with_suffix(".idx").unlink()
    return int(segs[-n].name[:20])


def test_each_roll_marks_its_successor(tmp_path: Path) -> None:
    _write(tmp_path, 200)
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    for seg, nxt in itertools.pairwise(segs):
        with open(seg, "rb") as f:
            f.seek(NEXT_OFF)
            assert parse_next_mark(f.read(NEXT_MARK.size)) == int(nxt.name[:20])
    with open(segs[-1], "rb") as f:
        f.seek(NEXT_OFF)
        assert parse_next_mark(f.read(NEXT_MARK.size)) is None


@pytest.mark.parametrize("deleted", [1, 2])
def test_newest_segments_deleted_from_outside_are_refused_not_reused(tmp_path: Path, deleted: int) -> None:
    """Before the successor mark, deleting the newest segment passed every tool: the writer opened at the end of
    the sealed segment left and gave the lost messages' IDs to new ones."""
    _write(tmp_path, 200)
    lost = _delete_newest(tmp_path, deleted)
    before = _files(tmp_path)
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match=f"no segment from ID {lost} on is left") as e:
            open_rw(opener)
    assert e.value.offset == NEXT_OFF
    problems = verify(str(tmp_path), "p1")
    assert [(p.path, p.offset) for p in problems] == [(str(_segments(tmp_path)[-1]), NEXT_OFF)], problems
    info = channel_info(str(tmp_path), "p1")  # shows what is left, and from where it is lost (it raised)
    assert info.lost_from == lost and info.segments[-1].last_id == lost - 1
    with pytest.raises(CorruptedError, match="accept-lost-segments"):
        repair(str(tmp_path), "p1")
    assert _files(tmp_path) == before  # a refused repair changes nothing
    report = repair(str(tmp_path), "p1", accept_lost_segments=True)
    assert report.changed and any(f"from ID {lost} on" in line for line in report.cut), report
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path) as opener:
        w = open_rw(opener)
        assert w.append(msg(b"after", tt=10_000)) == LocalFSMessageID(lost)  # the accepted reuse
        w.close()


def test_a_roll_cut_short_by_a_crash_still_opens_and_is_finished(tmp_path: Path) -> None:
    """Sealed, successor never made (a crash between the two): no mark, so this is no damage."""
    _write(tmp_path, 200)
    lost = _delete_newest(tmp_path, 1)
    last = _segments(tmp_path)[-1]
    with open(last, "r+b") as f:  # as the roll left it before making the successor
        f.seek(NEXT_OFF)
        f.write(bytes(NEXT_MARK.size))
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path) as opener:
        w = open_rw(opener)
        assert w.append(msg(b"after", tt=10_000)) == LocalFSMessageID(lost)
        w.close()
    with open(last, "rb") as f:  # the open made the successor, then marked it
        f.seek(NEXT_OFF)
        assert parse_next_mark(f.read(NEXT_MARK.size)) == lost


def test_newest_segments_deleted_after_the_last_ones_seal_summary_was_damaged_are_refused_too(tmp_path: Path) -> None:
    """The mark is written after the seal is durable, so a mark on a segment whose seal summary is bad is still
    the proof of a successor. Recovery read the mark only behind a valid seal: the open took the segment as the
    active one and reused the lost IDs, while verify reported the loss and repair could not clear it."""
    _write(tmp_path, 200)
    lost = _delete_newest(tmp_path, 1)
    last = _segments(tmp_path)[-1]
    with open(last, "r+b") as f:  # damage the seal summary (a byte of its first time tick)
        f.seek(128 + 20)
        b = f.read(1)
        f.seek(128 + 20)
        f.write(bytes([b[0] ^ 0xFF]))
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match=f"no segment from ID {lost} on is left") as e:
            open_rw(opener)
    assert e.value.offset == NEXT_OFF
    report = repair(str(tmp_path), "p1", accept_lost_segments=True)
    assert any(f"from ID {lost} on" in line for line in report.cut), report
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path) as opener:
        w = open_rw(opener)
        assert w.append(msg(b"after", tt=10_000)) == LocalFSMessageID(lost)
        w.close()


def test_an_open_marks_a_successor_that_a_crash_or_an_older_version_left_unmarked(tmp_path: Path) -> None:
    """A crash between making the successor and marking the sealed segment (or a log rolled by a version before
    the mark) leaves the segment before the active one unmarked: deleting the active segment then went unnoticed
    for as long as that segment stayed the newest sealed one. The next open marks it."""
    _write(tmp_path, 200)
    before_last = _segments(tmp_path)[-2]
    with open(before_last, "r+b") as f:  # as SIGKILL between the successor's rename and the mark leaves it
        f.seek(NEXT_OFF)
        f.write(bytes(NEXT_MARK.size))
    with build(tmp_path) as opener:
        open_rw(opener).close()
    lost = _delete_newest(tmp_path, 1)
    with open(before_last, "rb") as f:
        f.seek(NEXT_OFF)
        assert parse_next_mark(f.read(NEXT_MARK.size)) == lost
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match=f"no segment from ID {lost} on is left"):
            open_rw(opener)


def _delete_oldest(root: Path, n: int) -> tuple[int, int]:
    """Delete the ``n`` oldest segments (and their indexes) from outside; the first ID deleted and the first left."""
    segs = _segments(root)
    for seg in segs[:n]:
        seg.unlink()
        seg.with_suffix(".idx").unlink()
    return int(segs[0].name[:20]), int(segs[n].name[:20])


def _first(root: Path) -> int | None:
    return parse_first((root / "p1" / "FIRST").read_bytes())


@pytest.mark.parametrize("deleted", [1, 2])
def test_oldest_segments_deleted_from_outside_are_refused_not_taken_for_retention(tmp_path: Path,
                                                                                   deleted: int) -> None:
    """Before FIRST, deleting the oldest segments passed every tool: it looked like retention, and readers from
    the earliest message silently started after the lost ones."""
    _write(tmp_path, 200)
    lost, left = _delete_oldest(tmp_path, deleted)
    before = _files(tmp_path)
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match=re.escape(f"no segment holds IDs {lost}..{left - 1}")) as e:
            open_rw(opener)
    assert e.value.path == str(tmp_path / "p1" / "FIRST")
    problems = verify(str(tmp_path), "p1")
    assert [p.path for p in problems] == [str(tmp_path / "p1" / "FIRST")], problems
    assert f"IDs {lost}..{left - 1}" in problems[0].message
    info = channel_info(str(tmp_path), "p1")
    assert info.lost_front == (lost, left) and info.segments[0].first_id == left
    with pytest.raises(CorruptedError, match="accept-lost-segments"):
        repair(str(tmp_path), "p1")
    assert _files(tmp_path) == before  # a refused repair changes nothing
    report = repair(str(tmp_path), "p1", accept_lost_segments=True)
    assert report.changed and any(f"IDs {lost}..{left - 1}" in line for line in report.cut), report
    assert _first(tmp_path) == left
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path) as opener:
        w = open_rw(opener)
        assert int(read_all(w)[0].message_id.value) == left  # type: ignore[attr-defined]
        assert w.append(msg(b"after", tt=10_000)) == LocalFSMessageID(201)  # IDs go on after the newest
        w.close()


def test_every_segment_deleted_from_outside_is_refused_not_numbered_from_1_again(tmp_path: Path) -> None:
    """Before FIRST, a channel whose segments were all deleted opened as a new log and gave ID 1 again."""
    _write(tmp_path, 200)
    _delete_oldest(tmp_path, len(_segments(tmp_path)) - 1)
    last = _segments(tmp_path)[0]
    last.unlink()
    last.with_suffix(".idx").unlink()
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match="every segment is gone"):
            open_rw(opener)
    assert [p.path for p in verify(str(tmp_path), "p1")] == [str(tmp_path / "p1" / "FIRST")]
    assert channel_info(str(tmp_path), "p1").lost_front == (1, None)
    with pytest.raises(CorruptedError, match="every segment is gone"):
        repair(str(tmp_path), "p1", accept_lost_segments=True)  # nothing left to number new messages after


def test_retention_and_truncate_move_first_before_they_delete(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=SEG, retention_bytes=4 * SEG) as opener:
        w = open_rw(opener)
        assert _first(tmp_path) == 1  # written with the log's first segment
        for i in range(300):
            w.append(msg(_payload(i), tt=100 + i))
        segs = _segments(tmp_path)
        assert int(segs[0].name[:20]) > 1  # retention deleted some
        assert _first(tmp_path) == int(segs[0].name[:20])
        w.truncate(LocalFSMessageID(int(segs[2].name[:20])))
        assert _first(tmp_path) == int(_segments(tmp_path)[0].name[:20]) == int(segs[2].name[:20])
        w.close()
    # A crash between moving FIRST and deleting leaves it above segments still there: no damage.
    (tmp_path / "p1" / "FIRST").write_bytes(first_text(int(_segments(tmp_path)[1].name[:20])))
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path, segment_bytes=SEG) as opener:
        open_rw(opener).close()


class _GatedUnlink(FileOps):
    """Holds the first unlink of a path ending with ``block`` until ``go`` is set."""

    def __init__(self) -> None:
        self.block = ""
        self.entered = threading.Event()
        self.go = threading.Event()

    def unlink(self, path: str) -> None:
        if self.block and path.endswith(self.block):
            self.block = ""
            self.entered.set()
            self.go.wait()
        super().unlink(path)


class _ContendedLock:
    """A lock that says when an acquire finds it held."""

    def __init__(self, contended: threading.Event) -> None:
        self._lock = threading.Lock()
        self._contended = contended

    def acquire(self, blocking: bool = True) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        self._contended.set()
        return self._lock.acquire(blocking=blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _watched_deletions(opener: Any, tmp_path: Path, n: int, step: threading.Event) -> tuple[Any, list[int]]:
    """A writer holding ``n`` messages in 4 KiB segments, whose deletion lock sets ``step`` when a deletion finds
    another one running (absent before the fix: then nothing waits); and the first IDs of its segments."""
    w = open_rw(opener)
    for i in range(n):
        w.append(msg(b"x" * 300, tt=100 + i))
    w._delete_lock = _ContendedLock(step)
    return w, [int(p.name[:20]) for p in _segments(tmp_path)]


def test_two_deletions_side_by_side_leave_no_gap_between_segments(tmp_path: Path) -> None:
    """A truncate deleting while another (or a roll's retention) deleted newer segments left a gap on disk: live
    readers saw damage, and a crash then left a log that recovery refused (review 12d)."""
    fops = _GatedUnlink()
    step = threading.Event()  # the second truncate is done, or waits for the first
    with build(tmp_path, segment_bytes=4096, _file_ops=fops) as opener:
        w, ids = _watched_deletions(opener, tmp_path, 200, step)
        fops.block = f"{ids[0]:020d}.seg"
        first = threading.Thread(target=w.truncate, args=(LocalFSMessageID(ids[2]),))
        first.start()
        assert fops.entered.wait(60)
        second = threading.Thread(target=lambda: (w.truncate(LocalFSMessageID(ids[4])), step.set()))
        second.start()
        assert step.wait(60)
        try:
            crash = tmp_path / "crash"
            shutil.copytree(tmp_path, crash, ignore=shutil.ignore_patterns("crash"))  # as a SIGKILL leaves it
            assert verify(str(tmp_path), "p1") == []  # beside the live writer
            channel_info(str(tmp_path), "p1")
        finally:
            fops.go.set()
            first.join()
            second.join()
        w.close()
    assert _first(tmp_path) == ids[4] == int(_segments(tmp_path)[0].name[:20])
    with build(crash, segment_bytes=4096) as opener:
        w = open_rw(opener, term=2)
        got = [int(m.message_id.value) for m in read_all(w)]  # type: ignore[attr-defined]
        assert got == list(range(1, 201))  # nothing was deleted when it crashed
        w.close()


class _FullDisk(FileOps):
    """A full disk: no file can be made (nor space allocated) until a file that held data is deleted."""

    full = False

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if self.full and flags & os.O_CREAT and not os.path.exists(path):
            raise OSError(errno.ENOSPC, "No space left on device (test)", path)
        return super().open(path, flags, mode)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if self.full and self.fstat_size(fd) < offset + length:
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        super().fallocate(fd, offset, length)

    def unlink(self, path: str) -> None:
        if os.path.getsize(path):
            self.full = False
        super().unlink(path)


def test_truncate_and_retention_free_space_on_a_full_disk(tmp_path: Path) -> None:
    """Moving FIRST needs a new file: on a full disk truncate deleted nothing, a roll's retention closed the WAL, and
    a writer with retention no longer opened at its term (before FIRST, deleting was what freed the space) (review
    12d)."""
    _write(tmp_path, 400)
    ids = [int(p.name[:20]) for p in _segments(tmp_path)]
    fops = _FullDisk()
    with build(tmp_path, segment_bytes=SEG, _file_ops=fops) as opener:
        w = open_rw(opener, term=2)
        fops.full = True
        w.truncate(LocalFSMessageID(ids[1]))
        assert not fops.full and _first(tmp_path) == ids[1] == int(_segments(tmp_path)[0].name[:20])
        w.close()
    assert verify(str(tmp_path), "p1") == []
    fops.full = True
    with build(tmp_path, segment_bytes=SEG, retention_bytes=2 * SEG, _file_ops=fops) as opener:
        w = open_rw(opener, term=2)  # the same term: a higher one writes TERM, which needs space too
        assert not fops.full and _first(tmp_path) == int(_segments(tmp_path)[0].name[:20]) > ids[1]
        w.close()
    assert verify(str(tmp_path), "p1") == []
    (tmp_path / "p1" / "FIRST").unlink()  # a log older than FIRST, on a full disk
    fops.full = True
    with build(tmp_path, segment_bytes=SEG, _file_ops=fops) as opener:
        open_rw(opener, term=2).close()
    assert not (tmp_path / "p1" / "FIRST").exists()  # written by the next open or deletion
    with build(tmp_path, segment_bytes=SEG) as opener:
        open_rw(opener, term=5).close()
    assert _first(tmp_path) == int(_segments(tmp_path)[0].name[:20])


class _LockOrder(_GatedUnlink):
    """Also records the order of segment deletions and lock releases."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.lock_fds: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith("LOCK"):
            self.lock_fds.add(fd)
        return fd

    def close(self, fd: int) -> None:
        if fd in self.lock_fds:
            self.lock_fds.discard(fd)
            self.events.append("lock released")
        super().close(fd)

    def unlink(self, path: str) -> None:
        super().unlink(path)
        if path.endswith(".seg"):
            self.events.append("deleted")


def test_close_waits_for_a_truncate_still_deleting(tmp_path: Path) -> None:
    """A close in one thread while a truncate in another still deleted released the lock: a new writer then opened
    the channel while the old one deleted its segments, and its retention, from a list holding them, wrote FIRST
    below them: the next open refused the log as damaged (review 12d)."""
    fops = _LockOrder()
    step = threading.Event()  # the close is done, or waits for the truncate
    with build(tmp_path, segment_bytes=4096, _file_ops=fops) as opener:
        w, ids = _watched_deletions(opener, tmp_path, 100, step)
        fops.block = f"{ids[1]:020d}.seg"
        truncating = threading.Thread(target=w.truncate, args=(LocalFSMessageID(ids[4]),))
        truncating.start()
        assert fops.entered.wait(60)
        closing = threading.Thread(target=lambda: (w.close(), step.set()))
        closing.start()
        assert step.wait(60)
        fops.go.set()
        truncating.join()
        closing.join()
    assert fops.events == ["deleted"] * 4 + ["lock released"], fops.events
    assert _first(tmp_path) == ids[4] == int(_segments(tmp_path)[0].name[:20])


def test_tools_beside_the_first_open_of_a_channel_report_no_lost_segments(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer makes a log's first segment, then FIRST: `wal verify` and `wal info` that listed the directory
    before the segment and read FIRST after it reported every segment deleted from outside (review 12d)."""
    from wal.walimpls.localfs import _recovery, tools

    with build(tmp_path, segment_bytes=SEG) as opener:
        open_rw(opener).close()
    real_list, real_first = _recovery.list_segments, _recovery.read_first
    first_read = [False]

    def listed_too_early(fops: Any, chdir: str) -> list[tuple[int, str]]:
        return real_list(fops, chdir) if first_read[0] else []  # as before the writer made its first segment

    def read_first(fops: Any, chdir: str) -> int | None:
        first_read[0] = True
        return real_first(fops, chdir)

    for module in (tools, _recovery):
        monkeypatch.setattr(module, "list_segments", listed_too_early)
        monkeypatch.setattr(module, "read_first", read_first)
    assert [p for p in verify(str(tmp_path), "p1") if p.path.endswith("FIRST")] == []
    first_read[0] = False
    assert channel_info(str(tmp_path), "p1").lost_front is None
    monkeypatch.undo()
    (tmp_path / "p1" / "00000000000000000001.seg").unlink()  # really gone: still reported
    assert [p.path for p in verify(str(tmp_path), "p1")] == [str(tmp_path / "p1" / "FIRST")]
    assert channel_info(str(tmp_path), "p1").lost_front == (1, None)


def test_first_is_written_by_the_first_open_of_a_log_older_than_it(tmp_path: Path) -> None:
    _write(tmp_path, 200)
    (tmp_path / "p1" / "FIRST").unlink()  # as a version before FIRST left the log
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path, segment_bytes=SEG) as opener:
        open_rw(opener).close()
    assert _first(tmp_path) == 1
    _delete_oldest(tmp_path, 1)
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match=r"no segment holds IDs 1\.\."):
            open_rw(opener)


def test_an_unreadable_first_is_refused_and_repair_writes_it_again(tmp_path: Path) -> None:
    _write(tmp_path, 200)
    path = tmp_path / "p1" / "FIRST"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # a flipped bit in its checksum
    path.write_bytes(bytes(raw))
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match="unreadable first-segment file"):
            open_rw(opener)
    assert [p.path for p in verify(str(tmp_path), "p1")] == [str(path)]
    info = channel_info(str(tmp_path), "p1")  # shows the rest, and names FIRST
    assert list(info.unreadable) == [str(path)] and info.lost_front is None and info.segments[0].first_id == 1
    report = repair(str(tmp_path), "p1")
    assert report.changed and report.first_restored == 1
    assert _first(tmp_path) == 1 and verify(str(tmp_path), "p1") == []


def test_a_sealed_segment_cut_inside_its_data_is_refused_not_grown_and_trusted(tmp_path: Path) -> None:
    """Opening grew the cut segment back to its preallocation, trusted its seal summary and opened: readers then
    failed at the hole of zeros, while `verify` reported it and `repair` refused it (review 11c)."""
    _write(tmp_path, 200)
    sealed = _segments(tmp_path)[1]
    off, _size = _records(sealed)[3]
    os.truncate(sealed, off)  # cut at a record boundary inside the sealed data
    with build(tmp_path) as opener:
        with pytest.raises(CorruptedError, match="sealed segment cut from outside") as e:
            open_rw(opener)
    assert (e.value.path, e.value.offset) == (str(sealed), off)
    assert os.path.getsize(sealed) == off  # not grown back
    assert any(p.path == str(sealed) for p in verify(str(tmp_path), "p1"))
    with pytest.raises(CorruptedError):
        repair(str(tmp_path), "p1")


def test_an_open_syncs_the_directory_before_it_marks_a_successor_it_did_not_make(tmp_path: Path) -> None:
    """SIGKILL between the successor's rename and the directory sync leaves a successor whose name is not durable.
    The open that finishes the roll marked the segment before it at once: a power cut then could keep the mark and
    lose the name, and the next open refused a log that lost nothing ("no segment from ID ... on is left"). The
    roll syncs the directory before its mark; so does the open now."""
    from wal.walimpls.localfs._fileops import FileOps

    _write(tmp_path, 200)
    before_last = _segments(tmp_path)[-2]
    with open(before_last, "r+b") as f:  # the roll cut short after the rename: no mark
        f.seek(NEXT_OFF)
        f.write(bytes(NEXT_MARK.size))
    calls: list[str] = []

    class Recording(FileOps):
        def fsync_dir(self, path: str) -> None:
            calls.append("fsync_dir")
            super().fsync_dir(path)

        def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
            if offset == NEXT_OFF:
                calls.append("mark")
            return super().pwrite(fd, data, offset)

    with build(tmp_path, _file_ops=Recording()) as opener:
        open_rw(opener).close()
    assert "mark" in calls, calls
    assert "fsync_dir" in calls[: calls.index("mark")], calls


def test_a_grown_sealed_segment_cut_inside_its_data_is_refused_with_nothing_changed(tmp_path: Path) -> None:
    """The check for a sealed segment cut inside its data compared the seal's data end with the capacity in the
    header, which a segment grown for a big first record exceeds (the header keeps the size it was made with): the
    open then grew the file back, rewrote its seal summary from the cut data (the evidence gone) and only then
    refused, at the next segment's gap (review 11h)."""
    opener = build(tmp_path, segment_bytes=SEG)
    try:
        w = open_rw(opener)
        w.append(msg(b"Y" * (SEG + 1000), tt=1))  # the first segment grows past its preallocation for it
        for i in range(20):
            w.append(msg(_payload(i), tt=2 + i))
        w.close()
    finally:
        opener.close()
    grown = _segments(tmp_path)[0]
    assert os.path.getsize(grown) > SEG
    os.truncate(grown, DATA_START)  # cut at the record boundary before its only record
    seal_before = grown.read_bytes()[128:452]
    with build(tmp_path, segment_bytes=SEG) as opener:
        with pytest.raises(CorruptedError, match="sealed segment cut from outside") as e:
            open_rw(opener)
    assert (e.value.path, e.value.offset) == (str(grown), DATA_START)
    assert os.path.getsize(grown) == DATA_START  # not grown back
    assert grown.read_bytes()[128:452] == seal_before
    with pytest.raises(CorruptedError, match="sealed segment cut from outside"):
        repair(str(tmp_path), "p1")


def _blocked_in(ident: int, names: set[str]) -> bool:
    import sys

    f = sys._current_frames().get(ident)
    while f is not None:
        if f.f_code.co_name in names:
            return True
        f = f.f_back
    return False


@pytest.mark.parametrize("waiter", ["truncate", "close"])
def test_a_ctrl_c_as_a_deletion_lock_is_taken_never_leaves_it_held(tmp_path: Path, waiter: str) -> None:
    """The main thread waits for a truncate deleting in another thread (its own truncate, or a close); a real
    interrupt lands just as that truncate lets go of the deletion lock and the main thread gets it. With a plain
    Lock taken by ``acquire()`` the interrupt came after the lock was taken and before anything could release it:
    every later truncate and close hung for ever, and a roll's retention skipped for ever (review 12f)."""
    from _interrupts import returns_within, sigusr1_interrupts

    fops = _GatedUnlink()
    with build(tmp_path, segment_bytes=4096, retention_bytes=20_000, _file_ops=fops) as opener:
        w = open_rw(opener)
        for i in range(20):
            w.append(msg(b"x" * 300, tt=100 + i))
        ids = [int(p.name[:20]) for p in _segments(tmp_path)]
        fops.block = f"{ids[0]:020d}.seg"
        with sigusr1_interrupts() as main:
            import signal

            def first() -> None:
                w.truncate(LocalFSMessageID(ids[1]))  # held in its unlink until the main thread waits for it
                signal.pthread_kill(main, signal.SIGUSR1)  # just as the main thread takes the lock

            def gate() -> None:
                assert fops.entered.wait(60)
                while not _blocked_in(main, {"_delete_front", "_wait_deletion"}):
                    time.sleep(0.001)
                fops.go.set()

            threads = [threading.Thread(target=first), threading.Thread(target=gate)]
            for t in threads:
                t.start()
            assert fops.entered.wait(60)
            try:
                if waiter == "truncate":
                    w.truncate(LocalFSMessageID(ids[2]))
                else:
                    w.close()
            except KeyboardInterrupt:
                pass
            for t in threads:
                t.join()
        if waiter == "truncate":
            assert returns_within(lambda: w.truncate(LocalFSMessageID(ids[2])), 60)
            for i in range(100):  # retention runs again at the rolls
                w.append(msg(b"x" * 300, tt=200 + i))
            assert len(_segments(tmp_path)) <= 7
        assert returns_within(w.close, 60)


@pytest.mark.parametrize("how", ["EIO", "Ctrl-C"])
def test_segments_a_failed_deletion_left_are_deleted_by_the_next_and_leave_no_gap(tmp_path: Path, how: str) -> None:
    """A truncate that failed (an unlink's I/O error, or a Ctrl-C) between deleting two segments had taken them all
    out of the writer's list: those left were never deleted, and the next deletion, of newer segments, left a gap
    between them and the rest: live readers reported damage and the next open refused the log (review 12f)."""
    from _interrupts import interrupt_at_line

    from wal.errors import WALIOError
    from wal.walimpls.localfs._wal import LocalFSWAL

    class FailingUnlink(FileOps):
        fail = ""

        def unlink(self, path: str) -> None:
            if self.fail and path.endswith(self.fail):
                self.fail = ""
                raise OSError(errno.EIO, "injected EIO", path)
            super().unlink(path)

    fops = FailingUnlink()
    with build(tmp_path, segment_bytes=4096, _file_ops=fops) as opener:
        w = open_rw(opener)
        for i in range(200):
            w.append(msg(b"x" * 300, tt=100 + i))
        ids = [int(p.name[:20]) for p in _segments(tmp_path)]
        if how == "EIO":
            fops.fail = f"{ids[1]:020d}.seg"
            with pytest.raises(WALIOError):
                w.truncate(LocalFSMessageID(ids[3]))
        else:
            cut = interrupt_at_line(LocalFSWAL._delete_front_locked, "s.drop_mapping()")  # after the first deleted
            with cut, pytest.raises(KeyboardInterrupt):
                w.truncate(LocalFSMessageID(ids[3]))
        assert int(_segments(tmp_path)[0].name[:20]) in (ids[1], ids[2])  # the failed truncate deleted one, or none
        w.truncate(LocalFSMessageID(ids[5]))  # deletes what the failed one left, then the rest
        assert [int(p.name[:20]) for p in _segments(tmp_path)] == ids[5:]
        assert verify(str(tmp_path), "p1") == []  # beside the live writer
        w.close()
    assert verify(str(tmp_path), "p1") == []
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener, term=2)
        got = [int(m.message_id.value) for m in read_all(w)]  # type: ignore[attr-defined]
        assert got == list(range(ids[5], 201))
        w.close()


def test_an_io_error_while_a_truncate_deletes_fails_every_appender_and_leaves_the_release_to_it(
    tmp_path: Path,
) -> None:
    """An I/O error in a flush closes the WAL (``_fail``, under the writer's lock) while a truncate in another
    thread still deletes. ``_fail`` waited for the truncate there, and a Ctrl-C in that wait cut it short: the
    appenders queued behind the failed flush slept for good, even after close (review 12f). Now the truncate
    releases the channel when it is done, and nothing waits under the lock."""
    from _interrupts import returns_within, sigusr1_interrupts

    class Faults(_GatedUnlink):
        sync_fail = False

        def __init__(self) -> None:
            super().__init__()
            self.in_sync = threading.Event()
            self.sync_go = threading.Event()

        def fdatasync(self, fd: int) -> None:
            if self.sync_fail:
                self.sync_fail = False
                self.in_sync.set()
                self.sync_go.wait()
                raise OSError(errno.EIO, "injected EIO")
            super().fdatasync(fd)

    fops = Faults()
    opener = build(tmp_path, segment_bytes=4096, sync="always", _file_ops=fops).__enter__()
    w = open_rw(opener)
    for i in range(60):
        w.append(msg(b"x" * 300, tt=100 + i))
    ids = [int(p.name[:20]) for p in _segments(tmp_path)]
    fops.block = f"{ids[0]:020d}.seg"
    truncating = threading.Thread(target=w.truncate, args=(LocalFSMessageID(ids[2]),))
    truncating.start()
    assert fops.entered.wait(60)
    got: list[str] = []
    main_got: list[str] = []
    locked_while_deleting: list[bool] = []

    def append(i: int) -> None:
        try:
            w.append(msg(b"y", tt=1000 + i))
            got.append("acknowledged")
        except BaseException as e:
            got.append(type(e).__name__)

    appenders = [threading.Thread(target=append, args=(i,), daemon=True) for i in range(3)]
    with sigusr1_interrupts() as main:
        import signal

        def drive() -> None:
            assert fops.in_sync.wait(60)
            for a in appenders:
                a.start()
            while sum(len(b.waiters) for b in [w._open_batch] if b is not None) < 3:  # queued behind the flush
                time.sleep(0.001)
            fops.sync_go.set()
            while not main_got:
                if _blocked_in(main, {"_wait_deletion"}):  # before the fix: a Ctrl-C there
                    signal.pthread_kill(main, signal.SIGUSR1)
                    break
                time.sleep(0.001)
            locked_while_deleting.append(w._lock_fd is not None)
            fops.go.set()

        driver = threading.Thread(target=drive)
        driver.start()
        fops.sync_fail = True
        try:
            w.append(msg(b"z", tt=999))
            main_got.append("acknowledged")
        except BaseException as e:
            main_got.append(type(e).__name__)
        driver.join()
    truncating.join()
    assert all(returns_within(a.join, 60) for a in appenders), got
    assert main_got == ["WALIOError"] and got == ["WALIOError"] * 3, (main_got, got)
    assert locked_while_deleting == [True]  # released only once the truncate was done
    assert w._lock_fd is None
    w.close()
    assert _first(tmp_path) == ids[2] == int(_segments(tmp_path)[0].name[:20])
    w2 = open_rw(opener, term=2)
    kept = [int(m.message_id.value) for m in read_all(w2)]  # type: ignore[attr-defined]
    assert kept[: 61 - ids[2]] == list(range(ids[2], 61))  # (the failed flush's records may be there too)
    w2.close()
    opener.close()
