"""The write path's shortcuts keep the on-disk bytes: big ``bytes`` payloads written from the caller's object (own
iovec, CRC chained over it), IDs/flags/CRC stamped by the leader, and appenders woken one after another."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from _localfs_util import build, msg, open_rw, read_all

from wal.walimpls.localfs import FileOps
from wal.walimpls.localfs._format import (
    ALIGN,
    BIG_PAYLOAD,
    DATA_START,
    FLUSH_START,
    PREV_DURABLE,
    REC_FLAGS_OFF,
    REC_HEADER_SIZE,
    check_record,
    encode_record,
    segment_name,
    stamp_record,
)


class Writes(FileOps):
    """Counts pwritev calls and the buffers of each."""

    def __init__(self) -> None:
        self.iovecs: list[int] = []

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        self.iovecs.append(len(buffers))
        return super().pwritev(fd, buffers, offset)


def _records(seg: bytes, count: int) -> list[tuple[int, int, bytes]]:
    """(offset, message ID, raw record bytes without padding) of the first ``count`` records, each checked valid."""
    out = []
    pos = DATA_START
    for _ in range(count):
        r = check_record(seg, pos, len(seg))
        assert r is not None, f"no valid record at {pos}"
        size, mid, _tt, body_len = r
        out.append((pos, mid, seg[pos : pos + REC_HEADER_SIZE + body_len]))
        assert seg[pos + REC_HEADER_SIZE + body_len : pos + size] == bytes(size - REC_HEADER_SIZE - body_len)
        pos += size
    return out


def test_big_bytes_payload_gets_its_own_iovec_and_the_same_bytes_as_a_copied_one(tmp_path: Path) -> None:
    ops = Writes()
    big = os.urandom(BIG_PAYLOAD * 16 + 3)  # not a multiple of 8: the record needs padding after the payload
    with build(tmp_path, _file_ops=ops) as opener:
        w = open_rw(opener)
        ops.iovecs.clear()
        w.append(msg(big, tt=5, vchannel="v1"))  # bytes: written from this object
        assert ops.iovecs == [3]  # head, payload, padding
        mutable = msg(b"", tt=6, vchannel="v1")
        mutable.payload = bytearray(big)  # assigned after building (built with one, it is copied to bytes then)
        w.append(mutable)  # mutable: copied into the record
        assert ops.iovecs == [3, 1]
        w.append_batch([msg(big, tt=7, vchannel="v1"), msg(b"small", tt=8), msg(big, tt=9, vchannel="v1")])
        assert ops.iovecs == [3, 1, 3 + 1 + 3]
        got = [(int(m.message_id.value), bytes(m.payload), m.time_tick) for m in read_all(w, idle=0.05)]
        assert got == [(1, big, 5), (2, big, 6), (3, big, 7), (4, b"small", 8), (5, big, 9)]
        w.close()
    seg = (tmp_path / "p1" / segment_name(1)).read_bytes()
    recs = _records(seg, 5)
    assert [mid for _, mid, _ in recs] == [1, 2, 3, 4, 5]
    first, second = recs[0][2], recs[1][2]
    # Both flush-starting records on durable data: same flags, same bytes but for ID, time tick and CRC.
    assert first[REC_FLAGS_OFF] == second[REC_FLAGS_OFF] == FLUSH_START | PREV_DURABLE
    assert first[4:16] == second[4:16] and first[32:] == second[32:]
    assert recs[3][2][REC_FLAGS_OFF] == 0 and recs[4][2][REC_FLAGS_OFF] == 0  # not the first of their flush


@pytest.mark.parametrize("payload", [b"", b"x" * 5, os.urandom(BIG_PAYLOAD - 1), os.urandom(BIG_PAYLOAD + 5)])
def test_encode_and_stamp_match_one_contiguous_record(payload: bytes) -> None:
    """The pieces of an encoded record, once stamped, are exactly the record built in one buffer: a CRC chained
    from the head over the caller's payload is the CRC over the whole record."""
    m = msg(payload, tt=42, vchannel="vch", props={"k": "v"})
    head, body, pad, crc_head_end, size = encode_record(m, 1 << 30)
    stamp_record(head, body, crc_head_end, 77, FLUSH_START)
    rec = bytes(head) + body + pad
    assert len(rec) == size and size % ALIGN == 0
    r = check_record(rec, 0, len(rec))
    assert r is not None and r[:2] == (size, 77) and r[2] == 42
    assert rec[REC_FLAGS_OFF] == FLUSH_START
    assert body == (payload if len(payload) >= BIG_PAYLOAD else b"")  # only big bytes payloads stay out of the head
    m2 = msg(b"", tt=42, vchannel="vch", props={"k": "v"})
    m2.payload = bytearray(payload)  # assigned after building: a mutable payload the encoder must copy
    head2, body2, pad2, end2, size2 = encode_record(m2, 1 << 30)
    assert size2 == size
    stamp_record(head2, body2, end2, 77, FLUSH_START)
    assert body2 == b"" and bytes(head2) + pad2 == rec


class SlowSync(FileOps):
    def fdatasync(self, fd: int) -> None:
        time.sleep(0.003)  # every appender below queues behind the first one's sync
        super().fdatasync(fd)


def test_appenders_that_never_append_again_are_all_woken(tmp_path: Path) -> None:
    """Woken one after another, by each other: a woken appender that returns for good still wakes the next one,
    so a batch of one-shot appenders (then nobody appending at all) all return."""
    n = 24
    with build(tmp_path, _file_ops=SlowSync()) as opener:
        w = open_rw(opener)
        start = threading.Barrier(n)
        ids: list[int] = []
        lock = threading.Lock()

        def one(k: int) -> None:
            start.wait()
            mid = int(w.append(msg(f"m{k}".encode(), tt=k + 1)).value)
            with lock:
                ids.append(mid)

        ts = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(5)
        assert not any(t.is_alive() for t in ts), "an appender was never woken"
        assert sorted(ids) == list(range(1, n + 1))
        assert not w._woken  # every settled waiter was woken
        w.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lead_rounds", [1, 4])
def test_an_interrupted_appender_hands_on_its_wake_up_and_its_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lead_rounds: int
) -> None:
    """A signal handler may raise (KeyboardInterrupt) in an appender asleep on its waiter lock: before it was
    woken, or just after. The wake-up it owes the next appender, or the lead of its batch when it was made heir
    (every round with lead_rounds=1), must still be handed on, or other appenders sleep for good. The interrupted
    append's records are queued and still written."""
    import _thread

    import wal.walimpls.localfs._wal as lw

    real = _thread.allocate_lock
    made = [0]

    class Flaky:
        """A waiter lock whose blocking wait raises in one waiter of five: before sleeping for some, after being
        woken for others (the first acquire only pre-locks it)."""

        def __init__(self) -> None:
            self._lock = real()
            self._k = made[0]
            made[0] += 1
            self._calls = 0

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            self._calls += 1
            if self._calls == 2 and self._k % 5 == 2:
                if self._k % 10 == 7:
                    self._lock.acquire()  # woken, then interrupted
                raise KeyboardInterrupt
            return self._lock.acquire(blocking, timeout)

        def release(self) -> None:
            self._lock.release()

    monkeypatch.setattr(lw, "_allocate_lock", Flaky)
    monkeypatch.setattr(lw, "_LEAD_ROUNDS", lead_rounds)
    opener = build(tmp_path, segment_bytes=1 << 16, sync="always")
    w = open_rw(opener)
    acked: dict[int, bytes] = {}
    interrupted: list[bytes] = []
    lock = threading.Lock()
    tt = [0]

    def loop(t: int) -> None:
        for n in range(60):
            p = f"{t}/{n}".encode() * 10
            with lock:
                tt[0] += 1
                m = msg(p, tt=tt[0])
            try:
                mid = int(w.append(m).value)  # type: ignore[attr-defined]
            except KeyboardInterrupt:
                with lock:
                    interrupted.append(p)
                continue
            with lock:
                acked[mid] = p

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(12)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 30
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), "appenders left asleep after an interrupt"
    assert interrupted, "no waiter was interrupted: the test did not test anything"
    got = {int(m.message_id.value): bytes(m.payload) for m in read_all(w, idle=0.1)}  # type: ignore[attr-defined]
    w.close()
    opener.close()
    assert all(got.get(mid) == p for mid, p in acked.items())
    assert sorted(got) == list(range(1, 12 * 60 + 1))  # the interrupted appends were written too
    assert set(interrupted) <= set(got.values())


@pytest.mark.timeout(60)
def test_an_appender_interrupted_just_after_it_woke_still_passes_the_wake_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupt may also arrive after the waiter lock was taken, before the wake-up was passed on (a signal
    is checked when ``_wake_one`` is entered): the rest of the settled batch must not sleep on."""
    import sys

    from wal.walimpls.localfs._wal import LocalFSWAL

    real = LocalFSWAL._wake_one
    fired = threading.Event()

    def wake_one(self: LocalFSWAL) -> None:
        if sys._getframe(1).f_code.co_name == "append_batch" and not fired.is_set():
            fired.set()
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(LocalFSWAL, "_wake_one", wake_one)
    opener = build(tmp_path, segment_bytes=1 << 16, sync="always")
    w = open_rw(opener)
    go = threading.Barrier(24)
    outcomes: list[str] = []

    def worker(i: int) -> None:
        go.wait()
        try:
            w.append(msg(b"x" * 50, tt=i + 1))
            outcomes.append("ok")
        except KeyboardInterrupt:
            outcomes.append("interrupted")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(24)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    asleep = sum(th.is_alive() for th in threads)
    assert fired.is_set(), "no appender was woken by another: nothing was tested"
    assert asleep == 0, f"{asleep} appenders asleep after one was interrupted on waking"
    assert sorted(outcomes) == ["interrupted"] + ["ok"] * 23
    assert len(read_all(w, idle=0.1)) == 24
    w.close()
    opener.close()


def test_ctrl_c_during_the_leaders_sync_reaches_the_caller_as_itself(tmp_path: Path) -> None:
    """An interrupt while the leader writes or syncs leaves the flush's state unknown: the WAL closes as after an
    I/O error (a reopen recovers, and nothing acknowledged is lost), but the interrupted caller gets its
    KeyboardInterrupt, not a WALIOError (found by review)."""
    from wal.errors import ShutdownError

    class CtrlC(FileOps):
        armed = False

        def fdatasync(self, fd: int) -> None:
            super().fdatasync(fd)
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt

    fops = CtrlC()
    opener = build(tmp_path, segment_bytes=1 << 16, sync="always", _file_ops=fops)
    w = open_rw(opener)
    acked = [int(w.append(msg(b"a%d" % i, tt=i + 1)).value) for i in range(5)]  # type: ignore[attr-defined]
    fops.armed = True
    with pytest.raises(KeyboardInterrupt):
        w.append(msg(b"interrupted", tt=10))
    with pytest.raises(ShutdownError):
        w.append(msg(b"after", tt=11))
    opener.close()
    opener2 = build(tmp_path, segment_bytes=1 << 16)
    w2 = open_rw(opener2, "p1", 2)
    got = [int(m.message_id.value) for m in read_all(w2, idle=0.1)]  # type: ignore[attr-defined]
    assert got[:5] == acked
    w2.close()
    opener2.close()
