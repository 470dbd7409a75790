"""Durations a user passes (build options, timeouts, keepalives) are checked where they are given.

NaN passes every comparison and infinity overflows the OS waits and the hybrid clock: accepted, an infinite
``time_tick_interval`` ended the append thread (appends then waited for ever while the WAL said it was
available), ``sync_interval=inf`` ended localfs's syncer, and ``begin_txn(keepalive=nan)`` left every reader of
the WAL failing with "cannot convert float NaN to integer"."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import pytest

import wal.walimpls.nats as wn
from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal._checks import MAX_SECONDS
from wal.errors import InvalidArgumentError, TxnExpiredError
from wal.message import MessageType, MutableMessage

BAD = [math.nan, math.inf, -math.inf, -1, MAX_SECONDS * 2, "1", None, True]
BAD_TIMEOUTS = [math.nan, math.inf, -1, -0.001, MAX_SECONDS * 2, "1", True]


def _build(backend: str, tmp_path: Path, **kw: Any) -> Any:
    extra = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    return registry.must_get_builder(backend).build(**extra, **kw)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("name", ["time_tick_interval", "write_ahead_buffer_keepalive", "txn_keepalive"])
@pytest.mark.parametrize("bad", [*BAD, 0])
def test_adaptor_duration_options_are_finite_positive_and_bounded(backend, name, bad, tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match=name):
        _build(backend, tmp_path, **{name: bad})


@pytest.mark.parametrize(("name", "zero_ok"), [("sync_interval", False), ("retention_seconds", True)])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, MAX_SECONDS * 2, "1", True, 0])
def test_localfs_duration_options(name, zero_ok, bad, tmp_path) -> None:
    if bad == 0 and zero_ok:
        _build("localfs", tmp_path, **{name: bad}).close()
        return
    with pytest.raises(InvalidArgumentError, match=name):
        _build("localfs", tmp_path, **{name: bad})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, "1"])
def test_nats_duration_options(bad) -> None:
    with pytest.raises(InvalidArgumentError, match="connect_timeout"):
        wn.NatsOpenerBuilder().build(servers="nats://127.0.0.1:1", connect_timeout=bad)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_bad_timeouts_and_keepalives_are_refused_and_leave_the_wal_working(backend, tmp_path) -> None:
    op = _build(backend, tmp_path, time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    s = w.read(ReadOption())
    m = MutableMessage(MessageType.INSERT, b"x", vchannel="v")
    for bad in BAD_TIMEOUTS:
        with pytest.raises(InvalidArgumentError, match="append timeout"):
            w.append(m, timeout=bad)
        with pytest.raises(InvalidArgumentError, match="append timeout"):
            w.append_messages([m], timeout=bad)
        with pytest.raises(InvalidArgumentError, match="recv timeout"):
            while True:  # the ticks already released are delivered first; the check comes with the first wait
                s.recv(bad)
        with pytest.raises(InvalidArgumentError, match="keepalive"):
            w.begin_txn("v", keepalive=bad)
    with pytest.raises(InvalidArgumentError, match="keepalive"):
        w.txn_manager.begin_new_txn(1, math.nan)  # the interceptors' own entry checks too
    # nothing of the above reached the WAL's state: a txn and appends work, and the reader gets them
    with w.begin_txn("v", keepalive=5) as t:
        t.append(MutableMessage(MessageType.INSERT, b"in-txn", vchannel="v"))
    last = w.append(MutableMessage(MessageType.INSERT, b"after", vchannel="v"), timeout=5)
    got = []
    while True:
        x = s.recv(5)
        if x.message_type in (MessageType.INSERT, MessageType.TXN):
            got.append(x.message_type)
        if x.message_id == last.message_id:
            break
    assert got == [MessageType.TXN, MessageType.INSERT]
    assert w.is_available()
    s.close()
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("bad", [1e-9, 0.0009])
def test_a_txn_keepalive_option_below_1_ms_is_refused_at_build(backend: str, bad: float, tmp_path: Path) -> None:
    # begin_txn refuses a keepalive below 1 ms; the build option was accepted, then every begin_txn failed
    with pytest.raises(InvalidArgumentError, match="txn_keepalive"):
        _build(backend, tmp_path, txn_keepalive=bad)
    with _build(backend, tmp_path, txn_keepalive=0.001) as op, op.open(OpenOption(PChannelInfo("c", 1))) as w:
        txn = w.begin_txn("v")  # 1 ms is accepted, by build() and by begin_txn
        with contextlib.suppress(TxnExpiredError):  # it may run out before the rollback: 1 ms is short
            txn.rollback()


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("bad", [1e-6, 0.0009])
def test_a_time_tick_interval_below_1_ms_is_refused_at_build(backend: str, bad: float, tmp_path: Path) -> None:
    # Accepted, an idle WAL made ticks without pause (1 us: about a second of CPU per second, review 13b)
    with pytest.raises(InvalidArgumentError, match="time_tick_interval"):
        _build(backend, tmp_path, time_tick_interval=bad)
    with _build(backend, tmp_path, time_tick_interval=0.001) as op, op.open(OpenOption(PChannelInfo("c", 1))) as w:
        assert w.append(MutableMessage(MessageType.INSERT, b"x", vchannel="v")).time_tick > 0


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("bad", [*BAD_TIMEOUTS])
def test_txn_close_timeout_is_checked_at_build(backend: str, bad: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="txn_close_timeout"):
        _build(backend, tmp_path, txn_close_timeout=bad)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize(
    ("given", "waited"), [({}, 3.0), ({"txn_close_timeout": 0}, 0.0), ({"txn_close_timeout": 7}, 7.0)]
)
def test_close_waits_for_open_txns_as_long_as_txn_close_timeout_says(
    backend: str, given: dict[str, Any], waited: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waited 3 s for a txn left open, with no option to say otherwise and no word in the README (review
    14b): a program that abandons a txn paid 3 s per close. The wait is the build option ``txn_close_timeout``;
    a txn still open after it is never delivered."""
    from wal.interceptors.txn._manager import TxnManager

    asked: list[float | None] = []
    graceful_close = TxnManager.graceful_close

    def spy(self: TxnManager, timeout: float | None = None) -> bool:
        asked.append(timeout)
        return graceful_close(self, 0.0)  # the test does not wait: what close asked for is checked

    monkeypatch.setattr(TxnManager, "graceful_close", spy)
    with _build(backend, tmp_path, **given) as op:
        w = op.open(OpenOption(PChannelInfo("c", 1)))
        w.append(MutableMessage(MessageType.INSERT, b"before", vchannel="v"))
        txn = w.begin_txn("v")
        txn.append(MutableMessage(MessageType.INSERT, b"in the txn", vchannel="v"))
        w.close()
        assert asked == [waited]
        if backend == "localfs":  # what a reader of the log finds after: the abandoned txn is not there
            monkeypatch.undo()
            with op.open(OpenOption(PChannelInfo("c", 2))) as w2:
                w2.append(MutableMessage(MessageType.INSERT, b"after", vchannel="v"))
                with w2.read(ReadOption()) as s:
                    got = []
                    while not got or got[-1] != b"after":
                        m = s.recv(timeout=5)
                        if m.message_type is MessageType.INSERT or m.message_type is MessageType.TXN:
                            got.append(m.payload if m.message_type is MessageType.INSERT else b"txn")
                assert got == [b"before", b"after"]
