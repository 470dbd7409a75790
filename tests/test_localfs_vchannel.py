"""A scanner for one vchannel skips sealed segments that hold none of its messages, through the whole WAL.

Every segment holds the adaptor's broadcast time ticks; they must not keep a segment from being skipped, while
broadcast data (vchannel "") must.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from _localfs_util import build, msg, open_ro, open_rw, read_all

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import WALTimeoutError
from wal.message import ImmutableMessage, MessageType, MutableMessage
from wal.walimpls import ReadOption as ImplsReadOption
from wal.walimpls.localfs import FileOps, tools
from wal.walimpls.localfs._format import SEAL_MAGIC, SEAL_OFF, Summary, bloom_might_contain


class MapCounter(FileOps):
    """Records which segment files are opened read-only: scanners open a segment only to map it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: list[str] = []

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if path.endswith(".seg") and flags & os.O_ACCMODE == os.O_RDONLY:
            with self.lock:
                self.opened.append(os.path.basename(path))
        return super().open(path, flags, mode)


def _insert(vchannel: str | None, payload: bytes) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, payload, None, vchannel)


def _segments(chdir: Path) -> list[tuple[int, str]]:
    return sorted((int(p.name[:20]), p.name) for p in chdir.glob("*.seg"))


def _segment_of(segs: list[tuple[int, str]], mid: int) -> str:
    return [name for first, name in segs if first <= mid][-1]


def _recv_until(s: Any, want: int, timeout: float = 10.0) -> list[ImmutableMessage]:
    """Data messages (time ticks dropped) until ``want`` arrived, then whatever comes within 0.3 s more."""
    out: list[ImmutableMessage] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            m = s.recv(0.5)
        except WALTimeoutError:
            continue
        if m.message_type is not MessageType.TIME_TICK:
            out.append(m)
    end = time.monotonic() + 0.3  # anything extra shows up too (ticks keep coming: bounded by time)
    while (left := end - time.monotonic()) > 0:
        try:
            m = s.recv(left)
        except WALTimeoutError:
            break
        if m.message_type is not MessageType.TIME_TICK:
            out.append(m)
    return out


def test_full_wal_reader_of_one_vchannel_skips_segments_without_it(tmp_path: Path) -> None:
    builder = registry.must_get_builder("localfs")
    expected: list[bytes] = []  # what a v2 reader must get, in order: v2 data and broadcast data
    with builder.build(root=str(tmp_path), segment_bytes=4096, time_tick_interval=0.005) as op:
        w = op.open(OpenOption(PChannelInfo("p1", 1)))
        for k in range(80):  # chunks with a pause: the adaptor persists a broadcast tick into every segment
            for j in range(4):
                w.append(_insert("v1", b"one-%03d-%d" % (k, j) * 10))
            if k % 20 == 7:
                w.append(_insert("v2", b"two-%03d" % k))
                expected.append(b"two-%03d" % k)
            if k == 50:
                w.append(_insert(None, b"broadcast-data"))
                expected.append(b"broadcast-data")
            time.sleep(0.012)
        w.close()

    chdir = tmp_path / "p1"
    segs = _segments(chdir)
    assert len(segs) >= 12
    # What each segment holds, read back without the hint.
    content: dict[str, set[tuple[MessageType, str]]] = {name: set() for _, name in segs}
    with build(tmp_path) as bare:
        for m in read_all(open_ro(bare)):
            content[_segment_of(segs, m.message_id.value)].add((m.message_type, m.vchannel))  # type: ignore[attr-defined]
    sealed = [name for _, name in segs[:-1]]
    wanted = {n for n in sealed if (MessageType.INSERT, "v2") in content[n] or (MessageType.INSERT, "") in content[n]}
    skippable = set(sealed) - wanted
    assert len(skippable) >= 8
    # The point of the fix: these segments hold broadcast ticks (vchannel ""), and are skippable all the same.
    with_ticks = {n for n in skippable if any(t is MessageType.TIME_TICK for t, _ in content[n])}
    assert len(with_ticks) >= len(skippable) // 2
    for name in sealed:  # the seal summaries say so: no "" for ticks, "" for broadcast data
        raw = (chdir / name).read_bytes()
        summ = Summary.unpack(raw, SEAL_OFF, SEAL_MAGIC)
        assert summ is not None
        assert bloom_might_contain(summ.bloom, "v2") or bloom_might_contain(summ.bloom, "") or name not in wanted
        if name in skippable:
            assert not bloom_might_contain(summ.bloom, "v2") and not bloom_might_contain(summ.bloom, "")

    ops = MapCounter()
    with builder.build(root=str(tmp_path), segment_bytes=4096, _file_ops=ops) as op:
        w = op.open(OpenOption(PChannelInfo("p1", 2)))  # a fresh opener: the scanner reads from the files
        ops.opened.clear()
        with w.read(ReadOption(vchannel="v2", name="v2")) as s:
            got = _recv_until(s, len(expected))
        opened = set(ops.opened)
        w.close()
    assert [bytes(m.payload) for m in got] == expected
    ids = [m.message_id.value for m in got]  # type: ignore[attr-defined]
    assert ids == sorted(ids)
    assert opened & skippable == set(), f"mapped segments the bloom filter rules out: {sorted(opened & skippable)}"
    assert wanted <= opened
    assert tools.verify(str(tmp_path), "p1") == []  # the checker agrees with what the writer put in the summaries


def test_full_wal_ro_follower_with_vchannel_across_the_tail(tmp_path: Path) -> None:
    builder = registry.must_get_builder("localfs")
    with builder.build(root=str(tmp_path), segment_bytes=4096, time_tick_interval=0.005) as op, \
            builder.build(root=str(tmp_path), segment_bytes=4096) as op_ro:
        w = op.open(OpenOption(PChannelInfo("p1", 1)))
        w.append(_insert("v1", b"before"))
        ro = op_ro.open(OpenOption(PChannelInfo("p1", 0, AccessMode.RO)))
        expected: list[bytes] = []
        with ro.read(ReadOption(vchannel="v2", name="follow-v2")) as s:
            for k in range(60):  # segments roll under the follower, most of them without v2
                w.append(_insert("v1", b"x" * 300))
                if k % 9 == 0:
                    p = b"v2-%02d" % k
                    w.append(_insert("v2", p))
                    expected.append(p)
                if k == 31:
                    w.append(_insert(None, b"everyone"))
                    expected.append(b"everyone")
                if k % 10 == 0:
                    time.sleep(0.02)
            got = _recv_until(s, len(expected))
        assert [bytes(m.payload) for m in got] == expected
        ro.close()
        w.close()


def test_backend_scanner_with_vchannel_follows_the_active_segment(tmp_path: Path) -> None:
    """The bare backend: delivers v2 and broadcast data (and whatever shares a segment with them) in ID order while
    the writer appends and rolls, for the writer's and a follower's scanners alike. A scanner that keeps up reads
    each segment while it is active (never skipped); one catching up skips the sealed segments without v2."""
    want: list[bytes] = []
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        for round_, source in enumerate((w, open_ro(opener))):  # the follower starts over: it gets both rounds
            s = source.read(ImplsReadOption(name="v2", vchannel="v2"))
            got: list[ImmutableMessage] = []
            stop = threading.Event()

            def pull(s: Any = s, got: list[ImmutableMessage] = got, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        got.extend(s.recv_batch(100, 0.05))
                    except WALTimeoutError:
                        pass

            t = threading.Thread(target=pull)
            t.start()
            for k in range(120):
                w.append(msg(b"a" * 200, tt=1, vchannel="v1"))
                w.append(msg(b"", tt=1, mtype=MessageType.TIME_TICK))
                if k % 40 == 39:
                    p = f"v2-{k}".encode()
                    w.append(msg(p, tt=1, vchannel="v2"))
                    want.append(p)
                if k == 70:
                    w.append(msg(b"all", tt=1))
                    want.append(b"all")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and [bytes(m.payload) for m in got if m.vchannel != "v1"][-1:] != [
                want[-1]
            ]:
                time.sleep(0.02)
            stop.set()
            t.join(5)
            s.close()
            data = [bytes(m.payload) for m in got if m.message_type is not MessageType.TIME_TICK and m.vchannel != "v1"]
            assert data == want
            ids = [m.message_id.value for m in got]  # type: ignore[attr-defined]
            assert ids == sorted(set(ids))  # in order, no duplicates (gaps are the skipped segments)
            if round_ == 1:  # catching up over sealed segments: the leading v1-only ones were skipped
                assert ids[0] > 1 and len(ids) < 4 * 120
        w.close()
