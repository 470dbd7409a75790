"""Read-only followers: another process (or another opener) tails a writer and gets every message in order."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import PY, build, child_env, msg, open_ro, open_rw

from wal.errors import WALTimeoutError
from wal.walimpls import ReadOption
from wal.walimpls.localfs import FileOps, _opener

CHILD = str(Path(__file__).with_name("_localfs_child.py"))


def test_follower_in_another_process_gets_everything_in_order(tmp_path: Path) -> None:
    n = 1500
    with build(tmp_path, segment_bytes=8192) as opener:
        w = open_rw(opener)
        early = [w.append(msg(f"early-{i}".encode())) for i in range(100)]  # some history before it starts
        p = subprocess.Popen([PY, CHILD, "follow", str(tmp_path), "p1", str(n)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=child_env())
        assert p.stdout is not None
        # Read "ready" byte by byte: a buffered readline could swallow the first records the follower prints, and
        # communicate() below reads the raw pipe, so they would be lost to the test (not to the follower).
        ready = b""
        while not ready.endswith(b"\n"):
            c = os.read(p.stdout.fileno(), 1)
            assert c, "follower exited before it was ready"
            ready += c
        assert ready == b"ready\n"
        payloads = [f"early-{i}".encode() for i in range(100)]
        i = 0
        while len(payloads) < n:  # bursts and pauses: the follower must both catch up and wait
            burst = [f"live-{i + k}".encode() * (1 + (i + k) % 5) for k in range(1 + i % 37)]
            burst = burst[: n - len(payloads)]
            if i % 3:
                w.append_batch([msg(b) for b in burst])
            else:
                for b in burst:
                    w.append(msg(b))
            payloads.extend(burst)
            i += len(burst)
            if i % 5 == 0:
                time.sleep(0.01)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        lines = out.decode().split()
        assert "timeout" not in lines
        got = [(int(lines[k]), bytes.fromhex(lines[k + 1]) if k + 1 < len(lines) else b"")
               for k in range(0, len(lines), 2)]
        assert [g[0] for g in got] == list(range(1, n + 1))
        assert [g[1] for g in got] == payloads
        assert early[0].value == 1  # type: ignore[attr-defined]
        w.close()


def _follow_latency(tmp_path: Path) -> float:
    with build(tmp_path / "w", segment_bytes=4096) as wopener, build(tmp_path / "w") as ropener:
        w = open_rw(wopener)
        ro = open_ro(ropener)  # another opener: no in-process shortcut, only file events and polling
        s = ro.read(ReadOption(name="f"))
        got: list[bytes] = []
        done = threading.Event()

        def reader() -> None:
            while len(got) < 300:
                try:
                    got.extend(bytes(m.payload) for m in s.recv_batch(64, 10.0))
                except WALTimeoutError:
                    break
            done.set()

        t = threading.Thread(target=reader)
        t.start()
        t0 = time.monotonic()
        for i in range(300):
            w.append(msg(f"{i}".encode() * 30))
            if i % 50 == 0:
                time.sleep(0.02)
        assert done.wait(10.0)
        elapsed = time.monotonic() - t0
        t.join()
        assert got == [f"{i}".encode() * 30 for i in range(300)]
        # late start: a follower opened after the fact reads the whole history too
        s2 = ro.read(ReadOption(name="g"))
        assert len(s2.recv_batch(1000, 1.0)) > 0
        s2.close()
        s.close()
        ro.close()
        w.close()
        return elapsed


def test_follower_on_another_opener(tmp_path: Path) -> None:
    assert _follow_latency(tmp_path) < 10.0


def test_follower_without_inotify_still_gets_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(hub: object) -> object:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(_opener, "_make_wake", broken)
    assert _follow_latency(tmp_path) < 10.0


def test_follower_started_before_the_channel_exists(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as opener:
        ro = open_ro(opener, "later")
        s = ro.read(ReadOption(name="f"))
        with pytest.raises(WALTimeoutError):
            s.recv(0.05)
        w = open_rw(opener, "later")
        w.append(msg(b"first"))
        assert bytes(s.recv(3.0).payload) == b"first"
        s.close()
        ro.close()
        w.close()


def test_concurrent_writers_and_readers_through_constant_rolls(tmp_path: Path) -> None:
    n_threads, per = 8, 150
    total = n_threads * (per + 2 * (per // 10))  # every 10th append is a batch of 3
    with build(tmp_path, segment_bytes=4096) as opener:
        w = open_rw(opener)
        ro = open_ro(opener)
        scanners = [w.read(ReadOption(name=f"rw{k}")) for k in range(3)] + [ro.read(ReadOption(name="ro"))]
        results: list[list[tuple[int, bytes]]] = [[] for _ in scanners]
        errors: list[BaseException] = []

        def read(k: int) -> None:
            try:
                while len(results[k]) < total:
                    for m in scanners[k].recv_batch(97, 10.0):
                        results[k].append((m.message_id.value, bytes(m.payload)))  # type: ignore[attr-defined]
            except BaseException as e:
                errors.append(e)

        def write(t: int) -> None:
            for j in range(per):
                if j % 10 == 0:
                    w.append_batch([msg(f"{t}:{j}:{x}".encode() * 5) for x in range(3)])
                else:
                    w.append(msg(f"{t}:{j}".encode() * (1 + j % 9)))

        readers = [threading.Thread(target=read, args=(k,)) for k in range(len(scanners))]
        for r in readers:
            r.start()
        writers = [threading.Thread(target=write, args=(t,)) for t in range(n_threads)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        expected_total = total
        for r in readers:
            r.join(20.0)
        assert not errors, errors
        reference = results[0]
        assert [i for i, _ in reference] == list(range(1, expected_total + 1))
        for res in results[1:]:
            assert res == reference
        for s in scanners:
            s.close()
        ro.close()
        w.close()


def test_follower_survives_retention_deleting_its_segments(tmp_path: Path) -> None:
    with build(tmp_path, segment_bytes=4096) as wopener, build(tmp_path) as ropener:
        w = open_rw(wopener)
        ids = w.append_batch([msg(f"{i}".encode() * 50) for i in range(300)])
        ro = open_ro(ropener)
        s = ro.read(ReadOption(name="slow"))
        first = s.recv(2.0)  # the first segment is mapped now
        assert first.message_id == ids[0]
        w.truncate(ids[250])  # deletes the segments under the reader's feet
        w.append_batch([msg(b"after") for _ in range(5)])
        got = [first]
        while True:
            try:
                got.extend(s.recv_batch(64, 0.3))
            except WALTimeoutError:
                break
        mids = [m.message_id.value for m in got]  # type: ignore[attr-defined]
        assert mids == sorted(mids) and len(set(mids)) == len(mids) and mids[-1] == 305
        for m in got[:-5]:  # whatever was delivered is exact, including from the deleted (still mapped) file
            assert bytes(m.payload) == f"{m.message_id.value - 1}".encode() * 50  # type: ignore[attr-defined]
        assert bytes(first.payload) == b"0" * 50  # a payload view into a deleted file stays readable
        s.close()
        ro.close()
        w.close()


class _OneRacyListing(FileOps):
    """Hides ``hide`` from one directory listing: what readdir returns while the writer creates segments."""

    hide: str | None = None

    def list_files(self, path: str) -> list[str]:
        names = super().list_files(path)
        if self.hide is not None and self.hide in names:
            names.remove(self.hide)
            self.hide = None  # one listing only
        return names


def test_a_listing_that_missed_a_segment_created_during_it_is_not_corruption(tmp_path: Path) -> None:
    """A directory listing made while the writer rolls can hold a newer segment and miss the one before it (ext4
    readdir during creations; seen in ~30% of listings of a busy directory by the review's readdir_race.py). The
    follower took that one listing for a gap, raised CorruptedError and its scanner was dead, though the log was
    intact. Now it looks again before calling a gap corruption."""
    wop = build(tmp_path, segment_bytes=4096)
    w = open_rw(wop)
    fops = _OneRacyListing()
    rop = build(tmp_path, _file_ops=fops)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="follower"))
    w.append(msg(b"p" * 100, tt=1))
    assert [int(x.message_id.value) for x in s.recv_batch(10, 5.0)] == [1]
    ids = [int(w.append(msg(b"p" * 3500, tt=2 + k)).value) for k in range(3)]  # three rolls
    fops.hide = f"{ids[0]:020d}.seg"
    got: list[int] = []
    while len(got) < 3:
        got += [int(x.message_id.value) for x in s.recv_batch(10, 5.0)]
    assert got == ids
    s.close()
    ro.close()
    rop.close()
    w.close()
    wop.close()


def test_latest_is_not_fooled_by_a_listing_that_missed_the_newest_segment(tmp_path: Path) -> None:
    """The same readdir race at ``read(latest())``: a listing without the newest segment started the reader at the
    end of the one before, so it delivered the newest segment's messages, all appended before read() returned."""
    from wal.options import DeliverPolicy
    wop = build(tmp_path, segment_bytes=4096)
    w = open_rw(wop)
    ids = [int(w.append(msg(b"p" * 3500, tt=1 + k)).value) for k in range(3)]  # a segment each
    fops = _OneRacyListing()
    fops.hide = f"{ids[-1]:020d}.seg"
    rop = build(tmp_path, _file_ops=fops)
    ro = open_ro(rop)
    s = ro.read(ReadOption(name="latest", deliver_policy=DeliverPolicy.latest()))
    after = int(w.append(msg(b"after", tt=10)).value)
    got = [int(x.message_id.value) for x in s.recv_batch(10, 5.0)]
    assert got == [after], got
    s.close()
    ro.close()
    rop.close()
    w.close()
    wop.close()


def test_closing_read_only_wals_logs_no_watchdog_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Removing the last watch of a channel sends its watch an inotify event that watchdog 7 read while stopping
    # the emitter and logged at ERROR ("queue_events() called when the thread is inactive"): 8 of 20 closes did.
    caplog.set_level(logging.DEBUG, logger="watchdog")
    with build(tmp_path / "w") as wopener, build(tmp_path / "w") as ropener:
        w = open_rw(wopener)
        for i in range(30):
            ro = open_ro(ropener)
            s = ro.read(ReadOption(name=f"r{i}"))
            stop = threading.Event()

            def write() -> None:
                while not stop.is_set():
                    w.append(msg(b"x"))

            t = threading.Thread(target=write)
            t.start()
            s.recv(3.0)
            s.close()
            ro.close()
            stop.set()
            t.join()
        w.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_a_follower_mapped_in_an_empty_segment_reads_it_after_the_writer_grew_and_sealed_it(tmp_path: Path) -> None:
    """A follower maps the writer's empty segment at its preallocated size. A first record larger than a segment
    makes the writer grow the file, and the next record rolls it: the seal summary's data end lies past the
    follower's map, which it took for a summary that lies (CorruptedError, the follower dead) instead of mapping
    the file again (review 14e)."""
    with build(tmp_path, segment_bytes=4096, sync="never") as op, build(tmp_path) as rop:
        w = open_rw(op)
        ro = open_ro(rop)
        s = ro.read(ReadOption(name="early"))
        with pytest.raises(WALTimeoutError):
            s.recv(0.05)  # waits in the empty first segment, mapped at 4096 bytes
        big, small = b"B" * 20_000, b"s" * 3000
        ids = w.append_batch([msg(big, tt=1), msg(small, tt=2)])  # grows segment 1, then rolls it
        got = [s.recv(5.0) for _ in ids]
        assert [m.message_id for m in got] == ids
        assert [bytes(m.payload) for m in got] == [big, small]
        s.close()
        ro.close()
        w.close()


def test_an_idle_follower_read_in_slices_keeps_its_poll_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 17b (many followers in one process): each ``recv_batch`` started polling at 1 ms and doubled to 50 ms,
    so a caller waiting in slices (``async for`` waits 0.2 s at a time) made an idle follower poll about 10 times a
    slice instead of 4-5: 300 idle ``async for`` followers took a whole core (75 % now). Counted on a fake clock (the
    waits the scanner asks for), not timed: after a slice that found nothing, the next starts at the longest wait,
    and a message found starts it afresh."""
    from types import SimpleNamespace

    from wal.walimpls.localfs import _scanner

    def no_watch(hub: object) -> object:  # no inotify wake-up may come in the middle of the count
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(_opener, "_make_wake", no_watch)
    w = open_rw(build(tmp_path))
    w.append(msg(b"a", tt=1))
    r = open_ro(build(tmp_path))
    s = r.read(ReadOption(name="r"))
    assert [bytes(m.payload) for m in s.recv_batch(10, timeout=5)] == [b"a"]
    now = [0.0]
    waits: list[float] = []

    class Cond:
        def wait(self, t: float) -> bool:
            waits.append(t)
            now[0] += t
            return False

        def notify_all(self) -> None:
            pass

    monkeypatch.setattr(_scanner, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(s._hub, "cond", Cond())
    polls = []
    for _ in range(5):
        waits.clear()
        with pytest.raises(WALTimeoutError):
            s.recv_batch(10, timeout=0.2)
        polls.append(len(waits))
    assert polls[0] >= 8 and all(p <= 5 for p in polls[1:]), polls  # 4 waits of 50 ms (and rounding); was 9 each
    monkeypatch.setattr(s._hub, "cond", threading.Condition(s._hub.lock))
    monkeypatch.setattr(_scanner, "time", time)
    w.append(msg(b"b", tt=2))
    assert [bytes(m.payload) for m in s.recv_batch(10, timeout=5)] == [b"b"]
    assert s._idle_wait == _scanner._MIN_BACKOFF
    s.close()
    r.close()
    w.close()


def _count_waits(monkeypatch: pytest.MonkeyPatch, hub: Any, during: Any = None) -> list[float]:
    """Make the scanner's clock and its hub's condition fake: each wait the scanner asks for is recorded and passes
    at once (``during(t)`` is called in it), so polls are counted over simulated seconds, not timed."""
    from types import SimpleNamespace

    from wal.walimpls.localfs import _scanner

    now = [time.monotonic()]
    waits: list[float] = []

    class Cond:
        def wait(self, t: float) -> bool:
            waits.append(t)
            if during is not None:
                during(t)
            now[0] += t
            return False

        def notify_all(self) -> None:
            pass

    monkeypatch.setattr(_scanner, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(hub, "cond", Cond())
    return waits


def _idle_follower(tmp_path: Path) -> tuple[Any, Any]:
    """A read-only follower, in an opener of its own, that has read the one message of a channel whose writer closed."""
    with build(tmp_path) as op:
        w = open_rw(op)
        w.append(msg(b"a", tt=1))
        w.close()
    r = open_ro(build(tmp_path))
    s = r.read(ReadOption(name="r"))
    assert [bytes(m.payload) for m in s.recv_batch(10, timeout=5)] == [b"a"]
    return r, s


def test_an_idle_follower_whose_directory_is_watched_polls_about_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 17f: a follower waiting for data polled every 50 ms although inotify watched its directory and woke it
    at every write (300 idle followers: 37-40 % of a core, three quarters of it this poll). While the watch is known
    live on the directory it reads, the poll backs off to 1 s. Over 30 simulated seconds: 600 polls before, 40 now."""
    r, s = _idle_follower(tmp_path)
    hub = s._hub
    waits = _count_waits(monkeypatch, hub)
    with pytest.raises(WALTimeoutError):
        s.recv_batch(10, timeout=30.0)
    assert len(waits) < 60, (len(waits), waits[-5:])
    assert max(waits) == 1.0
    assert hub.watching(s._source.bound())
    s.close()
    r.close()


@pytest.mark.parametrize("without", ["inotify", "overflow_report", "emitter", "event_reader", "watch_here"])
def test_a_follower_without_a_watch_it_can_trust_polls_every_50_ms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, without: str
) -> None:
    """Review 17f: the 1 s poll is for a follower whose watch reports every write. Where it may not, the poll stays
    at 50 ms: no inotify (limits, platform), a watchdog that does not report a queue overflow (it would drop the
    events unheard), an emitter that stopped (watchdog stops it when the directory is deleted, and reuses it for a
    new watch of the path) or the thread reading the events for all of them, a watch on another directory than the
    one the reader reads (replaced, not moved yet)."""
    if without == "inotify":
        def no_watch(hub: object) -> object:
            raise OSError(28, "inotify watch limit reached")

        monkeypatch.setattr(_opener, "_make_wake", no_watch)
    elif without == "overflow_report":
        monkeypatch.setattr(_opener, "_overflow_hooked", False)
    r, s = _idle_follower(tmp_path)
    hub = s._hub
    if without == "emitter":
        for e in list(r._opener._observer.emitters):
            e.stop()
            e.join()
    elif without == "event_reader":  # the observer's thread that reads inotify for all its emitters
        reader = r._opener._observer._inotify_fd
        reader.stop()
        reader.join()
    elif without == "watch_here":
        hub.watched = (0, 0)
    assert not hub.watching(s._source.bound())
    waits = _count_waits(monkeypatch, hub)
    with pytest.raises(WALTimeoutError):
        s.recv_batch(10, timeout=5.0)
    assert max(waits) == 0.05 and len(waits) > 90
    s.close()
    r.close()


def test_a_write_no_event_announced_makes_the_follower_poll_every_50_ms_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 17f: a watch can miss writes the hub cannot hear of (writes through mmap, a writer on another host of
    a network file system). A follower that finds data after a long wait no event ended distrusts its watch for a
    minute (``Hub.missed``) and polls at 50 ms again."""
    r, s = _idle_follower(tmp_path)
    hub = s._hub
    w = open_rw(build(tmp_path))
    written = []

    def write_unheard(t: float) -> None:
        if t == 1.0 and not written:
            monkeypatch.setattr(hub, "bump", lambda: None)  # its event is lost
            written.append(w.append(msg(b"b", tt=2)))

    waits = _count_waits(monkeypatch, hub, write_unheard)
    assert [bytes(m.payload) for m in s.recv_batch(10, timeout=30.0)] == [b"b"]
    assert written and not hub.watching(s._source.bound())
    waits.clear()
    with pytest.raises(WALTimeoutError):
        s.recv_batch(10, timeout=5.0)
    assert max(waits) == 0.05
    s.close()
    r.close()
    w.close()


def test_an_inotify_queue_overflow_wakes_the_followers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review 17f: the kernel drops inotify events once a queue holds ``max_queued_events`` (watchdog 7 has one
    per observer: an opener's channels share it), and watchdog only logged it: a follower whose write event was
    dropped was woken by its poll alone, which may now wait 1 s. The hub of every watched channel is bumped when
    the overflow is read (after every dropped event). Made real: watchdog's reader is held while another
    directory's events fill the queue."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}")
    (tmp_path / "flood").mkdir()
    w = open_rw(build(tmp_path))
    w.append(msg(b"a", tt=1))
    ro = build(tmp_path)
    r = open_ro(ro)
    flood_wal = open_ro(ro, "flood")
    s = r.read(ReadOption(name="r"))
    assert bytes(s.recv(5.0).payload) == b"a"
    hub = s._hub
    assert hub.watched is not None  # the channel existed at the open: watched from then on
    files = [os.open(tmp_path / "flood" / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600) for i in range(2)]
    time.sleep(0.5)  # let the events so far be handled (not asserted on: only what follows is)
    caplog.set_level(logging.WARNING, logger="watchdog.observers.inotify_c")
    fd = ro._observer._inotify_fd  # the opener's watches share one inotify queue
    with fd._lock:  # its reader thread waits for it after each read (it may have one read out): the queue fills
        for i in range(2 * limit):
            os.pwrite(files[i % 2], b"x", 0)  # alternate files: equal events in a row are merged
        version = hub.version
        w.append(msg(b"b", tt=2))  # its event is dropped: the queue is full
    for _ in range(600):
        if any("overflow" in rec.getMessage() for rec in caplog.records):
            break
        time.sleep(0.05)
    else:
        pytest.fail("no inotify queue overflow")
    for _ in range(100):  # the bump follows the overflow's log line
        if hub.version != version:
            break
        time.sleep(0.05)
    assert hub.version != version
    assert bytes(s.recv(5.0).payload) == b"b"
    for f in files:
        os.close(f)
    s.close()
    flood_wal.close()
    r.close()
    w.close()
    ro.close()


def test_a_watched_follower_is_woken_by_a_write_of_another_process_not_by_its_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 17f: the long poll must not make a follower later: a writer in another process writes with
    ``pwrite``, which inotify reports, and the event wakes the follower. Its poll is made a minute long here, so
    only the event can end the wait in which the message comes (counted: the wait ended by a bump of the hub)."""
    from wal.walimpls.localfs import _scanner

    r, s = _idle_follower(tmp_path)
    hub = s._hub
    assert hub.watching(s._source.bound())
    monkeypatch.setattr(_scanner, "_WATCHED_MAX_BACKOFF", 60.0)
    s._idle_wait = 60.0  # as after a long idle wait
    waits: list[tuple[float, bool]] = []
    real = threading.Condition(hub.lock)

    class Cond:
        def wait(self, t: float) -> bool:
            before = hub.version
            got = real.wait(t)
            waits.append((t, hub.version != before))
            return got

        def notify_all(self) -> None:
            real.notify_all()

    monkeypatch.setattr(hub, "cond", Cond())
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from _localfs_util import build, msg, open_rw\n"
            "with build(sys.argv[1]) as op:\n    open_rw(op).append(msg(b'b', tt=2))\n")
    p = subprocess.Popen([PY, "-c", code, str(tmp_path), str(Path(__file__).parent)], env=child_env())
    try:
        assert [bytes(m.payload) for m in s.recv_batch(10, timeout=120.0)] == [b"b"]
    finally:
        assert p.wait(60) == 0
    assert waits and waits[0][0] == 60.0 and waits[-1][1], waits  # woken, and it waited long before
    assert hub.watching(s._source.bound())  # the write was announced: the watch is still trusted
    s.close()
    r.close()


def test_a_write_through_mmap_is_found_by_the_poll_and_the_watch_distrusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 17f: inotify reports no write made through a shared map (DESIGN.md; the writer never makes one, a
    repair or a test damaging a file may). Such a record is found by the poll, and the follower then polls at 50 ms
    for a minute (``Hub.missed``). A record copied from another channel's log is written through a map here while
    the follower waits on its (fake) clock; the map was made before, so no open or close event announces it."""
    import mmap

    def log_of(name: str, payloads: list[bytes]) -> tuple[str, list[int]]:
        w = open_rw(build(tmp_path), name)
        for i, p in enumerate(payloads):
            w.append(msg(p, tt=i + 1))
        r = open_ro(build(tmp_path), name)
        s = r.read(ReadOption(name=name))
        ends = []
        for _ in payloads:
            s.recv(5.0)
            ends.append(s.stopped_at()[1])
        path = s.stopped_at()[0]
        s.close()
        r.close()
        return path, ends

    other, (end_a, end_b) = log_of("other", [b"a", b"b"])
    with open(other, "rb") as f:
        f.seek(end_a)
        record_b = f.read(end_b - end_a)
    w = open_rw(build(tmp_path))
    w.append(msg(b"a", tt=1))
    r = open_ro(build(tmp_path))
    s = r.read(ReadOption(name="r"))
    assert bytes(s.recv(5.0).payload) == b"a"
    path, pos, _ = s.stopped_at()
    assert pos == end_a
    hub = s._hub
    before = hub.version
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, end_b + 4096)
    for _ in range(200):  # the open's event is handled before the count starts
        if hub.version != before:
            break
        time.sleep(0.05)
    assert hub.watching(s._source.bound())
    written: list[int] = []

    def write_through_map(t: float) -> None:
        if t == 1.0 and not written:
            written.append(hub.version)
            mm[end_a:end_b] = record_b
            time.sleep(0.2)  # an event, if one came, would be handled by now (and the test would fail)

    _count_waits(monkeypatch, hub, write_through_map)
    try:
        assert [bytes(m.payload) for m in s.recv_batch(10, timeout=30.0)] == [b"b"]
        assert written == [hub.version]  # no event
        assert not hub.watching(s._source.bound())
    finally:
        mm.close()
        os.close(fd)
    s.close()
    r.close()
    w.close()
