"""Read-only WALs: the largest stored time tick, and damage in the active segment seen by a follower."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_ro, open_rw

from wal.errors import CorruptedError, WALIOError, WALTimeoutError
from wal.message import ImmutableMessage
from wal.walimpls import ReadOption
from wal.walimpls.localfs._format import DATA_START, check_record, scan_segment


def test_ro_last_time_tick_is_the_largest_stored(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        ro = open_ro(opener)
        assert ro.last_time_tick() == 0  # nothing yet
        w = open_rw(opener)
        ticks = [1000 + (i * 37) % 500 for i in range(300)]  # out of order, like concurrent appends
        ticks[-3] = 9_999  # the largest one sits in the active segment, not last
        for i, tt in enumerate(ticks):
            w.append(msg(b"p" * (i % 50), tt=tt))
        assert len(list((tmp_path / "p1").glob("*.seg"))) > 5
        assert ro.last_time_tick() == 9_999 == w.last_time_tick()  # writer still open: no close summary
        w.append(msg(b"q", tt=12_345))
        assert ro.last_time_tick() == 12_345
        w.close()
        assert ro.last_time_tick() == 12_345
        for idx in (tmp_path / "p1").glob("*.idx"):  # indexes are hints only
            idx.write_bytes(b"garbage")
        assert ro.last_time_tick() == 12_345
        ro.close()


def test_ro_last_time_tick_in_a_big_tail_uses_the_index(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"x" * 100, tt=5) for _ in range(5000)])  # several index entries in one segment
        w.append(msg(b"y", tt=77))
        w.append_batch([msg(b"x" * 100, tt=6) for _ in range(100)])
        ro = open_ro(opener)
        assert ro.last_time_tick() == 77
        ro.close()
        w.close()


def _crash_image(tmp_path: Path, n: int = 120) -> Path:
    """A channel copied while its writer was open (the last segment has no summaries)."""
    live, image = tmp_path / "live", tmp_path / "image"
    with build(live, segment_bytes=8192) as opener:
        w = open_rw(opener)
        for i in range(n):
            w.append(msg(f"m-{i:04d}-".encode() * 5, tt=10 + i))
        shutil.copytree(live, image)
        w.close()
    return image


def _records(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    res = scan_segment(data, int(path.name[:20]), len(data))
    out, pos = [], DATA_START
    while pos < res.end:
        r = check_record(data, pos, len(data))
        assert r is not None
        out.append((pos, r[0]))
        pos += r[0]
    return out


def _drain(ro: object, timeout: float) -> tuple[list[ImmutableMessage], BaseException | None]:
    got: list[ImmutableMessage] = []
    with ro.read(ReadOption(name="follower")) as s:  # type: ignore[attr-defined]
        try:
            while True:
                got.extend(s.recv_batch(64, timeout))
        except (CorruptedError, WALTimeoutError) as e:
            return got, e


def test_follower_raises_at_damage_in_the_active_segment(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    last = sorted((image / "p1").glob("*.seg"))[-1]
    recs = _records(last)
    assert len(recs) >= 4
    off, size = recs[len(recs) // 2]
    with open(last, "r+b") as f:  # one flipped payload byte, valid records after it
        f.seek(off + size - 9)
        b = f.read(1)
        f.seek(off + size - 9)
        f.write(bytes([b[0] ^ 0x10]))
    first_bad = int(last.name[:20]) + len(recs) // 2
    with build(image, segment_bytes=8192) as opener:
        got, err = _drain(open_ro(opener), timeout=5.0)
    assert isinstance(err, CorruptedError), err  # not a wait for a writer that will never fix it
    assert err.path == str(last) and err.offset == off
    assert [m.message_id.value for m in got] == list(range(1, first_bad))  # type: ignore[attr-defined]
    assert all(bytes(m.payload) == f"m-{i:04d}-".encode() * 5 for i, m in enumerate(got))


def test_follower_waits_at_a_torn_tail(tmp_path: Path) -> None:
    image = _crash_image(tmp_path)
    last = sorted((image / "p1").glob("*.seg"))[-1]
    recs = _records(last)
    end = recs[-1][0] + recs[-1][1]
    with open(last, "r+b") as f:  # a half-written record: garbage, nothing valid after it
        f.seek(end)
        f.write(b"\xa5" * 40)
    with build(image, segment_bytes=8192) as opener:
        got, err = _drain(open_ro(opener), timeout=0.5)
    assert isinstance(err, WALTimeoutError)  # the next writer cuts it; a follower just waits
    assert len(got) == 120


@pytest.mark.parametrize("where", ["header", "payload"])
def test_writer_side_scanner_agrees(tmp_path: Path, where: str) -> None:
    """The writer's own recovery refuses the same damage the follower reports."""
    image = _crash_image(tmp_path)
    last = sorted((image / "p1").glob("*.seg"))[-1]
    off, size = _records(last)[1]
    with open(last, "r+b") as f:
        f.seek(off + (20 if where == "header" else size - 9))
        b = f.read(1)
        f.seek(f.tell() - 1)
        f.write(bytes([b[0] ^ 0x01]))
    with build(image, segment_bytes=8192) as opener:
        with pytest.raises(CorruptedError) as ei:
            open_rw(opener)
        assert ei.value.offset == off
        _got, err = _drain(open_ro(opener), timeout=5.0)
        assert isinstance(err, CorruptedError) and err.offset == off


def test_latest_before_the_writer_ever_wrote_gets_everything_appended_after_read(tmp_path: Path) -> None:
    """A follower started before its writer (`wal tail --from latest`): its start used to be fixed only at the
    first recv, at the end of the log then, so whatever the writer appended in between was lost."""
    from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
    from wal.message import MessageType, MutableMessage
    from wal.options import DeliverPolicy

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, time_tick_interval=0.02)
    ro = op.open(OpenOption(PChannelInfo("orders", 1, AccessMode.RO)))
    s = ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    w = op.open(OpenOption(PChannelInfo("orders", 1)))
    last = [w.append(MutableMessage(MessageType.INSERT, b"m%d" % i)).message_id for i in range(3)][-1]
    got = []
    while True:
        m = s.recv(10)
        if m.message_type is MessageType.INSERT:
            got.append(bytes(m.payload))
        if m.message_id == last:
            break
    assert got == [b"m0", b"m1", b"m2"]
    s.close()
    w.close()
    op.close()


@pytest.mark.parametrize("vchannel", [None, "v1"])
def test_follower_delivers_every_message_before_a_damaged_segment_header_with_a_vchannel_hint(
    tmp_path: Path, vchannel: str | None
) -> None:
    """With a vchannel hint, a follower looks at the next segment's bloom filter (its header first) when it moves
    on: a damaged header there raised out of the batch and lost the messages already read into it (0 of 24
    delivered). It delivers them, then raises at the header, as without a hint."""
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        for i in range(100):
            w.append(msg(b"x" * 64, tt=1000 + i, vchannel="v1"))
        w.close()
    segs = sorted((tmp_path / "p1").glob("*.seg"))
    assert len(segs) >= 3
    bad = segs[1]
    with open(bad, "r+b") as f:  # the creation time: only the header's checksum says it changed
        f.seek(32)
        b = f.read(1)
        f.seek(32)
        f.write(bytes([b[0] ^ 0x01]))
    got: list[int] = []
    with build(tmp_path, segment_bytes=4096) as opener:
        ro = open_ro(opener)
        with ro.read(ReadOption(name="t", vchannel=vchannel)) as s:
            with pytest.raises(CorruptedError) as e:
                while True:
                    got += [m.message_id.value for m in s.recv_batch(1000, 5.0)]  # type: ignore[attr-defined]
        ro.close()
    assert got == list(range(1, int(bad.name[:20])))
    assert (e.value.path, e.value.offset) == (str(bad), 0)


def test_follower_with_a_vchannel_hint_raises_at_a_missing_segment_after_one_it_skips(tmp_path: Path) -> None:
    """A vchannel hint skips sealed segments whose bloom filter lacks the vchannel; it went on from such a segment
    to whatever the directory listed next, so a segment deleted from the middle right after it was passed over in
    silence (IDs 76..100 gone, no error), where a follower without the hint raises at the gap. It raises too."""
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        for v, n in (("v1", 30), ("v2", 60), ("v1", 30)):
            for _ in range(n):
                w.append(msg(b"x" * 64, tt=1, vchannel=v))
        w.close()
    segs = sorted((tmp_path / "p1").glob("*.seg"))
    firsts = [int(p.name[:20]) for p in segs]
    assert firsts[:5] == [1, 26, 51, 76, 101]  # 51..75: v2 only
    segs[3].unlink()
    segs[3].with_suffix(".idx").unlink()
    got: list[int] = []
    with build(tmp_path, segment_bytes=4096) as opener:
        ro = open_ro(opener)
        with ro.read(ReadOption(name="t", vchannel="v1")) as s:
            with pytest.raises(CorruptedError) as e:
                while True:
                    got += [m.message_id.value for m in s.recv_batch(1000, 5.0)]  # type: ignore[attr-defined]
        ro.close()
    assert got[-1] <= 75  # nothing from after the gap
    assert (e.value.path, e.value.offset) == (str(segs[4]), 0)


def _ids_until(s: Any, last: int) -> list[int]:
    """The IDs a backend scanner delivers, up to and including ``last``."""
    got: list[int] = []
    while not got or got[-1] < last:
        got.extend(m.message_id.value for m in s.recv_batch(1000, 2.0))
    return got


def test_a_follower_whose_next_segment_retention_deleted_says_what_it_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention deleted the segment a follower had just listed as its next one (and the one it was in): the
    follower moved on to the oldest kept segment without a word (review 11g: 1 to 44 unwarned holes per run), although
    a loss to retention is always logged (README). Retention is simulated at that moment, to hit the window."""
    import logging

    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 300) for _ in range(60)])
        segs = sorted((tmp_path / "p1").glob("*.seg"))
        assert len(segs) >= 4
        ro = open_ro(opener)
        s = ro.read(ReadOption("slow"))
        src = s._source  # type: ignore[attr-defined]
        real_after = src.after
        deleted = []

        def after(seg: object) -> object:
            nxt = real_after(seg)
            if not deleted:  # retention deletes the two oldest segments right after this listing
                for p in segs[:2]:
                    p.unlink()
                    p.with_suffix(".idx").unlink()
                deleted.extend(segs[:2])
            return nxt

        src.after = after
        with caplog.at_level(logging.WARNING, logger="wal.walimpls.localfs._scanner"):
            got = _ids_until(s, 60)
        second = int(segs[1].name[:20])
        third = int(segs[2].name[:20])
        assert second not in got and got[-1] == 60  # segment 2 was lost to "retention"
        lost = [r.getMessage() for r in caplog.records if "deleted before it read them" in r.getMessage()]
        assert lost and f"IDs {second}..{third - 1}" in lost[0], caplog.text
        s.close()
        ro.close()
        w.close()


def test_a_follower_moved_past_a_deleted_segment_reports_only_the_ids_it_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """_relocate reported a loss from the first ID of the segment it had listed, not from where the reader starts:
    a follower started after the last ID (or from the middle of a segment) whose listed segment retention deleted
    before it mapped it logged IDs it never asked for as lost; after the last ID, a loss where none was (review 11h).
    Retention is simulated right after the listing, to hit the window."""
    import logging

    from wal.options import DeliverPolicy
    from wal.walimpls.localfs import LocalFSMessageID

    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        w.append_batch([msg(b"a" * 300) for _ in range(64)])
        last_seg = int(sorted((tmp_path / "p1").glob("*.seg"))[-1].name[:20])
        ro = open_ro(opener)
        s = ro.read(ReadOption("tail", deliver_policy=DeliverPolicy.start_after(LocalFSMessageID(64))))
        src = s._source  # type: ignore[attr-defined]
        real_find = src.find

        def find(mid: int) -> object:
            seg = real_find(mid)
            src.find = real_find
            assert seg.first_id == last_seg  # the segment that holds 64, full: the next append rolls
            w.append_batch([msg(b"b" * 300) for _ in range(12)])  # the writer rolls on ...
            for p in sorted((tmp_path / "p1").glob("*.seg")):  # ... and retention deletes up to the listed one
                if int(p.name[:20]) <= last_seg:
                    p.unlink()
                    p.with_suffix(".idx").unlink()
            return seg

        src.find = find
        with caplog.at_level(logging.WARNING, logger="wal.walimpls.localfs._scanner"):
            got = _ids_until(s, 76)
        assert got == list(range(65, 77))  # nothing it asked for was lost
        assert "deleted before it read them" not in caplog.text
        s.close()
        ro.close()
        w.close()


def test_a_read_only_open_of_a_missing_channel_creates_nothing(tmp_path: Path) -> None:
    # A read-only open made the channel directory (and the root): a follower writes nothing, and a mistyped
    # channel name left a directory behind. Through the whole stack (the adaptor's RO WAL and a scanner).
    from wal import AccessMode, OpenOption, PChannelInfo, registry
    from wal import ReadOption as UserReadOption

    root = tmp_path / "root"
    with registry.must_get_builder("localfs").build(root=str(root), segment_bytes=1 << 20) as op:
        with op.open(OpenOption(PChannelInfo("nowhere", 0, AccessMode.RO))) as ro:
            with ro.read(UserReadOption()) as s, pytest.raises(WALTimeoutError):
                s.recv(0.05)
    assert not root.exists()


def test_a_follower_started_before_its_writer_made_the_channel_is_woken_by_its_events(tmp_path: Path) -> None:
    # The follower's opener could not watch a directory that was not there: it watches it once a scanner finds it.
    with build(tmp_path) as ropener, build(tmp_path, segment_bytes=4096) as wopener:
        ro = open_ro(ropener, "later")
        s = ro.read(ReadOption(name="f"))
        with pytest.raises(WALTimeoutError):
            s.recv(0.05)
        assert not (tmp_path / "later").exists() and "later" not in ropener._watches
        w = open_rw(wopener, "later")  # another opener: only file events and polling reach the follower
        w.append(msg(b"first"))
        assert bytes(s.recv(10.0).payload) == b"first"
        with pytest.raises(WALTimeoutError):
            s.recv(0.05)  # waiting again: the watch is made now
        assert "later" in ropener._watches
        w.append(msg(b"second"))
        assert bytes(s.recv(10.0).payload) == b"second"
        s.close()
        ro.close()
        assert "later" not in ropener._watches
        w.close()


def test_a_follower_opened_while_another_closes_keeps_its_watch(tmp_path: Path) -> None:
    """The last follower of a channel closing let go of the opener's lock before it unscheduled the channel's
    watch; a follower of the same channel opened just then scheduled a new watch, which the closing one's unschedule
    then removed (watchdog's watches of one directory are equal): the new follower had no inotify wake-up and
    polled, up to 50 ms late. Review 15c."""
    import threading

    with build(tmp_path) as wopener, build(tmp_path) as opener:
        w = open_rw(wopener)
        w.append(msg(b"x"))
        first = open_ro(opener)
        obs = opener._observer
        assert obs is not None and len(obs.emitters) == 1
        unschedule = obs.unschedule
        others: list[Any] = []

        def open_another_then_unschedule(watch: Any) -> None:
            t = threading.Thread(target=lambda: others.append(open_ro(opener)))
            t.start()  # another follower opens as this one closes
            t.join(0.5)  # it finishes here before the fix; after, it waits for this close's unschedule
            unschedule(watch)

        obs.unschedule = open_another_then_unschedule
        first.close()
        obs.unschedule = unschedule
        deadline = time.monotonic() + 10
        while not others and time.monotonic() < deadline:
            time.sleep(0.01)
        assert others, "the second follower's open did not finish"
        assert "p1" in opener._watches
        assert len(obs.emitters) == 1  # 0 before: the new follower's watch was gone with the old one's
        others[0].close()
        assert len(obs.emitters) == 0
        w.close()


def _fifo_of(path: Path) -> None:
    import os

    path.unlink()
    os.mkfifo(path)


@pytest.mark.timeout(60)  # before: the follower's open of the segment blocked for ever
def test_a_follower_raises_at_a_fifo_named_like_a_segment(tmp_path: Path) -> None:
    """A FIFO under a segment's name: a read-only follower opened it for reading and waited for a writer of the pipe
    for ever. It delivers the messages before it, then raises CorruptedError naming it (no writer makes one)."""
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        for i in range(100):
            w.append(msg(b"x" * 64, tt=1000 + i, vchannel="v1"))
        w.close()
    bad = sorted((tmp_path / "p1").glob("*.seg"))[1]
    _fifo_of(bad)
    got: list[int] = []
    with build(tmp_path, segment_bytes=4096) as opener:
        ro = open_ro(opener)
        with ro.read(ReadOption(name="t")) as s:
            with pytest.raises(CorruptedError, match="a FIFO, not a regular file") as e:
                while True:
                    got += [m.message_id.value for m in s.recv_batch(1000, 5.0)]  # type: ignore[attr-defined]
        ro.close()
    assert got == list(range(1, int(bad.name[:20])))
    assert (e.value.path, e.value.offset) == (str(bad), 0)


@pytest.mark.timeout(60)  # before: the writer's open blocked for ever on a FIFO index or TERM
@pytest.mark.parametrize("which", ["segment", "index", "TERM", "LOCK"])
def test_opening_for_write_refuses_a_fifo_named_like_a_channel_file(tmp_path: Path, which: str) -> None:
    """A FIFO under an index's or TERM's name made the writer's open block for ever; under a segment's name it
    failed with "Illegal seek", and under LOCK's it was taken for the lock. Each is refused now, naming the file."""
    from wal.errors import WALIOError

    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener, term=2)
        for i in range(100):
            w.append(msg(b"x" * 64, tt=1000 + i, vchannel="v1"))
        w.close()
    chdir = tmp_path / "p1"
    segs = sorted(chdir.glob("*.seg"))
    path = {"segment": segs[1], "index": segs[1].with_suffix(".idx"), "TERM": chdir / "TERM",
            "LOCK": chdir / "LOCK"}[which]
    _fifo_of(path)
    with build(tmp_path, segment_bytes=4096) as opener:
        with pytest.raises(WALIOError, match="a FIFO, not a regular file") as e:
            open_rw(opener, term=3)
        assert str(path) in str(e.value)


class _Refuse:
    """Makes one file unreadable (EACCES) through the backend's own file calls, as a wrong owner or mode does."""

    def __init__(self) -> None:
        from wal.walimpls.localfs import FileOps

        outer = self
        self.path = ""

        class Ops(FileOps):
            def open(self, path: str, flags: int, mode: int = 0o600) -> int:
                if path == outer.path:
                    import errno
                    import os

                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
                return super().open(path, flags, mode)

        self.ops = Ops()


def _full_ro(root: Path, refuse: _Refuse) -> Any:
    from wal import AccessMode, OpenOption, PChannelInfo, registry

    opener = registry.must_get_builder("localfs").build(root=str(root), segment_bytes=1 << 20, _file_ops=refuse.ops)
    return opener, opener.open(OpenOption(channel=PChannelInfo(name="p1", term=0, access_mode=AccessMode.RO)))


def _data(s: Any, n: int, timeout: float) -> list[int]:
    import time

    from wal.message import MessageType

    got: list[int] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        try:
            m = s.recv(timeout=0.5)
        except WALTimeoutError:
            continue
        if m.message_type is MessageType.INSERT:
            got.append(int(m.message_id.marshal()))
    return got


def test_a_follower_that_may_not_read_a_segment_says_so_and_goes_on_once_it_may(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment the follower may not open (EACCES: another user's 0600 file) made it retry for ever in silence:
    no message, no error, no log line. It still retries (permissions can be fixed while it waits, and a transient
    error must not end a follower), but it warns once, naming the file and why, and says when it reads again."""
    import logging

    from _cli_util import fill

    from wal import ReadOption
    from wal.options import DeliverPolicy
    from wal.walimpls.localfs import LocalFSMessageID

    ids = [int(i) for i in fill(tmp_path, n=100)]
    segs = sorted((tmp_path / "p1").glob("*.seg"))
    assert len(segs) >= 3
    refuse = _Refuse()
    refuse.path = str(segs[1])
    opener, ro = _full_ro(tmp_path, refuse)
    try:
        with caplog.at_level(logging.WARNING, logger="wal.adaptor._scanner"):
            s = ro.read(ReadOption(deliver_policy=DeliverPolicy.all()))
            got = _data(s, len(ids), 1.5)  # at most the first segment's: the rest lies behind the unreadable one
            assert len(got) < len(ids) and not s.done().is_set()
            warned = [r.getMessage() for r in caplog.records if "reading the backend failed" in r.getMessage()]
            assert len(warned) == 1, warned  # once, not at every retry
            assert str(segs[1]) in warned[0] and "Permission denied" in warned[0], warned
            refuse.path = ""  # the operator fixed the mode
            got += _data(s, len(ids) - len(got), 10.0)
            assert got == ids
            assert any("works again" in r.getMessage() for r in caplog.records)
            s.close()
            # An index it may not read is derived data: a follower seeking through it reads the segment instead
            # (before, it retried the same error for ever, silently).
            refuse.path = str(segs[1].with_suffix(".idx"))
            start = int(segs[1].name[:20]) + 3
            s = ro.read(ReadOption(deliver_policy=DeliverPolicy.start_from(LocalFSMessageID(start))))
            want = [i for i in ids if i >= start]
            assert _data(s, len(want), 10.0) == want
            s.close()
    finally:
        ro.close()
        opener.close()


def test_a_latest_read_of_a_segment_it_may_not_open_raises_a_wal_error(tmp_path: Path) -> None:
    """``read(latest())`` positions at once, outside the conversion ``recv`` makes: a newest segment the follower
    may not open (EACCES) raised a bare ``PermissionError`` from ``read()``, where every error of the library is a
    ``WALError`` (here ``WALIOError``, naming the file)."""
    from _cli_util import fill

    from wal import ReadOption
    from wal.errors import WALIOError
    from wal.options import DeliverPolicy

    fill(tmp_path, n=50)
    refuse = _Refuse()
    refuse.path = str(sorted((tmp_path / "p1").glob("*.seg"))[-1])
    opener, ro = _full_ro(tmp_path, refuse)
    try:
        with pytest.raises(WALIOError, match="Permission denied") as e:
            ro.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
        assert refuse.path in str(e.value)
        refuse.path = ""
        ro.read(ReadOption(deliver_policy=DeliverPolicy.latest())).close()
    finally:
        ro.close()
        opener.close()


def test_a_read_only_open_of_a_mistyped_channel_warns_once_and_keeps_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only open of a channel no writer ever made (a typo) waited for ever in silence. It still waits (a
    follower may start before its writer), but after MISSING_CHANNEL_WARNING_AFTER it logs one warning naming the
    missing directory, the root and the channels the root does hold; and it reads the channel once it is made."""
    import logging

    from wal.walimpls.localfs import _opener

    monkeypatch.setattr(_opener, "MISSING_CHANNEL_WARNING_AFTER", 0.3, raising=False)
    with build(tmp_path, segment_bytes=4096) as wopener:
        open_rw(wopener, "orders").close()
    with build(tmp_path) as ropener, caplog.at_level(logging.WARNING, logger="wal.walimpls.localfs._opener"):
        ro = open_ro(ropener, "ordres")
        with ro.read(ReadOption(name="t")) as s:
            for _ in range(8):  # 1.2 s: well past the delay, and several polls after the warning
                with pytest.raises(WALTimeoutError):
                    s.recv(0.15)
            assert not s.done().is_set()
            warned = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
            assert len(warned) == 1, warned
            assert str(tmp_path / "ordres") in warned[0] and str(tmp_path) in warned[0], warned
            assert "channels there: orders" in warned[0], warned
            with build(tmp_path) as wopener:  # made after all: the follower reads it
                w = open_rw(wopener, "ordres")
                w.append(msg(b"late", tt=5))
                got = s.recv_batch(16, 5.0)
                w.close()
            assert any(bytes(m.payload) == b"late" for m in got), got
        ro.close()


def _channel_maps(chdir: Path) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if str(chdir) + "/" in line)


@pytest.mark.parametrize("vchannel", [None, "rare"])
def test_follower_keeps_no_map_of_segments_it_has_read_past(tmp_path: Path, vchannel: str | None) -> None:
    """A follower kept every segment it had read (or skipped by its filter) mapped, each map holding a file
    descriptor, for as long as the file stayed: a log of thousands of segments ran it out of descriptors."""
    op = build(tmp_path, segment_bytes=16 << 10)
    w = open_rw(op)
    w.append(msg(b"r", tt=1, vchannel="rare"))
    tt = 2
    for _ in range(30):  # 30 segments
        w.append_batch([msg(b"x" * 500, tt=tt + i, vchannel="v1") for i in range(30)])
        tt += 30
    w.append(msg(b"r", tt=tt, vchannel="rare"))
    ro = open_ro(op)
    s = ro.read(ReadOption(name="f", vchannel=vchannel))
    got = []
    while not got or got[-1].payload != b"r" or len(got) == 1:
        got += s.recv_batch(64, timeout=5)
    assert len({m.message_id for m in got}) == len(got)
    assert sum(1 for p in (tmp_path / "p1").iterdir() if p.suffix == ".seg") >= 20
    assert _channel_maps(tmp_path / "p1") <= 2
    s.close()
    ro.close()
    w.close()
    op.close()


def _ids(ms: list[ImmutableMessage]) -> list[int]:
    return [int(m.message_id.value) for m in ms]  # type: ignore[attr-defined]


def _recv_until_error(s: Any, seconds: float = 10.0) -> tuple[list[int], BaseException | None]:
    """What a follower delivers, and the error that ends it, within ``seconds``."""
    got: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got += _ids(s.recv_batch(64, 0.2))
        except WALTimeoutError:
            continue
        except CorruptedError as e:
            return got, e
    return got, None


@pytest.mark.parametrize("segment_bytes", [4096, 1 << 20])
@pytest.mark.parametrize("how", ["rmtree", "files"])
def test_a_follower_of_a_channel_deleted_and_made_anew_ends_loudly(tmp_path: Path, how: str,
                                                                   segment_bytes: int) -> None:
    """A channel deleted (``rm -rf`` of its directory, or of the files in it) and written anew starts its IDs at 1
    again: a follower that had read IDs 1..4 of the old log went on at ID 5 of the new one as if it continued the
    old (the new 1..4 never delivered, no warning; a new writer with larger segments, whose first segment the
    follower mapped again when it grew), or waited for good in the old log's deleted file (same segment size). It
    ends with CorruptedError; a new read (of the same read-only WAL too) starts over on the new log."""
    chdir = tmp_path / "p1"
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"old-%d" % i, tt=1 + i) for i in range(4)])
        w.close()
    rop = build(tmp_path)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="f"))
    assert _ids(s.recv_batch(64, 5.0)) == [1, 2, 3, 4]
    if how == "rmtree":
        shutil.rmtree(chdir)
    else:
        for p in chdir.iterdir():
            p.unlink()
    with build(tmp_path, segment_bytes=segment_bytes) as wop:
        w = open_rw(wop)
        new = w.append_batch([msg(b"new-%d" % i, tt=100 + i) for i in range(40)])  # the same sizes as the old
        assert int(new[0].value) == 1
        got, err = _recv_until_error(s, 5.0)
        assert got == [], f"the follower went on in the new log at {got}"
        assert isinstance(err, CorruptedError)
        assert "made anew" in str(err) or "replaced" in str(err), err
        assert s.error() is err and s.done().is_set()
        again = ro.read(ReadOption(name="g"))  # a new read of the same read-only WAL starts over on the new log
        assert _ids(again.recv_batch(64, 5.0))[:3] == [1, 2, 3]
        again.close()
        w.close()
    s.close()
    ro.close()
    rop.close()


def test_a_follower_in_a_segment_replaced_under_its_name_ends_loudly(tmp_path: Path) -> None:
    """A segment file replaced under the same name (a restore, a copy from another channel) was taken for the one
    the follower had mapped: it went on reading the old map, then took the new file's records for the old one's."""
    chdir = tmp_path / "p1"
    other = tmp_path / "other"
    with build(tmp_path, segment_bytes=1 << 20) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"a-%d" % i, tt=1 + i) for i in range(3)])
        w.close()
        w = open_rw(wop, "other")
        w.append_batch([msg(b"b-%d" % i, tt=1 + i) for i in range(9)])
        w.close()
    rop = build(tmp_path)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="f"))
    assert _ids(s.recv_batch(64, 5.0))[:3] == [1, 2, 3]
    seg = next(p for p in chdir.iterdir() if p.suffix == ".seg")
    tmp = chdir / "replacing.tmp"
    shutil.copyfile(other / seg.name, tmp)
    tmp.replace(seg)
    got, err = _recv_until_error(s, 5.0)
    assert got == [], f"the follower read the replaced segment's {got}"
    assert isinstance(err, CorruptedError) and "replaced" in str(err), err
    s.close()
    ro.close()
    rop.close()


def test_a_follower_past_the_segments_of_a_channel_made_anew_in_its_directory_ends_loudly(tmp_path: Path) -> None:
    """The files of a channel deleted (its directory kept) and a new writer that has not reached the segment the
    follower is in: the follower waited in the old log's deleted file, silent, until the new log reached that
    name. Retention deletes the oldest segments first, so the segment it reads gone while an older one is listed is
    the log made anew."""
    chdir = tmp_path / "p1"
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"x" * 1500, tt=1 + i) for i in range(12)])  # six segments or so
        w.close()
    rop = build(tmp_path)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="f"))
    got = _ids(s.recv_batch(64, 5.0))
    while got[-1] < 12:
        got += _ids(s.recv_batch(64, 5.0))
    for p in chdir.iterdir():
        p.unlink()
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"new", tt=100)])
        more, err = _recv_until_error(s, 5.0)
        assert more == []
        assert isinstance(err, CorruptedError) and "deleted" in str(err), err
        w.close()
    s.close()
    ro.close()
    rop.close()


def _fds_on(path: Path, deleted: bool = False) -> int:
    want = f"{path} (deleted)" if deleted else str(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == want:
                n += 1
        except OSError:
            pass
    return n


def test_a_read_only_wal_holds_its_channel_directory_once_and_lets_it_go_at_close(tmp_path: Path) -> None:
    """The directory is held open so that its inode number cannot go to a channel made anew (see ChannelDir): one
    descriptor per read-only WAL, not per reader, none before the directory exists, none after the close; and a
    reader of a channel made anew gets the new directory, the old one's descriptor going with its last reader."""
    chdir = tmp_path / "p1"
    rop = build(tmp_path)
    ro = open_ro(rop)
    s1 = ro.read(ReadOption(name="a"))
    with pytest.raises(WALTimeoutError):
        s1.recv(0.05)
    assert _fds_on(chdir) == 0  # a follower before its writer: nothing to hold yet
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append(msg(b"one", tt=1))
        w.close()
    s2 = ro.read(ReadOption(name="b"))
    assert _ids(s1.recv_batch(8, 5.0)) == [1] and _ids(s2.recv_batch(8, 5.0)) == [1]
    assert _fds_on(chdir) == 1
    shutil.rmtree(chdir)
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append(msg(b"new", tt=5))
        w.close()
    s3 = ro.read(ReadOption(name="c"))
    assert [bytes(m.payload) for m in s3.recv_batch(8, 5.0)] == [b"new"]
    assert _fds_on(chdir) == 1  # the new directory; the deleted one is held for s1 and s2 still
    assert _fds_on(chdir, deleted=True) == 1
    for s in (s1, s2):
        assert isinstance(_recv_until_error(s, 5.0)[1], CorruptedError)
        s.close()
    ro.close()
    assert _fds_on(chdir) == 0 and _fds_on(chdir, deleted=True) == 0
    s3.close()
    rop.close()


def test_a_full_wal_follower_of_a_channel_made_anew_ends_with_corrupted_error(tmp_path: Path) -> None:
    """Through the whole stack: the adaptor's scanner ends with the backend's error rather than read on."""
    from wal import AccessMode, OpenOption, PChannelInfo, registry
    from wal import ReadOption as UserReadOption
    from wal.message import MessageType, MutableMessage

    builder = registry.must_get_builder("localfs")
    ch = PChannelInfo("p1", 1)
    with builder.build(root=str(tmp_path), segment_bytes=1 << 20) as op, op.open(OpenOption(ch)) as w:
        w.append(MutableMessage(MessageType.INSERT, b"old", vchannel="v"))
    with builder.build(root=str(tmp_path)) as rop, rop.open(OpenOption(PChannelInfo("p1", 0, AccessMode.RO))) as ro:
        with ro.read(UserReadOption()) as s:
            m = s.recv(5.0)
            while m.message_type is MessageType.TIME_TICK:
                m = s.recv(5.0)
            assert bytes(m.payload) == b"old"
            shutil.rmtree(tmp_path / "p1")
            with builder.build(root=str(tmp_path), segment_bytes=1 << 20) as op, op.open(OpenOption(ch)) as w:
                for i in range(5):
                    w.append(MutableMessage(MessageType.INSERT, b"new-%d" % i, vchannel="v"))
                deadline = time.monotonic() + 10
                with pytest.raises(CorruptedError, match="made anew"):
                    while time.monotonic() < deadline:
                        try:
                            m = s.recv(0.5)
                        except WALTimeoutError:
                            continue
                        assert m.message_type is MessageType.TIME_TICK, f"delivered {bytes(m.payload)!r}"
                assert isinstance(s.error(), CorruptedError)


@pytest.mark.parametrize("writer_open", [True, False])
def test_a_follower_of_a_deleted_channel_ends_loudly(tmp_path: Path, writer_open: bool) -> None:
    """``rm -rf`` of a channel under its follower, with no new writer (yet): it waited for good, silent, in the
    deleted file. A writer still open there refuses its next append (since review 16a,
    ``test_localfs_writer_dir.py``), though its record is in the deleted file by then."""
    op = build(tmp_path, segment_bytes=4096)
    w = open_rw(op)
    w.append_batch([msg(b"x", tt=1 + i) for i in range(3)])
    if not writer_open:
        w.close()
    rop = build(tmp_path)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="f"))
    assert _ids(s.recv_batch(8, 5.0)) == [1, 2, 3]
    shutil.rmtree(tmp_path / "p1")
    if writer_open:
        time.sleep(0.002)  # the writer checks its directory at most once a millisecond (DIR_CHECK_INTERVAL)
        with pytest.raises(WALIOError, match="deleted or renamed away"):
            w.append(msg(b"lost", tt=10))
    got, err = _recv_until_error(s, 5.0)
    assert got in ([], [4])  # the refused 4 may be in the file the follower maps (written before the check)
    assert isinstance(err, CorruptedError) and "channel directory" in str(err) and "deleted" in str(err), err
    s.close()
    ro.close()
    rop.close()
    w.close()
    op.close()


def test_a_follower_does_not_enter_a_segment_of_a_channel_made_anew_from_an_older_listing(tmp_path: Path) -> None:
    """A follower stopped at the end of a sealed segment goes to the successor it listed before, without listing
    again: with the channel made anew in between (segments of the same sizes), it mapped the new log's file of that
    name and went on with its records, which start at the ID it expected."""
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"old" * 500, tt=1 + i) for i in range(3)])  # two records a segment
        w.close()
    rop = build(tmp_path)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="f"))
    assert _ids(s.recv_batch(2, 5.0)) == [1, 2]  # stops at the end of the first segment, the second one listed
    shutil.rmtree(tmp_path / "p1")
    with build(tmp_path, segment_bytes=4096) as wop:
        w = open_rw(wop)
        w.append_batch([msg(b"new" * 500, tt=100 + i) for i in range(6)])
        got, err = _recv_until_error(s, 5.0)
        assert got == [], f"the follower went on in the new log at {got}"
        assert isinstance(err, CorruptedError) and "made anew" in str(err), err
        w.close()
    s.close()
    ro.close()
    rop.close()


@pytest.mark.parametrize("how", ["rmtree", "rename"])
def test_the_openers_watch_moves_to_a_channel_directory_made_anew(tmp_path: Path, how: str) -> None:
    """The read-only opener's inotify watch stayed on the deleted (or moved) directory: a new read of the channel
    made anew was woken by its polling only (up to 50 ms late), never by a file event. Review 16a."""
    wop = build(tmp_path)
    w = open_rw(wop)
    w.append(msg(b"old", tt=1))
    rop = build(tmp_path)
    ro = open_ro(rop)
    hub = rop._hubs["p1"]
    woken_by: list[str] = []
    bump = hub.bump

    def spy() -> None:
        woken_by.append(threading.current_thread().name)
        bump()

    hub.bump = spy
    s = ro.read(ReadOption(name="f"))
    assert _ids(s.recv_batch(8, 5.0)) == [1]
    w.close()
    if how == "rmtree":
        shutil.rmtree(tmp_path / "p1")
    else:
        os.rename(tmp_path / "p1", tmp_path / "moved")
    w = open_rw(wop)  # the channel made anew
    got, err = _recv_until_error(s, 5.0)
    assert got == [] and isinstance(err, CorruptedError), (got, err)
    s.close()
    s = ro.read(ReadOption(name="g"))  # binds to the new directory
    with pytest.raises(WALTimeoutError):
        s.recv_batch(8, 0.05)
    me = threading.current_thread().name
    woken_by.clear()
    w.append(msg(b"new", tt=5))
    deadline = time.monotonic() + 10.0
    while not [t for t in woken_by if t != me] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t for t in woken_by if t != me], "no file event woke the readers of the channel made anew"
    assert [bytes(m.payload) for m in s.recv_batch(8, 5.0)] == [b"new"]
    s.close()
    ro.close()
    rop.close()
    w.close()
    wop.close()
