"""wal.walimpls.localfs.tools: list, info, verify, repair, iterate (what the `wal` command builds on)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_rw

from wal import OpenOption, PChannelInfo, registry
from wal.errors import CorruptedError, InvalidArgumentError, WALIOError, WALLockedError
from wal.message import MessageType, MutableMessage
from wal.walimpls.localfs import LocalFSMessageID
from wal.walimpls.localfs.tools import (
    ChannelInfo,
    channel_info,
    iter_messages,
    list_channels,
    repair,
    verify,
)


def _fill(root: Path, name: str, n: int, keep_open: bool = False) -> object:
    opener = build(root, segment_bytes=4096)
    w = open_rw(opener, name, term=2)
    for i in range(n):
        w.append(msg(f"{name}-{i}".encode() * 4, tt=1000 + i, vchannel="v1"))
    if keep_open:
        return opener, w
    w.close()
    opener.close()
    return None


def test_list_and_info(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 100)
    _fill(tmp_path, "b", 3)
    (tmp_path / "not-a-channel").mkdir()
    assert list_channels(str(tmp_path)) == ["a", "b"]
    assert list_channels(str(tmp_path / "missing")) == []
    info = channel_info(str(tmp_path), "a")
    assert isinstance(info, ChannelInfo)
    assert info.name == "a" and info.term == 2 and not info.writer_locked
    segs = info.segments
    assert len(segs) >= 3 and all(s.sealed for s in segs[:-1]) and not segs[-1].sealed
    assert segs[0].first_id == 1 and segs[-1].last_id == 100
    assert all(segs[k + 1].first_id == segs[k].last_id + 1 for k in range(len(segs) - 1))
    assert segs[0].first_time_tick == 1000 and segs[-1].last_time_tick == 1099
    assert all(s.bytes_used > 1024 for s in segs)


def test_info_sees_a_running_writer(tmp_path: Path) -> None:
    opener, w = _fill(tmp_path, "a", 20, keep_open=True)  # type: ignore[misc]
    try:
        info = channel_info(str(tmp_path), "a")
        assert info.writer_locked and info.segments[-1].last_id == 20
        assert verify(str(tmp_path)) == []  # safe and quiet while the writer runs
        with pytest.raises(WALLockedError):
            repair(str(tmp_path), "a")
        w.append(msg(b"still writable after the probes"))
    finally:
        w.close()
        opener.close()


def test_verify_clean_and_progress(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 100)
    calls: list[tuple[int, int]] = []
    assert verify(str(tmp_path), "a", progress=lambda d, t: calls.append((d, t))) == []
    assert calls and calls[-1][0] == calls[-1][1]


def test_verify_reports_flip_missing_index_and_never_writes(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 100)
    segs = sorted((tmp_path / "a").glob("*.seg"))
    with open(segs[1], "r+b") as f:
        f.seek(1024 + 50)
        b = f.read(1)
        f.seek(1024 + 50)
        f.write(bytes([b[0] ^ 0xFF]))
    segs[2].with_suffix(".idx").unlink()
    before = {p: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    problems = verify(str(tmp_path))
    assert {p.path for p in problems} >= {str(segs[1]), str(segs[2].with_suffix(".idx"))}
    flip = next(p for p in problems if p.path == str(segs[1]))
    assert flip.offset == 1024 and "corrupt" in flip.message
    assert str(flip).startswith(f"{segs[1]}:1024")
    after = {p: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    assert after == before


def test_repair_cuts_torn_tail_and_rebuilds_indexes(tmp_path: Path) -> None:
    opener, w = _fill(tmp_path, "a", 60, keep_open=True)  # type: ignore[misc]
    image = tmp_path / "image"
    shutil.copytree(tmp_path / "a", image / "a")  # a crash image
    w.close()
    opener.close()
    last = sorted((image / "a").glob("*.seg"))[-1]
    info = channel_info(str(image), "a")
    end = info.segments[-1].bytes_used
    with open(last, "r+b") as f:
        f.seek(end)
        f.write(b"\x13torn-garbage" * 5)
    sorted((image / "a").glob("*.idx"))[0].unlink()
    problems = verify(str(image))
    assert any("torn" in p.message for p in problems)
    report = repair(str(image), "a")
    assert report.changed and len(report.cut) == 1 and str(end) in report.cut[0]
    assert any(p.endswith(".idx") for p in report.rebuilt_indexes)
    assert verify(str(image)) == []
    assert not repair(str(image), "a").changed  # idempotent
    got = list(iter_messages(str(image), "a"))
    assert [bytes(m.payload) for m in got] == [f"a-{i}".encode() * 4 for i in range(60)]


def test_repair_refuses_damage(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 60)
    seg = sorted((tmp_path / "a").glob("*.seg"))[0]
    with open(seg, "r+b") as f:
        f.seek(1024 + 40)
        f.write(b"\x00\x01")
    with pytest.raises(CorruptedError):
        repair(str(tmp_path), "a")


def test_iter_messages_from_start(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 80)
    got = list(iter_messages(str(tmp_path), "a", LocalFSMessageID(33)))
    assert [m.message_id.value for m in got] == list(range(33, 81))  # type: ignore[attr-defined]
    assert got[0].vchannel == "v1" and got[0].time_tick == 1032
    with pytest.raises(InvalidArgumentError):
        list(iter_messages(str(tmp_path), "nope"))
    with pytest.raises(InvalidArgumentError):
        channel_info(str(tmp_path), "../etc")


def test_read_only_tools_race_a_busy_writer(tmp_path: Path) -> None:
    import threading

    opener, w = _fill(tmp_path, "a", 10, keep_open=True)  # type: ignore[misc]
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            w.append_batch([msg(f"busy-{i}-{k}".encode() * (1 + k % 7), vchannel="v1") for k in range(20)])
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(15):
            assert verify(str(tmp_path)) == []
            info = channel_info(str(tmp_path), "a")
            assert info.writer_locked and info.segments[-1].last_id >= 10
            n = sum(1 for _ in iter_messages(str(tmp_path), "a"))
            assert n >= 10
    finally:
        stop.set()
        t.join()
        w.close()
        opener.close()


def test_find_time_tick(tmp_path: Path) -> None:
    from wal.walimpls.localfs.tools import find_time_tick

    opener = build(tmp_path, segment_bytes=4096)
    w = open_rw(opener, "a")
    ticks = [10 * i for i in range(1, 301)]
    ticks[150], ticks[151] = ticks[151], ticks[150]  # stored slightly out of tick order
    w.append_batch([msg(f"{t}".encode() * 10, tt=t) for t in ticks])
    w.close()
    opener.close()
    assert find_time_tick(str(tmp_path), "a", 0) == LocalFSMessageID(1)
    assert find_time_tick(str(tmp_path), "a", 10) == LocalFSMessageID(1)
    assert find_time_tick(str(tmp_path), "a", 11) == LocalFSMessageID(2)
    assert find_time_tick(str(tmp_path), "a", 1515) == LocalFSMessageID(151)  # tick 1520 is stored at ID 151
    assert find_time_tick(str(tmp_path), "a", 2995) == LocalFSMessageID(300)
    assert find_time_tick(str(tmp_path), "a", 3001) is None


def test_read_only_tools_while_retention_deletes_segments(tmp_path: Path) -> None:
    """Retention deletes segments between the tools' listing and their reads: verify raised a bare
    FileNotFoundError in ~1 of 5 calls (and `wal verify` exited 1 on a healthy channel), channel_info in ~1 of 25.
    A segment gone meanwhile is skipped (its index too, and no continuity check across it)."""
    import threading
    import time

    opener = build(tmp_path, segment_bytes=4096, retention_bytes=4096 * 20, sync="never")
    w = open_rw(opener, "a")
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            w.append(msg(b"x" * 1500, tt=1, vchannel="v1"))

    t = threading.Thread(target=writer)
    t.start()
    calls = 0
    try:
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            assert verify(str(tmp_path), "a") == []
            info = channel_info(str(tmp_path), "a")
            assert info.segments
            calls += 1
    finally:
        stop.set()
        t.join()
        w.close()
        opener.close()
    assert calls >= 20


def _once_after(real: Callable[..., Any], action: Callable[[], None]) -> Callable[..., Any]:
    """``real``, which runs ``action`` once, after its first call has returned its result."""
    done: list[bool] = []

    def wrapper(*args: Any) -> Any:
        result = real(*args)
        if not done:
            done.append(True)
            action()
        return result

    return wrapper


@pytest.mark.parametrize("event", ["roll", "close", "open"])
def test_verify_ignores_a_writer_that_changes_the_last_segment_while_it_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, event: str
) -> None:
    """A healthy channel whose writer rolls (seals the segment), closes cleanly, or opens after verify probed the
    lock, between verify's scan of the last segment and its reading of the summaries and the index. verify read
    the seal or clean-close summary after the scan and compared them with the scan's (earlier) end ("seal summary
    ... does not match the data", "clean-close summary does not match the data"), and judged a writer that opened
    after the probe by the rules of a stopped one ("index does not match the segment", or its tail as torn):
    `wal verify` exited 1 in about 1 of 100 runs against a live channel. The race is made certain here by doing
    the writer's step inside verify: right after its lock probe, and right after it looked for the end of the
    data."""
    from wal.walimpls.localfs import _format, tools

    opener = build(tmp_path, segment_bytes=65536)
    writers = [open_rw(opener, "a")]
    writers[0].append_batch([msg(b"x" * 100, vchannel="v1") for _ in range(5)])

    def append(n: int) -> None:
        writers[-1].append_batch([msg(b"y" * 1000, vchannel="v1") for _ in range(n)])

    def after_scan() -> None:
        append(70 if event == "roll" else 10)  # 70 KB do not fit the 64 KiB segment: it is sealed, a new one made
        if event == "close":
            writers[-1].close()

    def after_probe() -> None:
        writers.append(open_rw(opener, "a", term=3))

    if event == "open":
        writers[0].close()
        monkeypatch.setattr(tools, "_writer_locked", _once_after(tools._writer_locked, after_probe))
    monkeypatch.setattr(tools, "last_nonzero_end", _once_after(_format.last_nonzero_end, after_scan))
    try:
        assert len(list((tmp_path / "a").glob("*.seg"))) == 1
        assert verify(str(tmp_path), "a") == []
        assert len(list((tmp_path / "a").glob("*.seg"))) == (2 if event == "roll" else 1)
    finally:
        for w in writers:
            w.close()
        opener.close()
    assert verify(str(tmp_path), "a") == []


def _zero_record_header(seg: Path, index: int) -> int:
    """Zero the 32-byte header of the ``index``-th record (0 = the first) of ``seg``; returns its offset."""
    import struct

    data = seg.read_bytes()
    pos = 1024
    for _ in range(index):
        (body_len,) = struct.unpack_from("<I", data, pos + 4)
        pos += (32 + body_len + 7) & ~7
    with open(seg, "r+b") as f:
        f.seek(pos)
        f.write(bytes(32))
    return pos


@pytest.mark.parametrize("sync", ["always", "never"])
def test_iter_messages_raises_at_a_zeroed_header_inside_the_data(tmp_path: Path, sync: str) -> None:
    """A zeroed record header in the middle of a cleanly closed active segment: a scanner takes zeros there for the
    writer's frontier, and iter_messages (`wal dump`) stopped at them and ended quietly (50 of 101 records, exit
    0; nothing at all from an ID after them), though verify and repair report the damage. It is damage when a
    later record was written once it was durable (PREV_DURABLE: every flush under sync="always") or when the
    clean-close summary says the data goes on (the proof under sync="never"): the records before it come, then
    CorruptedError with the file and offset."""
    opener = build(tmp_path, sync=sync)
    w = open_rw(opener, "a")
    for i in range(100):
        w.append(msg(f"m-{i}".encode() * 10, vchannel="v1"))
    w.close()
    opener.close()
    seg = sorted((tmp_path / "a").glob("*.seg"))[-1]
    pos = _zero_record_header(seg, 50)
    got: list[int] = []
    with pytest.raises(CorruptedError) as e:
        for m in iter_messages(str(tmp_path), "a"):
            got.append(m.message_id.value)  # type: ignore[attr-defined]
    assert got == list(range(1, 51)) and e.value.path == str(seg) and e.value.offset == pos
    assert f"{seg}: corrupted record at offset {pos}" in str(e.value)
    with pytest.raises(CorruptedError):
        list(iter_messages(str(tmp_path), "a", LocalFSMessageID(60)))
    assert any(p.path == str(seg) and p.offset == pos for p in verify(str(tmp_path), "a"))


def test_iter_messages_takes_no_record_written_meanwhile_for_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live writer appends two flushes right when iter_messages has read everything and looks past its end:
    the second flush vouches for the first (PREV_DURABLE), which is valid where the read stopped, so that is no
    damage (the check looks at the stopped-at record again after finding a proof)."""
    from wal.walimpls.localfs._scanner import LocalFSScanner

    opener, w = _fill(tmp_path, "a", 10, keep_open=True)  # type: ignore[misc]
    real = LocalFSScanner.stopped_at

    def stopped_at(self: LocalFSScanner) -> tuple[str, int, int] | None:
        where = real(self)
        w.append(msg(b"written meanwhile 1"))
        w.append(msg(b"written meanwhile 2"))
        return where

    monkeypatch.setattr(LocalFSScanner, "stopped_at", stopped_at)
    try:
        got = [m.message_id.value for m in iter_messages(str(tmp_path), "a")]  # type: ignore[attr-defined]
        assert got == list(range(1, 11))
    finally:
        w.close()
        opener.close()


def _closed_never_synced(root: Path, damage: bool = True) -> tuple[Path, int]:
    """A cleanly closed channel "a" written with sync="never" (only a segment's first flush vouches for what is
    before it, so the clean-close summary is what proves its later records durable), and the offset of its 10th
    record, whose payload has one byte flipped."""
    import struct

    opener = build(root, sync="never")
    w = open_rw(opener, "a")
    for i in range(20):
        w.append(msg(f"m-{i}".encode() * 10, vchannel="v1"))
    w.close()
    opener.close()
    seg = sorted((root / "a").glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    pos = 1024
    for _ in range(10):
        (body_len,) = struct.unpack_from("<I", data, pos + 4)
        pos += (32 + body_len + 7) & ~7
    if damage:
        data[pos + 60] ^= 0x40
        seg.write_bytes(bytes(data))
    return seg, pos


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "a").iterdir())}


def test_repair_refuses_damage_under_a_clean_close_summary_without_writing(tmp_path: Path) -> None:
    """A bad record in a cleanly closed segment that no later flush vouches for: the clean-close summary says the
    data goes on, so it is damage (as `wal dump` and scanners say). verify called it a torn tail "opening for
    write or `repair` cuts it"; repair refused it, but only after recovery for writing had cleared the clean-close
    summary, so the next repair took the damage for a torn tail and cut the 10 acknowledged records after it."""
    seg, pos = _closed_never_synced(tmp_path)
    problems = [p for p in verify(str(tmp_path), "a") if p.offset == pos]
    assert len(problems) == 1 and "torn tail" not in problems[0].message
    assert "clean-close summary" in problems[0].message
    before = _files(tmp_path)
    for _ in range(2):
        with pytest.raises(CorruptedError) as e:
            repair(str(tmp_path), "a")
        assert e.value.path == str(seg) and e.value.offset == pos
        assert _files(tmp_path) == before


def test_repair_keeps_the_clean_close_summary_of_a_healthy_channel(tmp_path: Path) -> None:
    """Repair of a healthy, cleanly closed channel said "nothing to repair" and cleared the clean-close summary
    (recovery for writing does, before a writer appends): the proof that the last flush was durable was gone, so
    damage to it would later pass for a torn tail. Nothing is appended by repair; no file changes."""
    _closed_never_synced(tmp_path, damage=False)
    assert verify(str(tmp_path), "a") == []
    before = _files(tmp_path)
    assert not repair(str(tmp_path), "a").changed
    assert _files(tmp_path) == before


def test_iter_messages_raises_where_a_cleanly_closed_segment_was_cut_short(tmp_path: Path) -> None:
    """A cleanly closed active segment cut from outside at a record boundary: the clean-close summary says the
    data goes on past the end of the file. iter_messages (`wal dump`) ended quietly there (exit 0, records
    missing) while verify reported it; it raises CorruptedError with the file and where it ends."""
    import os

    _fill(tmp_path, "a", 30)
    seg = sorted((tmp_path / "a").glob("*.seg"))[-1]
    first = int(seg.name[:20])
    os.truncate(seg, 1024)  # every record of the segment
    got: list[int] = []
    with pytest.raises(CorruptedError) as e:
        for m in iter_messages(str(tmp_path), "a"):
            got.append(m.message_id.value)  # type: ignore[attr-defined]
    assert got == list(range(1, first)) and e.value.path == str(seg) and e.value.offset == 1024
    assert verify(str(tmp_path), "a")


def test_repair_cuts_stray_bytes_after_a_clean_close_end(tmp_path: Path) -> None:
    """Stray bytes well after the end of a cleanly closed segment's data: verify reports them as a torn tail, but
    recovery trusted the clean-close summary (it looks only at the header right after the end), so repair said
    "nothing to repair" and then "1 problem(s) remain". Repair zeroes them; verify is clean afterwards."""
    _closed_never_synced(tmp_path, damage=False)
    seg = sorted((tmp_path / "a").glob("*.seg"))[-1]
    with open(seg, "r+b") as f:
        f.seek(seg.stat().st_size - 100)
        f.write(b"\x55" * 8)
    assert verify(str(tmp_path), "a")
    report = repair(str(tmp_path), "a")
    assert report.cut and verify(str(tmp_path), "a") == []
    assert not repair(str(tmp_path), "a").changed


def test_verify_reports_what_makes_opening_for_write_refuse_or_warn(tmp_path: Path) -> None:
    """Two states verify called clean: a deleted LOCK beside a TERM (opening for write refuses with
    WALLockedError) and the last segment of a crashed writer cut short at a record boundary (opening for write
    logs that records past the cut are lost). Both are reported now, and repair clears both."""
    import os

    _fill(tmp_path, "b", 40)
    seg = sorted((tmp_path / "b").glob("*.seg"))[-1]
    with open(seg, "r+b") as f:  # no clean-close summary: a writer that crashed
        f.seek(512)
        f.write(bytes(324))
    os.truncate(seg, 1024)
    (tmp_path / "b" / "LOCK").unlink()
    problems = verify(str(tmp_path), "b")
    assert any(p.path == str(tmp_path / "b" / "LOCK") for p in problems)
    assert any(p.path == str(seg) and p.offset == 1024 and "shorter" in p.message for p in problems)
    report = repair(str(tmp_path), "b", no_writer_running=True)  # the LOCK deleted: told that no writer runs
    # It says what it did (it said "nothing to repair" though it restored the size: second tools review).
    assert report.changed and any("restored its size from 1024" in line for line in report.cut), report
    assert verify(str(tmp_path), "b") == []


def test_a_repair_that_makes_a_new_lock_makes_it_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``repair --no-writer-running`` made LOCK again without syncing the directory: a power cut soon after could
    take it back, and opening refused again ("LOCK was deleted") until another repair (review 12a)."""
    from wal.walimpls.localfs import tools

    _fill(tmp_path, "b", 10)
    (tmp_path / "b" / "LOCK").unlink()
    synced_with_lock: list[bool] = []
    real = tools.DEFAULT_FILE_OPS.fsync_dir

    def fsync_dir(path: str) -> None:
        synced_with_lock.append((Path(path) / "LOCK").exists())
        real(path)

    monkeypatch.setattr(tools.DEFAULT_FILE_OPS, "fsync_dir", fsync_dir)
    repair(str(tmp_path), "b", no_writer_running=True)
    assert any(synced_with_lock), "the new LOCK's directory entry was never synced"


def test_repair_refuses_a_cleanly_closed_segment_cut_inside_a_record_without_writing(tmp_path: Path) -> None:
    """The last segment of a cleanly closed channel cut from outside inside a record: a read-only recovery does
    not trust the clean-close summary (its end lies past the file) and sees a torn tail, so repair went on,
    restored the size, trusted the summary, refused, and had cleared it: the next repair cut. It refuses first."""
    import os

    seg, pos = _closed_never_synced(tmp_path, damage=False)
    os.truncate(seg, pos + 20)
    before = _files(tmp_path)
    for _ in range(2):
        with pytest.raises(CorruptedError) as e:
            repair(str(tmp_path), "a")
        assert e.value.offset == pos
        assert _files(tmp_path) == before


def test_verify_reports_a_term_file_behind_the_segments(tmp_path: Path) -> None:
    """TERM deleted (or rewritten lower) under segments a writer of term 2 made: verify said ok, and a writer of
    term 1, fenced before, opened and appended. The term in the segment headers is never above the stored one."""
    _fill(tmp_path, "a", 5)  # term 2
    (tmp_path / "a" / "TERM").unlink()
    problems = verify(str(tmp_path), "a")
    assert len(problems) == 1 and problems[0].path == str(tmp_path / "a" / "TERM")
    assert "term 2" in problems[0].message


def test_verify_reports_a_term_file_behind_the_records(tmp_path: Path) -> None:
    """The writer of term 7 appended to the segment term 2 made: only its records say 7."""
    _fill(tmp_path, "a", 2)  # term 2, in a segment with room: term 7 goes on in it
    with registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096) as opener:
        with opener.open(OpenOption(channel=PChannelInfo(name="a", term=7))) as w:  # stamps its term on records
            w.append(MutableMessage(MessageType.INSERT, b"seven", vchannel="v1"))
    assert len(list((tmp_path / "a").glob("*.seg"))) == 1
    assert verify(str(tmp_path), "a") == []
    (tmp_path / "a" / "TERM").unlink()
    problems = verify(str(tmp_path), "a")
    assert len(problems) == 1 and problems[0].path == str(tmp_path / "a" / "TERM")
    assert "term 7" in problems[0].message, problems[0].message


def test_a_damaged_segment_header_is_reported_with_its_path_once(tmp_path: Path) -> None:
    _fill(tmp_path, "a", 30)
    seg = sorted((tmp_path / "a").glob("*.seg"))[0]
    with open(seg, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xee")
    problems = [p for p in verify(str(tmp_path), "a") if p.path == str(seg) and p.offset == 0]
    assert problems, verify(str(tmp_path), "a")
    assert str(problems[0]).count(str(seg)) == 1, str(problems[0])  # was "x.seg:0: x.seg: segment header ..."


def _dir_state(chdir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a channel directory: its size and its bytes."""
    return {p.name: (p.stat().st_size, p.read_bytes()) for p in sorted(chdir.iterdir())}


def test_a_refused_repair_leaves_a_cut_sealed_segment_as_it_was(tmp_path: Path) -> None:
    """A crash between sealing a segment and naming the next one (the half-made next segment left as .tmp), then
    the sealed segment cut from outside inside its data. The read-only check before writing saw a short segment
    whose seal summary lies past its end, so it did not trust the summary and found no damage; recovery for
    writing then grew the file back to its capacity, deleted the .tmp, trusted the summary, and repair refused
    only afterwards: the refused repair had changed two files. Nothing changes now."""
    import os
    import struct

    _fill(tmp_path, "a", 100)
    chdir = tmp_path / "a"
    segs = sorted(chdir.glob("*.seg"))
    assert len(segs) >= 3
    segs[-1].rename(segs[-1].with_name(segs[-1].name + ".tmp"))  # the next segment, never named
    segs[-1].with_suffix(".idx").unlink()
    sealed = segs[-2]
    data = sealed.read_bytes()
    pos = 1024
    for _ in range(3):  # cut after the third record
        (body_len,) = struct.unpack_from("<I", data, pos + 4)
        pos += (32 + body_len + 7) & ~7
    os.truncate(sealed, pos)
    assert verify(str(tmp_path), "a")  # verify reports it (the size, the seal summary past the data)
    before = _dir_state(chdir)
    for _ in range(2):
        with pytest.raises(CorruptedError) as e:
            repair(str(tmp_path), "a")
        assert e.value.path == str(sealed)
        after = _dir_state(chdir)
        assert {n: size for n, (size, _) in after.items()} == {n: size for n, (size, _) in before.items()}
        assert after == before


def _flip(seg: Path, at: int) -> None:
    with open(seg, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["directory", "permission"])
def test_verify_reports_an_unreadable_segment_and_checks_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A segment that cannot be read (a directory in its place; a read refused, as EACCES for a user without the
    right, simulated for that one path since the tests run as root) stopped verify at that file: the error ended
    the run, and the later segments and channels went unchecked. It is one problem now, and the rest is checked."""
    import builtins
    import errno
    import os

    _fill(tmp_path, "a", 100)
    _fill(tmp_path, "b", 100)
    segs_a = sorted((tmp_path / "a").glob("*.seg"))
    segs_b = sorted((tmp_path / "b").glob("*.seg"))
    bad = segs_a[0]
    _flip(segs_a[2], 1024 + 50)  # damage after the unreadable segment, in the same channel
    _flip(segs_b[1], 1024 + 50)  # and in the next channel
    if how == "directory":
        bad.unlink()
        bad.mkdir()
    else:
        real_open, real_os_open = builtins.open, os.open

        def refuse(path: Any) -> None:
            if os.fspath(path) == str(bad):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

        def fake_open(path: Any, *args: Any, **kw: Any) -> Any:
            refuse(path)
            return real_open(path, *args, **kw)

        def fake_os_open(path: Any, *args: Any, **kw: Any) -> int:
            refuse(path)
            return real_os_open(path, *args, **kw)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
    problems = verify(str(tmp_path))
    unreadable = [p for p in problems if p.path == str(bad)]
    assert len(unreadable) == 1 and "cannot be read" in unreadable[0].message, problems
    assert any(p.path == str(segs_a[2]) and p.offset == 1024 and "corrupt" in p.message for p in problems), problems
    assert any(p.path == str(segs_b[1]) and p.offset == 1024 and "corrupt" in p.message for p in problems), problems


@pytest.mark.parametrize("which", [0, 1, -1])
def test_iter_messages_stops_at_a_damaged_segment_header_as_recovery_does(tmp_path: Path, which: int) -> None:
    """A segment header that fails its checksum, its records intact: opening for write refuses the channel
    (CorruptedError, the file, offset 0) and verify reports it, but iter_messages (`wal dump`) read through it and
    ended quietly. It yields every message of the segments before that one, then raises what recovery raises."""
    from wal.walimpls.localfs._recovery import recover
    from wal.walimpls.localfs.tools import DEFAULT_FILE_OPS

    _fill(tmp_path, "a", 100)
    segs = sorted((tmp_path / "a").glob("*.seg"))
    assert len(segs) >= 3
    bad = segs[which]
    _flip(bad, 32)  # the creation time: only the header's checksum says it changed
    with pytest.raises(CorruptedError) as opened:
        recover(DEFAULT_FILE_OPS, str(tmp_path / "a"), write=False)
    assert (opened.value.path, opened.value.offset) == (str(bad), 0)
    assert any((p.path, p.offset) == (str(bad), 0) for p in verify(str(tmp_path), "a"))
    got: list[int] = []
    with pytest.raises(CorruptedError) as e:
        for m in iter_messages(str(tmp_path), "a"):
            got.append(m.message_id.value)  # type: ignore[attr-defined]
    assert got == list(range(1, int(bad.name[:20])))
    assert (e.value.path, e.value.offset) == (str(bad), 0)
    assert "header" in str(e.value)


def test_iter_messages_yields_every_message_before_a_missing_segment(tmp_path: Path) -> None:
    """A middle segment deleted: iter_messages raised at the gap before yielding the messages read just before it
    in the same batch (`wal dump` printed none of them). It yields them all, then raises at the gap."""
    _fill(tmp_path, "a", 100)
    segs = sorted((tmp_path / "a").glob("*.seg"))
    assert len(segs) >= 3
    segs[1].unlink()
    segs[1].with_suffix(".idx").unlink()
    got: list[int] = []
    with pytest.raises(CorruptedError) as e:
        for m in iter_messages(str(tmp_path), "a"):
            got.append(m.message_id.value)  # type: ignore[attr-defined]
    assert got == list(range(1, int(segs[1].name[:20])))
    assert (e.value.path, e.value.offset) == (str(segs[2]), 0)


def test_verify_reports_an_unreadable_newest_segment_once(tmp_path: Path) -> None:
    """The newest segment is also read for the log's term and its successor mark: those reads must not end the run
    either (the segment's own check reports it)."""
    _fill(tmp_path, "a", 100)
    newest = sorted((tmp_path / "a").glob("*.seg"))[-1]
    newest.unlink()
    newest.mkdir()
    problems = verify(str(tmp_path), "a")
    assert [p.path for p in problems].count(str(newest)) == 1, problems
    assert "cannot be read" in next(p.message for p in problems if p.path == str(newest))


def _refuse_opening(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Opening ``path`` fails with EACCES, as for a user without the right (the tests run as root)."""
    import errno
    import os

    real_os_open = os.open

    def fake_os_open(p: Any, *args: Any, **kw: Any) -> int:
        if os.fspath(p) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))
        return real_os_open(p, *args, **kw)

    monkeypatch.setattr(os, "open", fake_os_open)


def test_an_unreadable_lock_file_is_one_problem_and_verify_checks_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LOCK that cannot be opened (mode 000 for another user) ended verify with PermissionError, and info too:
    nothing was checked. It is one problem now (whether a writer runs is unknown, so the newest segment is checked
    as a live writer's), and info shows the writer as unknown."""
    _fill(tmp_path, "a", 100)
    _fill(tmp_path, "b", 100)
    lock = tmp_path / "a" / "LOCK"
    _flip(sorted((tmp_path / "a").glob("*.seg"))[1], 1024 + 50)  # damage in the same channel
    _flip(sorted((tmp_path / "b").glob("*.seg"))[1], 1024 + 50)  # and in the next one
    _refuse_opening(monkeypatch, lock)
    problems = verify(str(tmp_path))
    at_lock = [p for p in problems if p.path == str(lock)]
    assert len(at_lock) == 1 and "LOCK cannot be read (Permission denied)" in at_lock[0].message, problems
    assert sum(1 for p in problems if p.offset == 1024 and "corrupt" in p.message) == 2, problems
    info = channel_info(str(tmp_path), "a")
    assert info.lock_error == "Permission denied" and not info.writer_locked and info.segments[-1].last_id == 100


def _make_dir_of(path: Path) -> None:
    path.unlink()
    path.mkdir()


def test_info_shows_what_it_can_read_and_names_the_files_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment, an index or TERM that cannot be read (a directory in its place, or a read refused) ended
    channel_info with the OSError: `wal info` showed nothing after it. Each is named in ``unreadable`` now, with
    why, and the rest is shown; an unreadable newest segment is not taken for newest segments deleted (lost_from)."""
    _fill(tmp_path, "a", 150)
    _fill(tmp_path, "b", 100)
    segs_a = sorted((tmp_path / "a").glob("*.seg"))
    segs_b = sorted((tmp_path / "b").glob("*.seg"))
    assert len(segs_a) >= 4
    _make_dir_of(segs_a[1])
    _make_dir_of(segs_a[-1].with_suffix(".idx"))  # read at once: the last segment was closed cleanly
    _refuse_opening(monkeypatch, segs_a[2])
    _make_dir_of(segs_b[-1])
    _make_dir_of(tmp_path / "b" / "TERM")
    a = channel_info(str(tmp_path), "a")
    assert set(a.unreadable) == {str(segs_a[1]), str(segs_a[2]), str(segs_a[-1].with_suffix(".idx"))}, a.unreadable
    assert a.unreadable[str(segs_a[2])] == "Permission denied"
    assert [s.path for s in a.segments] == [str(p) for p in segs_a if p not in segs_a[1:3]]
    assert a.segments[-1].last_id == 150 and a.term == 2 and a.lost_from is None
    b = channel_info(str(tmp_path), "b")
    assert set(b.unreadable) == {str(segs_b[-1]), str(tmp_path / "b" / "TERM")} and b.term is None
    assert [s.path for s in b.segments] == [str(p) for p in segs_b[:-1]] and b.lost_from is None


@pytest.mark.parametrize("why", ["damage", "live writer"])
def test_a_refused_repair_of_a_channel_whose_lock_was_deleted_makes_no_lock(tmp_path: Path, why: str) -> None:
    """`repair --no-writer-running` took the lock, which made a new LOCK, and only then refused (damage, or a
    writer that still holds the deleted LOCK's lock): the refused repair had changed the channel, and the LOCK it
    left made the channel look as if its LOCK had never been deleted (info then said no writer runs)."""
    chdir = tmp_path / "a"
    kept: Any = None
    if why == "damage":
        _fill(tmp_path, "a", 100)
        _flip(sorted(chdir.glob("*.seg"))[1], 1024 + 50)
    else:
        kept = _fill(tmp_path, "a", 100, keep_open=True)
    try:
        (chdir / "LOCK").unlink()
        before = _dir_state(chdir)
        with pytest.raises(CorruptedError if why == "damage" else WALLockedError):
            repair(str(tmp_path), "a", no_writer_running=True)
        assert _dir_state(chdir) == before
        assert channel_info(str(tmp_path), "a").lock_missing
    finally:
        if kept is not None:
            opener, w = kept
            w.close()
            opener.close()


def _fifo_of(path: Path) -> None:
    """A named pipe in place of ``path``: opening it for reading waits for a writer, which never comes."""
    import os

    path.unlink()
    os.mkfifo(path)


@pytest.mark.timeout(60)  # before: verify, info and dump blocked for ever in open()
@pytest.mark.parametrize("which", ["segment", "index", "TERM", "LOCK"])
def test_a_fifo_named_like_a_channel_file_is_reported_and_never_waited_on(tmp_path: Path, which: str) -> None:
    """A FIFO (named pipe) under a segment's, an index's, TERM's or LOCK's name: verify, info and dump opened it
    for reading, which waits for a writer of the pipe, so they hung. It is a file that cannot be read now: one
    problem for verify, named by info, and damage where dump reaches a segment (the messages before it first)."""
    _fill(tmp_path, "a", 100)
    chdir = tmp_path / "a"
    segs = sorted(chdir.glob("*.seg"))
    path = {"segment": segs[1], "index": segs[1].with_suffix(".idx"), "TERM": chdir / "TERM",
            "LOCK": chdir / "LOCK"}[which]
    _fifo_of(path)
    problems = verify(str(tmp_path))
    assert [str(p) for p in problems if p.path == str(path)] == [str(p) for p in problems], problems
    assert len(problems) == 1 and "(a FIFO, not a regular file)" in problems[0].message, problems
    info = channel_info(str(tmp_path), "a")
    if which == "LOCK":
        assert info.lock_error == "a FIFO, not a regular file", info
    else:
        assert info.unreadable == {str(path): "a FIFO, not a regular file"}, info
    got: list[int] = []
    if which == "segment":
        with pytest.raises(CorruptedError, match="a FIFO, not a regular file") as e:
            got.extend(m.message_id.value for m in iter_messages(str(tmp_path), "a"))  # type: ignore[attr-defined]
        assert (e.value.path, e.value.offset) == (str(path), 0)
        assert got == list(range(1, int(path.name[:20])))
    else:  # an index is derived data: a reader seeks without it
        start = LocalFSMessageID(int(segs[1].name[:20]) + 2)
        got.extend(m.message_id.value for m in iter_messages(str(tmp_path), "a", start))  # type: ignore[attr-defined]
        assert got[0] == start.value and got[-1] >= 100


_KILL_AT_INDEX_WRITE = """
import os, signal, sys
from _localfs_util import build, msg, open_rw
from wal.walimpls.localfs import FileOps

class KillAtIndexWrite(FileOps):  # SIGKILL between a flush's records and its index entries
    armed = False

    def write_all(self, fd, data):
        if self.armed and os.readlink(f"/proc/self/fd/{fd}").endswith(".idx"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().write_all(fd, data)

fops = KillAtIndexWrite()
opener = build(sys.argv[1], segment_bytes=64 << 10, _file_ops=fops)
w = open_rw(opener, "a")
for i in range(int(sys.argv[2])):
    w.append(msg(bytes(3000), tt=i + 1))
fops.armed = True
for i in range(4):  # an index entry every 4 KiB of data: the kill comes within two records
    w.append(msg(bytes(3000), tt=(1 << 20) + i))
"""


def test_verify_notes_a_stale_active_index_left_by_a_kill_and_still_reports_a_wrong_one(tmp_path: Path) -> None:
    """A writer SIGKILLed between a flush's record write and its index write leaves the active segment's index
    without its last entry. `wal verify` reported "index does not match the segment" (exit 1) although nothing is
    damaged: the next open rewrites that index. It is now a note; a wrong entry, and the same missing entry in a
    sealed segment, are still problems."""
    import os
    import subprocess
    import sys

    from _localfs_util import child_env

    from wal.walimpls.localfs._format import index_file_bytes, parse_index
    from wal.walimpls.localfs.tools import Problem

    tests = str(Path(__file__).resolve().parent)
    r = subprocess.run([sys.executable, "-c", _KILL_AT_INDEX_WRITE, str(tmp_path), "30"], cwd=tests,
                       env={**child_env(), "PYTHONPATH": tests + os.pathsep + child_env()["PYTHONPATH"]},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    segs = sorted((tmp_path / "a").glob("*.seg"))
    assert len(segs) >= 2
    active = segs[-1].with_suffix(".idx")
    assert verify(str(tmp_path)) == []
    notes: list[Problem] = []
    assert verify(str(tmp_path), notes=notes) == []
    assert [(n.path, n.note) for n in notes] == [(str(active), True)], notes
    assert "lacks the last 1 of the" in notes[0].message
    from click.testing import CliRunner

    from wal._cli._main import cli

    out = CliRunner().invoke(cli, ["verify", "--root", str(tmp_path)])
    assert out.exit_code == 0 and f"note: {active}: index of the active segment" in out.output, out.output
    image = tmp_path / "image"
    shutil.copytree(tmp_path / "a", image / "a")

    def entries(idx: Path) -> list[tuple[int, int, int]]:
        return parse_index(idx.read_bytes(), int(idx.name[:20])).entries

    # A wrong entry (valid checksums) in the active index: a problem.
    got = entries(active)
    wrong = [*got[:-1], (got[-1][0], got[-1][1], got[-1][2] + 8)]
    active.write_bytes(index_file_bytes(int(active.name[:20]), wrong, sealed=False))
    problems = verify(str(tmp_path))
    assert [p.path for p in problems] == [str(active)], problems
    assert "index does not match" in problems[0].message
    # The last entry missing from a sealed segment's index: a problem.
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(image / "a", tmp_path / "a")
    sealed = segs[0].with_suffix(".idx")
    sealed.write_bytes(index_file_bytes(int(sealed.name[:20]), entries(sealed)[:-1], sealed=True))
    problems = verify(str(tmp_path), "a")
    assert [p.path for p in problems] == [str(sealed)], problems
    # A power cut leaves the unsynced tail of the active index as the disk had it (zeros, a torn entry): a note
    # while what comes before agrees with the data (review 13e: it was a problem, exit 1); a sealed one: a problem.
    for tail in (bytes(24), bytes(5)):
        shutil.rmtree(tmp_path / "a")
        shutil.copytree(image / "a", tmp_path / "a")
        with open(active, "ab") as f:
            f.write(tail)
        notes = []
        assert verify(str(tmp_path), "a", notes=notes) == [], tail
        assert [n.path for n in notes] == [str(active)] and "ends with bytes a crash left" in notes[0].message, notes
        with open(sealed, "ab") as f:
            f.write(tail)
        problems = verify(str(tmp_path), "a")
        assert [p.path for p in problems] == [str(sealed)], problems
    # Opening for write rewrites the stale active index: verify is then quiet.
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(image / "a", tmp_path / "a")
    opener = build(tmp_path, segment_bytes=64 << 10)
    open_rw(opener, "a", term=2).close()
    opener.close()
    notes = []
    assert verify(str(tmp_path), "a", notes=notes) == [] and notes == []


@pytest.mark.parametrize("which", [1, -1], ids=["middle", "newest"])
def test_iter_messages_yields_every_message_before_a_segment_it_may_not_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: int
) -> None:
    """A segment that cannot be opened (EACCES): `wal dump` printed no message at all, only the error, because the
    scanner raised in the call whose batch held every message of the segments before it. Now those come first, then
    the error (a ``WALIOError`` naming the file), as at damage. The newest segment too (review 13e): the probe of
    where the data ends opens it before any message is read, and its error ended the dump before the first one."""
    import errno
    import os

    from wal.errors import WALIOError

    _fill(tmp_path, "a", 100)
    segs = sorted((tmp_path / "a").glob("*.seg"))
    refused, real_open = str(segs[which]), os.open

    def refuse(path: Any, *args: Any, **kw: Any) -> int:
        if os.fspath(path) == refused:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), refused)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    got: list[int] = []
    with pytest.raises(WALIOError, match="Permission denied") as e:
        for m in iter_messages(str(tmp_path), "a"):
            got.append(m.message_id.value)  # type: ignore[attr-defined]
    assert refused in str(e.value)
    assert got == list(range(1, int(segs[which].name[:20])))


def test_a_directory_the_tools_may_not_list_is_never_called_clean(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Channel directories are 0700: run as another user than the writer's, the tools could not list one, took it
    for "not a channel" and left it out. `wal verify` then said "ok ... no problems" and exited 0 for a root whose
    channel it never checked, `wal info` did not show it, and `--channel` called it "not a localfs channel" (a
    usage error). Root ignores permissions, so the refusal is faked where the tools list a directory."""
    import os

    from click.testing import CliRunner

    from wal._cli._main import cli
    from wal.walimpls.localfs.tools import unlistable_dirs

    _fill(tmp_path, "a", 3)
    _fill(tmp_path, "b", 3)
    (tmp_path / "lost+found").mkdir()  # a mount point's: no one but root may list it, and it is never a channel
    hidden = {str(tmp_path / "b"), str(tmp_path / "lost+found")}
    listdir = os.listdir

    def refusing(path: Any = ".") -> list[str]:
        if os.fspath(path) in hidden:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refusing)
    assert list_channels(str(tmp_path)) == ["a"]
    assert unlistable_dirs(str(tmp_path)) == [("b", "Permission denied")]
    problems = verify(str(tmp_path))
    assert [p.path for p in problems] == [str(tmp_path / "b")] and "cannot list" in problems[0].message, problems
    assert verify(str(tmp_path), "a") == []
    with pytest.raises(WALIOError, match=r"cannot list .*Permission denied"):
        verify(str(tmp_path), "b")
    run = CliRunner().invoke
    out = run(cli, ["verify", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "cannot list this directory (Permission denied)" in out.output, out.output
    out = run(cli, ["info", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "channel a" in out.output and "channel b\n  CANNOT READ" in out.output, out.output
    for sub in ("verify", "info", "dump"):
        out = run(cli, [sub, "--root", str(tmp_path), "--channel", "b"])
        assert out.exit_code == 1 and "cannot list" in out.output and "not a localfs channel" not in out.output, (
            sub, out.output)


def test_a_fresh_mount_point_root_is_no_error_for_another_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that is a mount point holds `lost+found`, which only root may list. With no channel yet, `info` and
    `verify` look for channels one level down (the hint for a --root one level too high) and listed it: run as any
    other user they failed with "Permission denied (.../lost+found)" and exit 1 instead of saying the root holds no
    channel. Root ignores permissions, so the refusal is faked (review 13e)."""
    import os

    from click.testing import CliRunner

    from wal._cli._main import cli

    (tmp_path / "lost+found").mkdir()
    hidden, listdir = str(tmp_path / "lost+found"), os.listdir

    def refusing(path: Any = ".") -> list[str]:
        if os.fspath(path) == hidden:
            raise PermissionError(13, "Permission denied", hidden)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refusing)
    for sub in ("info", "verify"):
        out = CliRunner().invoke(cli, [sub, "--root", str(tmp_path)])
        assert out.exit_code == 0 and "no channels under" in out.output, (sub, out.output)


def test_a_channel_directory_that_fails_to_list_with_an_io_error_leaves_the_others_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel directory whose listing fails with EIO (a failing disk, a stale NFS handle), not EACCES: the
    tools' channel listing passed that error on, so `wal info` showed no channel at all and `wal verify` checked
    none, each exiting with the one error. It is a directory they cannot list, as one they may not list is: the
    others are shown and checked, and it is reported (review 13e)."""
    import errno
    import os

    from click.testing import CliRunner

    from wal._cli._main import cli
    from wal.walimpls.localfs.tools import unlistable_dirs

    _fill(tmp_path, "a", 3)
    _fill(tmp_path, "b", 3)
    _fill(tmp_path, "c", 3)
    broken, listdir = str(tmp_path / "b"), os.listdir

    def failing(path: Any = ".") -> list[str]:
        if os.fspath(path) == broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO), broken)
        return listdir(path)

    monkeypatch.setattr(os, "listdir", failing)
    assert list_channels(str(tmp_path)) == ["a", "c"]
    assert unlistable_dirs(str(tmp_path)) == [("b", os.strerror(errno.EIO))]
    problems = verify(str(tmp_path))
    assert [p.path for p in problems] == [broken] and "cannot list" in problems[0].message, problems
    run = CliRunner().invoke
    out = run(cli, ["info", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "channel a" in out.output and "channel c" in out.output, out.output
    assert "channel b\n  CANNOT READ" in out.output, out.output
    out = run(cli, ["verify", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "cannot list this directory" in out.output, out.output
    with pytest.raises(WALIOError, match="cannot list"):
        verify(str(tmp_path), "b")


def test_verify_of_a_root_checks_every_channel_past_one_it_cannot_take_as_a_channel(tmp_path: Path) -> None:
    """A directory under the root that holds a channel's files but whose name is no valid channel name (a copy
    named past the 200-byte limit, say): `wal verify` of the root raised that one InvalidArgumentError and checked
    no channel at all, where `wal info` shows it as CANNOT READ and goes on. It is one problem now, and the others
    are checked (review 13e)."""
    _fill(tmp_path, "a", 30)
    long_name = "x" * 220
    shutil.copytree(tmp_path / "a", tmp_path / long_name)
    _fill(tmp_path, "c", 30)
    segs = sorted((tmp_path / "c").glob("*.seg"))
    segs[0].with_suffix(".idx").unlink()  # a problem in the channel after it
    problems = verify(str(tmp_path))
    assert sorted(p.path for p in problems) == sorted([str(tmp_path / long_name),
                                                       str(segs[0].with_suffix(".idx"))]), problems
    assert "longer than 200 bytes" in next(p.message for p in problems if p.path == str(tmp_path / long_name))
