"""Torn tails, flipped bytes and lost indexes: recovery cuts what may be torn and refuses what is damage."""

from __future__ import annotations

import logging
import mmap
import os
import shutil
from pathlib import Path

import pytest
from _localfs_util import build, msg, open_rw, read_all

from wal.errors import CorruptedError
from wal.options import DeliverPolicy
from wal.walimpls.localfs import LocalFSMessageID
from wal.walimpls.localfs._format import DATA_START, scan_segment
from wal.walimpls.localfs.tools import verify

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
