"""The in-memory reference backend, beyond the conformance kit: terms, locks, lifetimes, truncate, tailing."""

from __future__ import annotations

import threading
import time

import pytest

from wal import AccessMode, OpenOption, PChannelInfo
from wal.errors import (
    AccessModeError,
    FencedError,
    InvalidArgumentError,
    InvalidMessageError,
    InvalidMessageIDError,
    ShutdownError,
    WALLockedError,
    WALTimeoutError,
)
from wal.helper.conformance import WALImplsConformance
from wal.message import IntMessageID, MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.registry import get_impls_builder
from wal.walimpls import ReadOption
from wal.walimpls.memory import MemoryMessageID as ID


def _open(opener, name="p", term=1, mode=AccessMode.RW):  # type: ignore[no-untyped-def]
    return opener.open(OpenOption(PChannelInfo(name, term, mode)))


def _msg(i: int, tt: int | None = None) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"m%d" % i, {"i": str(i)}, "v1").with_time_tick(tt or i + 1)


@pytest.fixture
def opener():  # type: ignore[no-untyped-def]
    op = get_impls_builder("memory").build()
    yield op
    op.close()


def test_unknown_option_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="bogus"):
        get_impls_builder("memory").build(bogus=1)


def test_messages_survive_reopen_and_ro_sees_them(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    ids = w.append_batch([_msg(i) for i in range(5)])
    assert ids == [ID(i) for i in range(5)]
    w.close()
    w2 = _open(opener, term=2)
    assert w2.append(_msg(5)) == ID(5)
    assert w2.last_time_tick() == 6
    ro = _open(opener, term=2, mode=AccessMode.RO)
    s = ro.read(ReadOption("r", DeliverPolicy.all()))
    got = s.recv_batch(100, timeout=1)
    assert [bytes(m.payload) for m in got] == [b"m%d" % i for i in range(6)]
    with pytest.raises(AccessModeError):
        ro.append(_msg(9))
    with pytest.raises(AccessModeError):
        ro.truncate(ID(0))


def test_terms_and_locks(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener, term=2)
    with pytest.raises(WALLockedError):
        _open(opener, term=2)
    with pytest.raises(WALLockedError):  # one writer at a time, whatever its term (as localfs's flock)
        _open(opener, term=3)
    with pytest.raises(FencedError):
        _open(opener, term=1)
    ro = _open(opener, term=1, mode=AccessMode.RO)  # readers are never fenced or locked out
    ro.close()
    assert w.append(_msg(0)) == ID(0)  # a refused open leaves the writer alone
    w.close()
    w2 = _open(opener, term=2)  # the same term may reopen once the writer is gone
    w2.close()
    w3 = _open(opener, term=3)
    assert w3.append(_msg(1)) == ID(1)
    w3.close()
    with pytest.raises(FencedError, match="term 2"):
        _open(opener, term=2)


def test_ro_close_does_not_release_the_writer_lock(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    _open(opener, mode=AccessMode.RO).close()
    with pytest.raises(WALLockedError):
        _open(opener)
    w.close()
    _open(opener).close()


def test_payload_is_copied(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    buf = bytearray(b"abc")
    w.append(MutableMessage(MessageType.INSERT, buf).with_time_tick(1))
    buf[0] = ord("z")
    assert bytes(w.read(ReadOption("r")).recv(1).payload) == b"abc"


def test_scanner_tails_times_out_and_close_wakes_recv(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    s = w.read(ReadOption("r", DeliverPolicy.latest()))
    with pytest.raises(WALTimeoutError):
        s.recv(0.05)
    threading.Timer(0.05, lambda: w.append(_msg(1))).start()
    assert bytes(s.recv(2).payload) == b"m1"
    result: list[BaseException] = []

    def blocked() -> None:
        try:
            s.recv(None)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.05)
    s.close()
    t.join(3)
    assert not t.is_alive() and isinstance(result[0], ShutdownError)
    assert s.done().is_set() and s.error() is None


def test_wal_close_closes_scanners_and_opener_close_closes_wals(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    s = w.read(ReadOption("r"))
    opener.close()
    assert s.done().is_set()
    with pytest.raises(ShutdownError):
        w.append(_msg(0))
    with pytest.raises(ShutdownError):
        _open(opener, name="other")


def test_truncate_keeps_messages_at_and_after_the_id(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    ids = w.append_batch([_msg(i) for i in range(10)])
    w.truncate(ids[4])
    got = w.read(ReadOption("r", DeliverPolicy.all())).recv_batch(100, 1)
    assert [m.message_id for m in got] == ids[4:]
    assert w.read(ReadOption("r2", DeliverPolicy.start_after(ids[8]))).recv(1).message_id == ids[9]


def test_dense_ids_and_atomic_batches_under_concurrency(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    threads_n, batches, size = 6, 20, 7

    def producer(t: int) -> None:
        for b in range(batches):
            msgs = [
                MutableMessage(MessageType.INSERT, b"", {"t": str(t), "b": str(b), "k": str(k)}).with_time_tick(1)
                for k in range(size)
            ]
            ids = w.append_batch(msgs)
            assert [i.value for i in ids] == list(range(ids[0].value, ids[0].value + size))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    total = threads_n * batches * size
    got = w.read(ReadOption("r")).recv_batch(total + 1, 1)
    assert [m.message_id for m in got] == [ID(i) for i in range(total)]
    for start in range(0, total, size):  # every batch is contiguous and in its own order
        chunk = got[start : start + size]
        assert len({(m.properties["t"], m.properties["b"]) for m in chunk}) == 1
        assert [m.properties["k"] for m in chunk] == [str(k) for k in range(size)]


def test_bad_messages_store_nothing(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    with pytest.raises(InvalidMessageError):
        w.append(None)
    with pytest.raises(InvalidMessageError):
        w.append_batch([_msg(0), "not a message", _msg(1)])  # type: ignore[list-item]
    assert w.append(_msg(2)) == ID(0)
    ro = _open(opener, mode=AccessMode.RO)
    with pytest.raises(AccessModeError):  # RO refuses before looking at the message (Milvus: append(nil) panics)
        ro.append(None)
    with pytest.raises(AccessModeError):
        ro.append_batch([_msg(3)])
    with pytest.raises(InvalidMessageIDError):
        w.truncate(object())  # type: ignore[arg-type]


def test_deliver_policies_are_exact_and_tail(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    ids = w.append_batch([_msg(i) for i in range(6)])
    assert w.read(ReadOption("a", DeliverPolicy.all())).recv(1).message_id == ids[0]
    assert w.read(ReadOption("f", DeliverPolicy.start_from(ids[3]))).recv(1).message_id == ids[3]
    assert w.read(ReadOption("s", DeliverPolicy.start_after(ids[3]))).recv(1).message_id == ids[4]
    latest = w.read(ReadOption("l", DeliverPolicy.latest()))
    beyond = w.read(ReadOption("b", DeliverPolicy.start_after(ids[5])))
    far = w.read(ReadOption("x", DeliverPolicy.start_from(ID(7))))
    for s in (latest, beyond, far):
        with pytest.raises(WALTimeoutError):
            s.recv(0.02)
    new = w.append_batch([_msg(6), _msg(7)])
    assert latest.recv(1).message_id == new[0] and beyond.recv(1).message_id == new[0]
    assert far.recv(1).message_id == new[1]
    assert [m.message_id for m in latest.recv_batch(10, 1)] == [new[1]]
    with pytest.raises(InvalidMessageIDError):
        w.read(ReadOption("bad", DeliverPolicy.start_from(_ForeignID(1))))


def test_ro_scanner_follows_the_writer(opener) -> None:  # type: ignore[no-untyped-def]
    ro = _open(opener, mode=AccessMode.RO)
    s = ro.read(ReadOption("r", DeliverPolicy.all()))
    w = _open(opener)
    threading.Timer(0.05, lambda: w.append_batch([_msg(i) for i in range(3)])).start()
    got = [s.recv(3) for _ in range(3)]
    assert [bytes(m.payload) for m in got] == [b"m0", b"m1", b"m2"]


def test_opener_close_wakes_a_blocked_recv(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    ro = _open(opener, mode=AccessMode.RO)
    scanners = [w.read(ReadOption("w")), ro.read(ReadOption("ro"))]
    errors: list[BaseException] = []

    def wait(s) -> None:  # type: ignore[no-untyped-def]
        try:
            s.recv(None)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wait, args=(s,)) for s in scanners]
    for t in threads:
        t.start()
    time.sleep(0.05)
    opener.close()
    for t in threads:
        t.join(3)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all(isinstance(e, ShutdownError) for e in errors)
    assert all(s.done().is_set() and s.error() is None for s in scanners)
    with pytest.raises(ShutdownError):
        ro.read(ReadOption("late"))
    opener.close()  # idempotent


def test_last_time_tick_is_the_max_not_the_last(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    assert w.last_time_tick() == 0
    w.append(_msg(0, tt=50))
    w.append(_msg(1, tt=30))  # concurrent appends may persist out of tick order
    assert w.last_time_tick() == 50
    w.close()
    assert _open(opener, term=2).last_time_tick() == 50


def test_stored_message_is_independent_of_the_callers_object(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    m = _msg(0)
    w.append(m)
    m.properties["i"] = "changed"
    m.with_time_tick(999)
    got = w.read(ReadOption("r")).recv(1)
    assert got.properties["i"] == "0" and got.time_tick == 1


def test_a_scanner_behind_a_truncation_continues_from_the_oldest_kept(opener) -> None:  # type: ignore[no-untyped-def]
    w = _open(opener)
    ids = w.append_batch([_msg(i) for i in range(10)])
    s = w.read(ReadOption("r", DeliverPolicy.all()))
    assert s.recv(1).message_id == ids[0]
    w.truncate(ids[6])
    assert s.recv(1).message_id == ids[6]
    w.truncate(ID(100))  # past the end: drops what exists, IDs stay dense
    assert w.append(_msg(10)) == ID(10)
    assert s.recv(1).message_id == ID(10)


class _ForeignID(IntMessageID):
    __slots__ = ()
    WAL_NAME = "memory-test-foreign"


def test_conformance_kit_a_on_memory() -> None:
    """milvus-tests.md C.4: kit A with 100 messages, Milvus's 1 s quiet period for ``latest``."""
    WALImplsConformance(get_impls_builder("memory"), message_count=100).run()
