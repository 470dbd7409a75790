"""Work that must not grow with the length of the log: counted (directory listings, segment lookups), never timed."""

from __future__ import annotations

from wal.walimpls.localfs._state import ChannelLog


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
