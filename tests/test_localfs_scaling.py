"""Work that must not grow with the length of the log: counted (directory listings, segment lookups), never timed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from _faults import Fault, FaultyFileOps
from _localfs_util import build, msg, open_ro, open_rw

from wal.errors import WALIOError, WALTimeoutError
from wal.walimpls import ReadOption
from wal.walimpls.localfs import FileOps
from wal.walimpls.localfs._state import ChannelLog

SEGMENTS = 200


class _CountingListings(FileOps):
    listings = 0

    def list_files(self, path: str) -> list[str]:
        self.listings += 1
        return super().list_files(path)


def _write_segments(tmp_path: Path, n: int, rare_at: int | None = None) -> list[int]:
    """``n`` sealed segments of one message each (and an active one), vchannels "v" but the ``rare_at``-th."""
    with build(tmp_path, segment_bytes=4096, sync="never") as op:
        w = open_rw(op)
        ids = w.append_batch(
            [msg(b"p" * 3500, tt=1 + i, vchannel="rare" if i == rare_at else "v") for i in range(n)]
        )
        w.close()
    return [int(i.value) for i in ids]


def _read_all(s: object) -> list[int]:
    got: list[int] = []
    while True:
        try:
            got += [int(m.message_id.value) for m in s.recv_batch(1000, 0.3)]  # type: ignore[attr-defined]
        except WALTimeoutError:
            return got


def test_a_follower_reading_a_long_log_does_not_list_the_directory_at_every_segment(tmp_path: Path) -> None:
    """A read-only follower listed the channel directory each time it finished a segment: reading a log of n
    segments cost n listings of n files (10,000 segments: 37 ms of CPU per segment, 30,000 messages in 19 s
    where 1,000 segments took 0.3 s). It now goes to the listed successor of a sealed segment."""
    ids = _write_segments(tmp_path, SEGMENTS)
    fops = _CountingListings()
    with build(tmp_path, _file_ops=fops) as rop:
        ro = open_ro(rop)
        s = ro.read(ReadOption(name="catch-up"))
        assert _read_all(s) == ids
        assert fops.listings < 20, fops.listings  # was one per segment and more
        s.close()
        ro.close()


def test_a_vchannel_filter_skipping_segments_does_not_list_the_directory_at_every_one(tmp_path: Path) -> None:
    """The same listing per segment, for each segment a follower's vchannel filter skipped by its bloom filter."""
    ids = _write_segments(tmp_path, SEGMENTS, rare_at=SEGMENTS - 3)
    fops = _CountingListings()
    with build(tmp_path, _file_ops=fops) as rop:
        ro = open_ro(rop)
        s = ro.read(ReadOption(name="rare", vchannel="rare"))
        got = _read_all(s)
        assert ids[SEGMENTS - 3] in got and len(got) < 10
        assert fops.listings < 20, fops.listings
        s.close()
        ro.close()


def test_an_idle_follower_does_not_list_the_directory_at_every_poll(tmp_path: Path) -> None:
    """A follower waiting at the writer's frontier listed the directory at each poll (every 50 ms at most), to see
    whether a successor had come: an idle follower of a 10,000-segment log burned 40 % of a core. A normal roll
    seals the segment before its successor exists, which the follower sees in its map; a listing (for a writer
    that crashed in a roll) comes at most once a second."""
    ids = _write_segments(tmp_path, SEGMENTS)
    fops = _CountingListings()
    with build(tmp_path, _file_ops=fops) as rop:
        ro = open_ro(rop)
        s = ro.read(ReadOption(name="idle"))
        assert _read_all(s) == ids
        before = fops.listings
        for _ in range(50):  # polls at the frontier, as many as 2.5 s of waiting make
            try:
                s.recv_batch(10, 0)
            except WALTimeoutError:
                pass
        assert fops.listings - before <= 5, fops.listings - before  # was 50
        with build(tmp_path, segment_bytes=4096, sync="never") as wop:  # the writer goes on, through rolls
            w = open_rw(wop)
            more = [int(i.value) for i in w.append_batch([msg(b"q" * 3500, tt=10_000 + k) for k in range(3)])]
            w.close()
        assert _read_all(s) == more
        s.close()
        ro.close()


def test_a_follower_of_a_writer_that_failed_in_a_roll_does_not_list_the_directory_at_every_poll(
    tmp_path: Path,
) -> None:
    """A writer that fails in a roll (a full disk as it makes the successor) leaves its newest segment sealed and
    nothing after it, maybe for hours. A follower at the end of that segment listed the directory at every poll to
    look for the successor (review 14e): the idle CPU that grows with the log, as for the unsealed segment. The
    writer marks a sealed segment once its successor exists; without the mark, a listing a second."""
    faults = FaultyFileOps()
    with build(tmp_path, segment_bytes=4096, sync="never", _file_ops=faults) as wop:
        w = open_rw(wop)
        ids = [int(i.value) for i in w.append_batch([msg(b"p" * 3500, tt=1 + k) for k in range(20)])]
        faults.arm(Fault("fallocate", errno.ENOSPC))  # the successor of the next roll
        with pytest.raises(WALIOError):
            w.append_batch([msg(b"p" * 3500, tt=100)])
        fops = _CountingListings()
        with build(tmp_path, _file_ops=fops) as rop:
            ro = open_ro(rop)
            s = ro.read(ReadOption(name="idle"))
            assert _read_all(s) == ids
            before = fops.listings
            for _ in range(50):  # polls at the sealed end, as many as 2.5 s of waiting make
                try:
                    s.recv_batch(10, 0)
                except WALTimeoutError:
                    pass
            assert fops.listings - before <= 5, fops.listings - before  # was 50
            w = open_rw(wop)  # the writer comes back: it makes the successor and marks the sealed segment
            more = [int(i.value) for i in w.append_batch([msg(b"q" * 3500, tt=200 + k) for k in range(3)])]
            w.close()
            assert _read_all(s) == more
            s.close()
            ro.close()


class _Seg:
    """A segment whose ``first_id`` counts its reads."""

    reads = 0

    def __init__(self, first_id: int) -> None:
        self._first_id = first_id

    @property
    def first_id(self) -> int:
        _Seg.reads += 1
        return self._first_id


def test_the_writer_finds_a_segment_successor_without_walking_the_log() -> None:
    """A scanner of the writer's opener asks for the next segment at each one it finishes, and the lookup walked
    the list from the oldest: reading n segments cost O(n^2) (10,000 segments: 2.3 s of CPU, 1,000: 0.07 s)."""
    n = 2000
    segs = [_Seg(1 + 10 * i) for i in range(n)]
    log = ChannelLog(segs)  # type: ignore[arg-type]
    _Seg.reads = 0
    for i, seg in enumerate(segs):
        assert log.after(seg) is (segs[i + 1] if i + 1 < n else None)  # type: ignore[arg-type, comparison-overlap]
    assert _Seg.reads < 30 * n, _Seg.reads  # a bisection: about log2(n) reads per lookup; the walk made n^2 / 2
    log.retire()
