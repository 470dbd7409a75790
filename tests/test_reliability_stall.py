"""A disk that stalls (a full NFS server, a dying SSD, a cgroup I/O limit): a write or sync that blocks, then returns.

Every stall here blocks a ``FileOps`` call on an Event the test opens (never a sleep), through the full adaptor, in
each sync mode. What must hold: calls with a timeout return on time with ``WALTimeoutError``; what they left in
flight is stored once the stall ends, once and in order; producers block at ``max_inflight_appends``; a txn that
the stall kept past its keepalive is refused, never half delivered; and a close waits for the disk, saying so in the
log (it used to wait in silence: session 15). README, "Slow or hung disks".
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from wal import DeliverPolicy, OpenOption, PChannelInfo, ReadOption, registry
from wal.adaptor import _slow
from wal.errors import InvalidArgumentError, TxnExpiredError, WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.walimpls.localfs import FileOps

# The call each sync mode's append blocks in: "interval" and "never" sync no append, but they write.
_STALLED_OP = {"always": "fdatasync", "interval": "pwritev", "never": "pwritev"}


class StallingOps(FileOps):
    """Blocks every call of ``op`` while :attr:`gate` is closed; :attr:`stalled` is set once one blocks."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.gate = threading.Event()
        self.gate.set()
        self.stalled = threading.Event()

    def _stall(self, op: str) -> None:
        if op == self.op and not self.gate.is_set():
            self.stalled.set()
            self.gate.wait()

    def fdatasync(self, fd: int) -> None:
        self._stall("fdatasync")
        super().fdatasync(fd)

    def pwritev(self, fd: int, buffers: list[bytes | bytearray | memoryview], offset: int) -> int:
        self._stall("pwritev")
        return super().pwritev(fd, buffers, offset)

    def close_gate(self) -> None:
        self.stalled.clear()
        self.gate.clear()


def _m(payload: bytes, vchannel: str = "v") -> MutableMessage:
    return MutableMessage(MessageType.INSERT, payload, vchannel=vchannel)


def _open(root: Path, ops: FileOps, sync: str, term: int = 1, **opts: Any) -> tuple[Any, Any]:
    opener = registry.must_get_builder("localfs").build(
        root=str(root), sync=sync, segment_bytes=1 << 20, _file_ops=ops, time_tick_interval=0.05, **opts
    )
    return opener, opener.open(OpenOption(channel=PChannelInfo(name="c", term=term)))


def _stored(root: Path) -> list[bytes]:
    """The payloads of the data messages stored, read by a fresh writer (TXN bodies flattened)."""
    opener, w = _open(root, FileOps(), "always", term=2)
    out: list[bytes] = []
    with opener, w, w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
        while True:
            m = s.recv(timeout=10)
            if m.message_type is MessageType.TIME_TICK and not m.is_persisted:
                return out  # the new writer's idle tick: everything stored came before it
            if m.message_type is MessageType.TXN:
                out += [bytes(b.payload) for b in m.messages]  # type: ignore[attr-defined]
            elif m.message_type is MessageType.INSERT:
                out.append(bytes(m.payload))


def _in_thread(fn: Any) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []

    def run() -> None:
        try:
            got.append(fn())
        except BaseException as e:  # the test looks at it
            got.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
def test_timeouts_hold_during_a_stall_and_what_timed_out_is_stored_once_in_order(tmp_path: Path, sync: str) -> None:
    ops = StallingOps(_STALLED_OP[sync])
    opener, w = _open(tmp_path, ops, sync)
    with opener:
        try:
            w.append(_m(b"before"))
            ops.close_gate()
            stuck, got = _in_thread(lambda: w.append(_m(b"a")))  # no timeout: runs inline, into the stall
            assert ops.stalled.wait(10)
            with pytest.raises(WALTimeoutError):
                w.append(_m(b"b"), timeout=0.2)
            with pytest.raises(WALTimeoutError):
                w.append_messages([_m(b"c1"), _m(b"c2")], timeout=0.2)
            f = w.append_async(_m(b"d"))
            with pytest.raises(WALTimeoutError):
                f.result(0.2)
            assert w.is_available()  # a slow disk is not a failed one
            assert stuck.is_alive()
            ops.gate.set()
            stuck.join(10)
            assert not stuck.is_alive() and not isinstance(got[0], BaseException)
            f.result(10)
            w.append(_m(b"after"))
            w.close()
        finally:
            ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
    assert _stored(tmp_path) == [b"before", b"a", b"b", b"c1", b"c2", b"d", b"after"]


def test_a_future_whose_write_stalls_does_not_say_it_is_queued(tmp_path: Path) -> None:
    """Its ``result(timeout)`` said "it is still queued" while the append sat in a stalled fdatasync."""
    ops = StallingOps("fdatasync")
    opener, w = _open(tmp_path, ops, "always")
    with opener:
        try:
            ops.close_gate()
            f = w.append_async(_m(b"a"))  # a lone append: the thread writes it at once, into the stall
            assert ops.stalled.wait(10)
            with pytest.raises(WALTimeoutError) as e:
                f.result(0.2)
            assert "still queued" not in str(e.value)
            assert "being written" in str(e.value) and "may still be stored" in str(e.value)
            ops.gate.set()
            f.result(10)
            w.close()
        finally:
            ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
    assert _stored(tmp_path) == [b"a"]


def test_a_stall_holds_producers_at_max_inflight_appends(tmp_path: Path) -> None:
    ops = StallingOps("fdatasync")
    opener, w = _open(tmp_path, ops, "always", max_inflight_appends=4)
    with opener:
        try:
            ops.close_gate()
            stuck, _ = _in_thread(lambda: w.append(_m(b"a")))
            assert ops.stalled.wait(10)
            futs = [w.append_async(_m(b"f%d" % i)) for i in range(3)]  # a + 3 = the bound
            producer, _ = _in_thread(lambda: futs.append(w.append_async(_m(b"over"))))
            producer.join(0.3)
            assert producer.is_alive()  # blocked, not queued without bound
            with pytest.raises(WALTimeoutError, match="in flight"):
                w.append(_m(b"timed"), timeout=0.2)  # a timeout also bounds the wait for room
            ops.gate.set()
            producer.join(10)
            stuck.join(10)
            for f in futs:
                f.result(10)
            w.close()
        finally:
            ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
    assert _stored(tmp_path) == [b"a", b"f0", b"f1", b"f2", b"over"]


def test_a_txn_the_stall_keeps_past_its_keepalive_is_refused_and_never_delivered(tmp_path: Path) -> None:
    ops = StallingOps("fdatasync")
    opener, w = _open(tmp_path, ops, "always")
    with opener:
        try:
            done = w.begin_txn("v", keepalive=0.2)  # its commit is in the stall: acknowledged, so delivered
            done.append(_m(b"t1"))
            late = w.begin_txn("v", keepalive=0.2)  # its commit waits behind the stall: the txn expires meanwhile
            late.append(_m(b"t2"))
            ops.close_gate()
            committing, got = _in_thread(done.commit)
            assert ops.stalled.wait(10)
            queued, got_late = _in_thread(lambda: late.commit(timeout=30))
            # The stall outlasts the keepalive: wait (on the clock the keepalive counts in) until the txn is past it.
            threading.Event().wait(0.5)
            ops.gate.set()
            committing.join(10)
            queued.join(10)
            assert not isinstance(got[0], BaseException)
            assert isinstance(got_late[0], TxnExpiredError)
            w.append(_m(b"after"))
            w.close()
        finally:
            ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
    assert _stored(tmp_path) == [b"t1", b"after"]


def test_begin_txn_timeout_bounds_the_begin_and_the_with_blocks_commit_during_a_stall(tmp_path: Path) -> None:
    """``begin_txn`` took no timeout and the ``with`` block's exit commits with none: both waited for the disk
    without bound, while ``append`` gave up after its timeout."""
    ops = StallingOps("fdatasync")
    opener, w = _open(tmp_path, ops, "always", txn_close_timeout=0)  # the begin that timed out left a txn open
    with opener:
        try:
            with pytest.raises(InvalidArgumentError, match="txn timeout"):
                w.begin_txn("v", timeout=0)  # refused before anything is written, as append's 0 is
            ops.close_gate()
            stuck, _ = _in_thread(lambda: w.append(_m(b"a")))
            assert ops.stalled.wait(10)
            with pytest.raises(WALTimeoutError):
                w.begin_txn("v", timeout=0.2)
            ops.gate.set()
            stuck.join(10)
            with pytest.raises(WALTimeoutError):
                with w.begin_txn("v", timeout=0.2) as txn:
                    txn.append(_m(b"t1"))
                    ops.close_gate()
                    stuck, _ = _in_thread(lambda: w.append(_m(b"b")))
                    assert ops.stalled.wait(10)
            assert txn.finished
            ops.gate.set()
            stuck.join(10)
            with pytest.raises(WALTimeoutError):  # the body's append, then the exit's rollback, are bounded too
                with w.begin_txn("v", timeout=0.2) as txn2:
                    txn2.append(_m(b"t2"))
                    ops.close_gate()
                    stuck, _ = _in_thread(lambda: w.append(_m(b"c")))
                    assert ops.stalled.wait(10)
                    txn2.append(_m(b"t3"))
            assert txn2.finished
            ops.gate.set()
            stuck.join(10)
            w.append(_m(b"after"))
            w.close()
        finally:
            ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
    # The commit that timed out was stored once the stall ended (a timeout bounds the wait, not the write); the
    # txn whose body append timed out was rolled back on exit.
    assert _stored(tmp_path) == [b"a", b"b", b"t1", b"c", b"after"]


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
def test_close_during_a_stall_says_what_it_waits_for_and_stores_what_it_accepted(
    tmp_path: Path, sync: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It waited as long as the disk did, in silence: a shutdown hung with nothing in the log to say why."""
    monkeypatch.setattr(_slow, "CLOSE_WARNING_AFTER", 0.05)
    monkeypatch.setattr(_slow, "CLOSE_WARNING_EVERY", 0.05)  # the first may name the step before, on a busy machine
    warned = threading.Event()
    said: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(text := record.getMessage())
            if "close has not finished" in text and "appends accepted before the close" in text:
                warned.set()

    handler = Catch(logging.WARNING)
    logger = logging.getLogger("wal.adaptor")
    logger.addHandler(handler)
    try:
        ops = StallingOps(_STALLED_OP[sync])
        opener, w = _open(tmp_path, ops, sync)
        with opener:
            try:
                w.append(_m(b"before"))
                ops.close_gate()
                stuck, _ = _in_thread(lambda: w.append(_m(b"a")))
                assert ops.stalled.wait(10)
                f = w.append_async(_m(b"b"))
                closing, _ = _in_thread(w.close)
                assert warned.wait(10), "close waited on a stalled disk without a word"
                assert closing.is_alive()  # it cannot end before the disk answers
                assert any(t.startswith("wal c@1: close has not finished") for t in said), said
                ops.gate.set()
                closing.join(15)
                assert not closing.is_alive()
                stuck.join(10)
                f.result(10)
            finally:
                ops.gate.set()  # a failed check must not leave a thread in the stall: the close would wait for it
        assert any("close finished after" in s for s in said)
    finally:
        logger.removeHandler(handler)
    assert _stored(tmp_path) == [b"before", b"a", b"b"]
