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
    ShutdownError,
    WALLockedError,
    WALTimeoutError,
)
from wal.message import MessageType, MutableMessage
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
    with pytest.raises(FencedError):
        _open(opener, term=1)
    w3 = _open(opener, term=3)  # a newer term takes over and fences the old writer
    with pytest.raises(FencedError):
        w.append(_msg(0))
    assert w3.append(_msg(0)) == ID(0)


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
