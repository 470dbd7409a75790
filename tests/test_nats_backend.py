"""The nats backend against one private nats-server (sync_interval: always) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _nats_server import NatsServer, find_nats_server, free_port

pytest.importorskip("nats")

import wal.walimpls.nats as wn
from wal import AccessMode, OpenOption, PChannelInfo, registry
from wal import ReadOption as WALReadOption
from wal.errors import (
    AccessModeError,
    FencedError,
    InvalidArgumentError,
    InvalidMessageError,
    ShutdownError,
    WALIOError,
    WALTimeoutError,
)
from wal.message import MessageType, MutableMessage, TxnContext, unmarshal_message_id
from wal.options import DeliverPolicy
from wal.registry import get_impls_builder
from wal.walimpls import ReadOption
from wal.walimpls.nats._headers import decode_properties, encode_properties
from wal.walimpls.nats._naming import channel_names

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server binary not installed"),
    pytest.mark.timeout(120),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path_factory.mktemp("nats"))
    try:
        s.start()
        s.wait_ready()
        yield s
    finally:
        s.kill()


@pytest.fixture
def opener(server: NatsServer) -> Iterator[wn.NatsOpener]:
    op = wn.NatsOpenerBuilder().build(servers=server.url, publish_timeout=1.0, append_timeout=20.0)
    try:
        yield op
    finally:
        op.close()


def chan(term: int = 1, mode: AccessMode = AccessMode.RW, name: str | None = None) -> OpenOption:
    return OpenOption(PChannelInfo(name or f"ch-{uuid.uuid4().hex[:8]}", term, mode))


def msg(i: int, *, tt: int | None = None, vch: str = "v1") -> MutableMessage:
    m = MutableMessage(message_type=MessageType.INSERT, payload=b"p%d" % i, properties={"i": str(i)}, vchannel=vch)
    m.with_time_tick(tt if tt is not None else 1000 + i)
    return m


def drain(s: object, n: int, timeout: float = 10.0) -> list[int]:
    out: list[int] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} of {n} messages"
        out += [int(m.properties["i"]) for m in s.recv_batch(n - len(out), 5.0)]  # type: ignore[attr-defined]
    return out


# -- no server needed ---------------------------------------------------------------------------------------------
def test_registered_and_ids_unmarshal() -> None:
    assert get_impls_builder("nats").name == "nats"
    mid = unmarshal_message_id("nats", "42")
    assert mid == wn.NatsMessageID(42) and mid < wn.NatsMessageID(43) and mid.wal_name == "nats"
    with pytest.raises(ValueError):
        unmarshal_message_id("nats", "x1")


def test_unknown_and_bad_options_raise() -> None:
    b = wn.NatsOpenerBuilder()
    with pytest.raises(InvalidArgumentError, match="bogus"):
        b.build(bogus=1, servers="nats://127.0.0.1:1")
    with pytest.raises(InvalidArgumentError, match="replicas"):
        b.build(replicas=7)
    with pytest.raises(InvalidArgumentError, match="stream_prefix"):
        b.build(stream_prefix="a.b")
    with pytest.raises(InvalidArgumentError, match="tls_key_file needs tls_cert_file"):  # was silently ignored
        b.build(tls_key_file="/nonexistent/key.pem")
    with pytest.raises(InvalidArgumentError, match="use wss://"):  # the TLS check cannot see a websocket's socket
        b.build(servers="ws://127.0.0.1:1", tls_ca_file="/nonexistent/ca.pem")
    with pytest.raises(InvalidArgumentError, match="duplicate_window"):  # the server refused it at the first open
        b.build(max_age=60.0)
    import importlib.util

    if importlib.util.find_spec("nkeys") is None:  # a bare ModuleNotFoundError at connect, before
        with pytest.raises(InvalidArgumentError, match="nkeys package"):
            b.build(creds_file="/nonexistent/wal.creds")


def test_unreachable_server_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(WALIOError, match=r"cannot connect.*last error: ConnectionRefusedError"):
        wn.NatsOpenerBuilder().build(servers="nats://127.0.0.1:1", connect_timeout=0.5, max_reconnect_attempts=0)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    "props",
    [{}, {"k": "v"}, {"sp ace": " lead and trail ", "pct%": "100%", "nl": "a\r\nb", "uni": "é€😀", "": "", "e": ""}],
)
def test_header_encoding_round_trips(props: dict[str, str]) -> None:
    m = MutableMessage(message_type=MessageType.DELETE, payload=b"", properties=props, vchannel="v 1")
    wire = m.wire_properties()
    hdrs = encode_properties(wire)
    import re

    for k, v in hdrs.items():
        assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", k), k
        assert v == v.strip() and "\n" not in v and "\r" not in v and v.isascii()
    # what the server adds must not leak into properties
    back = decode_properties({**hdrs, "Nats-Msg-Id": "x", "Nats-Sequence": "3"})
    assert back == wire


def test_channel_names_are_valid_and_distinct() -> None:
    seen = set()
    for name in ["a", "a.b", "a_2e", "a b", "A*>", "é", "x" * 200, "x" * 199 + "y"]:
        n = channel_names(name, "WAL_", "wal")
        assert all(c.isalnum() or c in "_-" for c in n.stream), n.stream
        assert len(n.stream) < 255
        assert n.data_subject.count(".") == 2 and " " not in n.data_subject
        seen.add(n.stream)
    assert len(seen) == 8


# -- one server ---------------------------------------------------------------------------------------------------
def test_append_read_round_trip_keeps_everything(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    m = MutableMessage(
        message_type=MessageType.INSERT, payload=b"\x00\xffdata", properties={"a": "1", "b c": "d e "}, vchannel="v9"
    )
    m.with_time_tick(123456789).with_wal_term(1).with_txn_context(TxnContext(7, 5.0))
    mid = w.append(m)
    with w.read(ReadOption("r")) as s:
        got = s.recv(5)
    assert got.message_id == mid and got.wal_name == "nats"
    assert bytes(got.payload) == b"\x00\xffdata"
    assert dict(got.properties) == {"a": "1", "b c": "d e "}
    assert (got.time_tick, got.vchannel, got.message_type, got.wal_term) == (123456789, "v9", MessageType.INSERT, 1)
    assert got.txn_ctx is not None and got.txn_ctx.txn_id == 7
    assert got.last_confirmed_message_id == mid
    assert w.last_time_tick() == 123456789


def test_batch_is_pipelined_in_order_and_delivered_in_order(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    ids = w.append_batch([msg(i) for i in range(3000)])
    assert all(a < b for a, b in itertools.pairwise(ids))
    with w.read(ReadOption("r")) as s:
        assert drain(s, 3000) == list(range(3000))


def test_concurrent_appends_get_unique_ids_and_scan_in_id_order(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    results: dict[int, int] = {}
    lock = threading.Lock()

    def worker(base: int) -> None:
        for i in range(base, base + 200, 20):
            ids = w.append_batch([msg(j) for j in range(i, i + 20)])
            with lock:
                results.update({j: mid.value for j, mid in zip(range(i, i + 20), ids, strict=True)})  # type: ignore[attr-defined]

    ts = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(results.values())) == 800
    with w.read(ReadOption("r")) as s:
        got = drain(s, 800)
    assert got == sorted(results, key=results.__getitem__)


def test_deliver_policies_are_exact(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    ids = w.append_batch([msg(i) for i in range(10)])
    with w.read(ReadOption("a", DeliverPolicy.start_from(ids[4]))) as s:
        assert drain(s, 6) == list(range(4, 10))
    with w.read(ReadOption("b", DeliverPolicy.start_after(ids[4]))) as s:
        assert drain(s, 5) == list(range(5, 10))
    with w.read(ReadOption("c", DeliverPolicy.latest())) as s:
        with pytest.raises(WALTimeoutError):
            s.recv(0.3)
        w.append(msg(10))
        assert drain(s, 1) == [10]
    with w.read(ReadOption("d", DeliverPolicy.start_after(ids[-1]))) as s:
        assert drain(s, 1) == [10]


def test_scanner_tails_and_close_wakes_recv(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    s = w.read(ReadOption("t"))
    got: list[BaseException | int] = []
    drained = threading.Event()

    def reader() -> None:
        try:
            got.extend(drain(s, 3))
            drained.set()
            s.recv(None)
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    w.append_batch([msg(0), msg(1)])
    time.sleep(0.2)
    w.append(msg(2))
    # Closed once the three came, not 0.3 s after the append: on a busy machine they can take longer, and the close
    # then ended the drain. The sleep lets the reader block in recv(None), which the close must wake.
    assert drained.wait(15)
    time.sleep(0.3)
    s.close()
    t.join(5)
    assert not t.is_alive()
    assert got[:3] == [0, 1, 2] and isinstance(got[3], ShutdownError)
    assert s.done().is_set()


def test_messages_survive_reopen_across_terms_and_openers(server: NatsServer, opener: wn.NatsOpener) -> None:
    name = f"ch-{uuid.uuid4().hex[:8]}"
    w = opener.open(chan(1, name=name))
    w.append_batch([msg(i) for i in range(5)])
    w.close()
    with wn.NatsOpenerBuilder().build(servers=server.url) as op2:
        w2 = op2.open(chan(3, name=name))
        w2.append(msg(5))
        with w2.read(ReadOption("r")) as s:
            assert drain(s, 6) == list(range(6))


def test_older_term_is_fenced(opener: wn.NatsOpener) -> None:
    name = f"ch-{uuid.uuid4().hex[:8]}"
    old = opener.open(chan(1, name=name))
    old.append(msg(0))
    new = opener.open(chan(2, name=name))
    with pytest.raises(FencedError):
        old.append(msg(1))
    with pytest.raises(FencedError):  # fenced for ever
        old.append_batch([msg(2), msg(3)])
    with pytest.raises(FencedError):
        opener.open(chan(1, name=name))
    new.append(msg(4))
    same = opener.open(chan(2, name=name))  # same term, new writer: takes over
    same.append(msg(5))
    with pytest.raises(FencedError):
        new.append(msg(6))
    with same.read(ReadOption("r")) as s:
        assert drain(s, 3) == [0, 4, 5]
        with pytest.raises(WALTimeoutError):
            s.recv(0.3)


def test_fencing_while_old_writer_pipelines(opener: wn.NatsOpener) -> None:
    """A newer writer opening in the middle of an older writer's pipelined batches: no old message lands after
    the fence, and the old writer ends with FencedError."""
    name = f"ch-{uuid.uuid4().hex[:8]}"
    old = opener.open(chan(1, name=name))
    acked: list[int] = []
    errors: list[BaseException] = []

    def pump() -> None:
        i = 0
        while True:
            try:
                ids = old.append_batch([msg(j) for j in range(i, i + 50)])
            except BaseException as e:
                errors.append(e)
                return
            acked.extend(range(i, i + 50))
            assert ids
            i += 50

    t = threading.Thread(target=pump)
    t.start()
    time.sleep(0.5)
    new = opener.open(chan(2, name=name))
    new.append(msg(-1))
    t.join(30)
    assert not t.is_alive() and isinstance(errors[0], FencedError)
    with new.read(ReadOption("r")) as s:
        got = drain(s, len(acked) + 1)
        while got[-1] != -1:  # nothing of the old writer after the new one's first message
            got += drain(s, 1)
    # every acknowledged message, then maybe a stored prefix of the batch that failed, then the new writer
    assert got[: len(acked)] == acked
    assert got[len(acked) : -1] == list(range(len(acked), len(got) - 1))


def test_read_only_mode(opener: wn.NatsOpener) -> None:
    name = f"ch-{uuid.uuid4().hex[:8]}"
    w = opener.open(chan(1, name=name))
    ro = opener.open(chan(1, AccessMode.RO, name=name))
    with pytest.raises(AccessModeError):
        ro.append(msg(0))
    with pytest.raises(AccessModeError):
        ro.truncate(wn.NatsMessageID(1))
    s = ro.read(ReadOption("ro"))
    w.append_batch([msg(0), msg(1)])
    assert drain(s, 2) == [0, 1]
    ro.close()
    assert s.done().is_set()
    with pytest.raises(ShutdownError):
        ro.read(ReadOption("x"))


def test_a_stream_a_reader_made_first_gets_the_writers_options(server: NatsServer) -> None:
    """A read-only open creates the stream when it comes first, with the reader's options (here the defaults), and
    the writer's open left an existing stream alone: the writer's replicas and limits were silently dropped (with
    ``replicas=3``, one copy). The writer's open now gives such a stream its options; a later reader changes
    nothing."""
    name = f"ch-{uuid.uuid4().hex[:8]}"
    with wn.NatsOpenerBuilder().build(servers=server.url) as rop, \
            wn.NatsOpenerBuilder().build(servers=server.url, max_bytes=1 << 20, max_age=3600.0) as wop:
        rop.open(chan(1, AccessMode.RO, name=name))
        wop.open(chan(1, name=name))
        rop.open(chan(1, AccessMode.RO, name=name))
        cfg = wop.run_api(wop.js.stream_info(channel_names(name, "WAL_", "wal").stream), "info").config
        assert (cfg.max_bytes, cfg.max_age) == (1 << 20, 3600.0)
        assert cfg.metadata["wal_channel"] == name and "wal_provisional" not in cfg.metadata


def test_truncate_purges_below(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    ids = w.append_batch([msg(i) for i in range(10)])
    w.truncate(ids[6])
    with w.read(ReadOption("r")) as s:
        assert drain(s, 4) == [6, 7, 8, 9]
        assert s.skipped_to() == wn.NatsMessageID(ids[6].value - 1)  # type: ignore[attr-defined]
    with w.read(ReadOption("r", DeliverPolicy.start_from(ids[2]))) as s:
        assert drain(s, 1) == [6]


def test_a_txn_whose_body_was_deleted_under_a_slow_reader_is_not_delivered_in_part(server: NatsServer) -> None:
    """A follower had read a txn's begin when retention (max_bytes) deleted the oldest part of its body: the consumer
    jumped to the oldest message kept, and the TXN came at its commit with the body messages the reader had before
    and after the stretch, as if the txn had been that. The scanner now says where it jumped (``skipped_to``), and a
    txn across the stretch is not delivered: all or nothing."""
    tag = uuid.uuid4().hex[:8]
    op = registry.must_get_builder("nats").build(servers=server.url, max_bytes=64 * 1024, read_ahead=16,
                                                 stream_prefix=f"G{tag}_", subject_prefix=f"g{tag}")
    with op, op.open(chan(name="c")) as w, op.open(chan(1, AccessMode.RO, name="c")) as ro:
        s = ro.read(WALReadOption(DeliverPolicy.all()))
        t = w.begin_txn(vchannel="v1", keepalive=60.0)
        t.append(MutableMessage(MessageType.INSERT, b"b0", vchannel="v1"))
        w.append(MutableMessage(MessageType.INSERT, b"mark", vchannel="v1"))
        while bytes(s.recv(timeout=10).payload) != b"mark":  # the reader has the begin and b0
            pass
        for i in range(1, 41):  # the reader buffers 16 of them (read_ahead) and waits for room
            t.append(MutableMessage(MessageType.INSERT, b"b%d" % i, vchannel="v1"))
        for i in range(41, 61):  # 20 x 8 KiB: retention drops everything older than the last few
            t.append(MutableMessage(MessageType.INSERT, b"b%d" % i + b"." * 8192, vchannel="v1"))
        t.commit()
        w.append(MutableMessage(MessageType.INSERT, b"after", vchannel="v1"))
        got: list[Any] = []
        while True:
            m = s.recv(timeout=10)
            if m.message_type is MessageType.TXN:
                got.append(m)
            if bytes(m.payload) == b"after":
                break
        s.close()
    assert [len(m.messages) for m in got] in ([], [61]), [[bytes(x.payload)[:3] for x in m.messages] for m in got]


def test_a_scanner_finds_the_fence_in_force_in_few_round_trips(
    opener: wn.NatsOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scanner starting past the first message looks up the fence record in force there: it walked every fence
    record before, a round trip each, and they are never purged (one per writer open), so each start (and each
    reopen after trouble) of a reader of a channel opened 1,000 times cost 1,000 round trips."""
    import wal.walimpls.nats._scanner as sc

    name = f"ch-{uuid.uuid4().hex[:8]}"
    fences: list[int] = []
    for i in range(60):
        w = opener.open(chan(name=name))
        fences.append(w._pub._fence_seq)  # type: ignore[attr-defined]
        w.append_batch([msg(2 * i), msg(2 * i + 1)])
        w.close()
    names = w._names  # type: ignore[attr-defined]
    calls = [0]
    real = sc.next_fence

    async def counted(*a: Any) -> Any:
        calls[0] += 1
        return await real(*a)

    monkeypatch.setattr(sc, "next_fence", counted)
    for start in (1, 2, fences[5], fences[5] + 1, fences[30] + 2, fences[-1], fences[-1] + 3):
        calls[0] = 0
        want = max([f for f in fences if f < start], default=0)
        assert opener.lt.run(sc._fence_before(opener.js, names, start), 30) == want, start
        assert calls[0] <= sc._FENCE_WALK + 10, (start, calls[0])


def test_closed_objects_raise(server: NatsServer) -> None:
    op = wn.NatsOpenerBuilder().build(servers=server.url)
    w = op.open(chan())
    s = w.read(ReadOption("r"))
    op.close()
    op.close()
    assert s.done().is_set()
    with pytest.raises(ShutdownError):
        w.append(msg(0))
    with pytest.raises(ShutdownError):
        s.recv(0.1)
    with pytest.raises(ShutdownError):
        op.open(chan())


def _fill(w: Any, n: int = 20) -> None:
    """Past a 32 KiB stream's max_bytes: retention deletes the oldest messages, the fence record with them."""
    for i in range(n):
        m = MutableMessage(MessageType.INSERT, b"x" * 4096, {"i": str(i)}, vchannel="v1")
        m.with_time_tick(1000 + i)
        w.append(m)


def test_a_lower_term_is_fenced_after_retention_deleted_the_fence_record(opener: wn.NatsOpener) -> None:
    """Limits retention deletes fence records too: with none left, an open with a lower term passed the term check
    and fenced the owner, whose appends then failed with "a newer writer (term 1)"."""
    op = wn.NatsOpenerBuilder().build(servers=opener.options.servers, max_bytes=32 * 1024)
    with op:
        name = f"ch-{uuid.uuid4().hex[:8]}"
        w5 = op.open(chan(5, name=name))
        _fill(w5)
        with pytest.raises(FencedError, match="owned by term 5"):
            op.open(chan(1, name=name))
        w5.append(msg(99))
        op.open(chan(6, name=name))  # a higher term still takes it over
        with pytest.raises(FencedError):
            w5.append(msg(100))


def _await_data_expired(op: wn.NatsOpener, name: str) -> None:
    """Until ``max_age`` has deleted every data message of the channel (bounded: the server expires them late)."""
    import nats.js.errors

    names = channel_names(name, "WAL_", "wal")
    deadline = time.monotonic() + 20
    while True:
        try:
            op.run_api(op.js.get_msg(names.stream, subject=names.data_subject), "last data message")
        except WALIOError as e:
            if isinstance(e.__cause__, nats.js.errors.NotFoundError):
                return
            raise
        assert time.monotonic() < deadline, "max_age did not delete the data messages"
        time.sleep(0.2)


def test_a_channel_that_max_age_emptied_keeps_its_term(opener: wn.NatsOpener) -> None:
    """``max_age`` deleted the fence records with the data: a channel idle for longer than it had no term left, and
    an open with any term succeeded. A writer's open now keeps the term in a KV bucket without limits too."""
    with wn.NatsOpenerBuilder().build(servers=opener.options.servers, max_age=1.0, duplicate_window=0.5) as op:
        name = f"ch-{uuid.uuid4().hex[:8]}"
        w5 = op.open(chan(5, name=name))
        w5.append(msg(0))
        _await_data_expired(op, name)
        with pytest.raises(FencedError, match="owned by term 5"):
            op.open(chan(1, name=name))
        w5.append(msg(1))  # still the owner
        op.open(chan(6, name=name))
        with pytest.raises(FencedError):
            w5.append(msg(2))




def test_a_channel_that_max_age_emptied_keeps_its_term_across_a_server_restart(tmp_path: Path) -> None:
    """Fence records published with ``Nats-TTL: never`` (per-message TTLs, the first fix tried) outlive ``max_age``
    while the server runs, but nats-server 2.15.1 expires them at its restart all the same (its recovery drops
    blocks older than ``max_age`` whole): a lower term then opened the channel again. The term is kept in a KV
    bucket without limits."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        name = f"ch-{uuid.uuid4().hex[:8]}"
        with wn.NatsOpenerBuilder().build(servers=s.url, max_age=1.0, duplicate_window=0.5) as op:
            op.open(chan(5, name=name)).append(msg(0))
            _await_data_expired(op, name)
        s.kill(signal.SIGTERM)
        s.start()
        s.wait_ready()
        with wn.NatsOpenerBuilder().build(servers=s.url, max_age=1.0, duplicate_window=0.5) as op:
            with pytest.raises(FencedError, match="owned by term 5"):
                op.open(chan(1, name=name))
            op.open(chan(5, name=name)).append(msg(1))  # the owner's term still opens it
    finally:
        s.kill()

def test_two_writers_racing_on_a_max_age_stream_leave_the_higher_term_alone_in_charge(server: NatsServer) -> None:
    """The term floor (a compare-and-set in the KV bucket) comes before the fence record's own compare-and-set: of
    two writers opening at once with terms 3 and 4, the lower is refused or fenced, the higher appends, whichever
    came first."""
    with wn.NatsOpenerBuilder().build(servers=server.url, max_age=60.0, duplicate_window=1.0) as a, \
            wn.NatsOpenerBuilder().build(servers=server.url, max_age=60.0, duplicate_window=1.0) as b:
        for _ in range(5):
            name = f"ch-{uuid.uuid4().hex[:8]}"
            got: dict[int, Any] = {}
            start = threading.Barrier(2)

            def open_(op: wn.NatsOpener, term: int, name: str = name, got: dict[int, Any] = got) -> None:
                start.wait()
                try:
                    got[term] = op.open(chan(term, name=name))
                except FencedError as e:
                    got[term] = e

            ts = [threading.Thread(target=open_, args=(a, 3)), threading.Thread(target=open_, args=(b, 4))]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            w4 = got[4]
            assert not isinstance(w4, BaseException), w4
            w4.append(msg(0))
            if not isinstance(got[3], BaseException):
                with pytest.raises(FencedError):
                    got[3].append(msg(1))
            with pytest.raises(FencedError, match="owned by term 4"):
                a.open(chan(3, name=name))

def test_a_max_age_stream_made_by_an_earlier_version_keeps_the_term_of_its_next_writer(
    opener: wn.NatsOpener,
) -> None:
    """A stream with ``max_age`` made by an earlier version (its config as that version made it): the next writer's
    open keeps its term."""
    import nats.js.api as api

    name = f"ch-{uuid.uuid4().hex[:8]}"
    names = channel_names(name, "WAL_", "wal")
    old = api.StreamConfig(
        name=names.stream, subjects=[names.data_subject, names.fence_subject], storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD, num_replicas=1, duplicate_window=0.5,
        max_age=1.0, allow_direct=True, metadata={"wal_channel": name},
    )
    opener.run_api(opener.js.add_stream(old), "old stream")
    w5 = opener.open(chan(5, name=name))
    w5.append(msg(0))
    _await_data_expired(opener, name)
    with pytest.raises(FencedError, match="owned by term 5"):
        opener.open(chan(1, name=name))



def test_a_lower_term_refused_by_an_earlier_versions_owner_leaves_the_floor_at_the_owners_term(
    opener: wn.NatsOpener,
) -> None:
    """The owner opened with an earlier version (a fence record, no floor). A lower term's open, refused by that
    fence record, had already raised the floor to its own term; once ``max_age`` emptied the channel, any term
    between the two opened it and fenced the owner. A refused open now leaves the floor at the owner's term."""
    with wn.NatsOpenerBuilder().build(servers=opener.options.servers, max_age=1.0, duplicate_window=0.5) as op:
        name = f"ch-{uuid.uuid4().hex[:8]}"
        w5 = op.open(chan(5, name=name))
        w5.append(msg(0))
        kv = op.lt.run(op.js.key_value("WAL_terms"), 5)
        op.lt.run(kv.purge(channel_names(name, "WAL_", "wal").stream[len("WAL_"):]), 5)  # an earlier version's
        with pytest.raises(FencedError, match="owned by term 5"):
            op.open(chan(3, name=name))
        _await_data_expired(op, name)
        with pytest.raises(FencedError, match="owned by term 5"):
            op.open(chan(4, name=name))
        w5.append(msg(1))  # still the owner


# -- failures -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_server_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """SIGKILL the only server during appends and a tailing scan; restart it: every acknowledged message is
    delivered exactly once, in order, and appends resume."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        op = wn.NatsOpenerBuilder().build(servers=s.url, publish_timeout=0.5, append_timeout=30.0)
        w = op.open(chan(name="restart"))
        sc = w.read(ReadOption("tail"))
        acked: list[int] = []
        failed: list[BaseException] = []
        stop = threading.Event()

        def pump() -> None:
            i = 0
            while not stop.is_set():
                try:
                    w.append_batch([msg(j) for j in range(i, i + 10)])
                    acked.extend(range(i, i + 10))
                except WALTimeoutError as e:
                    failed.append(e)
                i += 10

        t = threading.Thread(target=pump)
        t.start()
        time.sleep(1.0)
        s.kill(signal.SIGKILL)
        time.sleep(1.0)
        s.start()
        s.wait_ready()
        time.sleep(1.5)
        stop.set()
        t.join(40)
        assert not t.is_alive()
        assert not failed, failed
        got = drain(sc, len(acked), 30.0)
        assert got == acked
        with pytest.raises(WALTimeoutError):
            sc.recv(0.5)
        op.close()
    finally:
        s.kill()


def _restart_under(s: NatsServer, w: Any, lost: Any, then: Any) -> None:
    """Kill the server under writer ``w`` (``lost``'s append times out), start it again, and append ``then`` until
    the server answers: the writer must come back, never fenced (a ``FencedError`` fails the test)."""
    s.kill(signal.SIGKILL)
    with pytest.raises(WALTimeoutError):
        w.append(lost)
    s.start()
    s.wait_ready()
    deadline = time.monotonic() + 30
    while True:
        try:
            w.append(then)
            return
        except (WALTimeoutError, WALIOError):  # not FencedError
            assert time.monotonic() < deadline


def test_a_writer_whose_fence_record_retention_deleted_survives_a_server_restart(tmp_path: Path) -> None:
    """An append that timed out while the server was down makes the writer re-fence, which checks that the last
    fence record is still its own; retention had deleted it, so the writer took that for a newer writer ("term 0")
    and was fenced for good by a routine restart."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        with wn.NatsOpenerBuilder().build(servers=s.url, max_bytes=32 * 1024, publish_timeout=0.5,
                                          append_timeout=2.0) as op:
            w = op.open(chan(name="refence"))
            _fill(w)
            _restart_under(s, w, msg(0), msg(1))
    finally:
        s.kill()



def test_a_writer_whose_channel_max_age_emptied_survives_a_server_restart(tmp_path: Path) -> None:
    """The same with ``max_age``: once it emptied the channel, the re-fence after an append that timed out found
    neither a fence record nor a data message, took that for a newer writer ("term 0"), and fenced the owner for
    good."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        with wn.NatsOpenerBuilder().build(servers=s.url, max_age=1.0, duplicate_window=0.5, publish_timeout=0.5,
                                          append_timeout=2.0) as op:
            name = f"ch-{uuid.uuid4().hex[:8]}"
            w = op.open(chan(5, name=name))
            w.append(msg(0))
            _await_data_expired(op, name)
            _restart_under(s, w, msg(1), msg(2))
            with pytest.raises(FencedError, match="owned by term 5"):
                op.open(chan(4, name=name))
    finally:
        s.kill()

def test_of_two_same_term_opens_the_one_fenced_does_not_take_the_emptied_channel_back(server: NatsServer) -> None:
    """Two opens with the same term: X raises the floor, Y raises it (naming itself) and stores its fence record,
    then X stores its own, after Y's: X owns the channel. Once ``max_age`` emptied it, Y's next appends found the
    floor naming Y, took the conflict for a lost predecessor, re-fenced, and took the channel from X. The floor now
    names the writer of the term's highest fence record."""
    kw: dict[str, Any] = {"servers": server.url, "max_age": 1.0, "duplicate_window": 0.5}
    with wn.NatsOpenerBuilder().build(**kw) as opx, wn.NatsOpenerBuilder().build(**kw) as opy:
        name = f"ch-{uuid.uuid4().hex[:8]}"
        fence_subject = channel_names(name, "WAL_", "wal").fence_subject
        publish = opx.js.publish
        reached, go = threading.Event(), threading.Event()

        async def held(subject: str, *args: Any, **kwargs: Any) -> Any:
            if subject == fence_subject and not go.is_set():  # X's fence record waits for Y's open
                reached.set()
                while not go.is_set():
                    await asyncio.sleep(0.01)
            return await publish(subject, *args, **kwargs)

        opx.js.publish = held  # type: ignore[method-assign]
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(opx.open(chan(3, name=name))))
        t.start()
        assert reached.wait(10)
        wy = opy.open(chan(3, name=name))
        go.set()
        t.join(10)
        wx = got[0]
        wx.append(msg(0))  # X's record is the last: X owns the channel
        _await_data_expired(opx, name)
        with pytest.raises(FencedError):
            for _ in range(10):
                with contextlib.suppress(WALIOError):  # a conflict it cannot explain yet
                    wy.append(msg(1))
        wx.append(msg(2))


def test_a_same_term_open_that_failed_before_its_fence_does_not_fence_the_owner(tmp_path: Path) -> None:
    """An open with the owner's term raised the floor, with its own writer id, then failed before its fence record
    (here its publish refused). The owner's fence record stayed the last, but once ``max_age`` emptied the channel
    the owner read the floor at its re-fence after a server restart, found another writer of its term there, and
    fenced itself for good. The floor now names a writer once its fence record is stored (the highest record of
    the term): an open of the same term leaves it alone until then."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        kw: dict[str, Any] = {"servers": s.url, "max_age": 1.0, "duplicate_window": 0.5}
        with wn.NatsOpenerBuilder().build(publish_timeout=0.5, append_timeout=2.0, **kw) as op, \
                wn.NatsOpenerBuilder().build(**kw) as other:
            name = f"ch-{uuid.uuid4().hex[:8]}"
            w = op.open(chan(3, name=name))
            w.append(msg(0))

            publish = other.js.publish
            fence_subject = channel_names(name, "WAL_", "wal").fence_subject

            async def refused(subject: str, *args: Any, **kwargs: Any) -> Any:
                if subject == fence_subject:
                    raise OSError("the connection broke")
                return await publish(subject, *args, **kwargs)  # the floor's

            other.js.publish = refused  # type: ignore[method-assign]
            with pytest.raises(WALIOError, match="the connection broke"):
                other.open(chan(3, name=name))
            _await_data_expired(op, name)
            _restart_under(s, w, msg(1), msg(2))
    finally:
        s.kill()


@pytest.mark.slow
def test_stalled_server_resends_without_duplicates(tmp_path: Path) -> None:
    """SIGSTOP the server so acks stop: the writer resends after publish_timeout; when the server resumes it sees
    the originals and the resends, and stores each message once (the resend is recognised by its Msg-Id)."""
    s = NatsServer(tmp_path)
    try:
        s.start()
        s.wait_ready()
        op = wn.NatsOpenerBuilder().build(servers=s.url, publish_timeout=0.3, append_timeout=30.0)
        w = op.open(chan(name="stall"))
        w.append(msg(0))
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(w.append_batch([msg(i) for i in range(1, 201)])))
        s.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        t.start()
        time.sleep(1.5)
        s.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        t.join(30)
        assert not t.is_alive() and len(out[0]) == 200  # type: ignore[arg-type]
        with w.read(ReadOption("r")) as sc:
            assert drain(sc, 201) == list(range(201))
            with pytest.raises(WALTimeoutError):
                sc.recv(0.5)
        op.close()
    finally:
        if s.proc is not None:
            s.proc.send_signal(signal.SIGCONT)
        s.kill()


def test_last_time_tick_is_the_max_of_the_tail(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    assert w.last_time_tick() == 0
    w.append_batch([msg(0, tt=5), msg(1, tt=100), msg(2, tt=50)])  # stored out of time-tick order
    assert w.last_time_tick() == 100
    w.append(msg(3, tt=70))
    assert w.last_time_tick() == 100


def test_last_time_tick_does_not_wait_for_a_message_deleted_after_it_was_counted(
    opener: wn.NatsOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last_time_tick()`` (every writer open calls it) counted the tail's messages, then pulled that many, waiting
    up to the pull's expiry (10 s) for them: one deleted in between (``max_age``, a purge) never came, and the
    open stalled for the whole expiry (review 15a). The pull is a no-wait pull, as its docstring said."""
    import wal.walimpls.nats._scanner as ns

    w = opener.open(chan())
    ids = w.append_batch([msg(i, tt=10 + i) for i in range(5)])
    js = opener.js
    add_consumer = js.add_consumer

    async def add_then_delete(stream: str, config: Any = None, **kw: Any) -> Any:
        info = await add_consumer(stream, config=config, **kw)
        await js.delete_msg(stream, ids[2].value)  # counted in the consumer's num_pending, then gone
        return info

    monkeypatch.setattr(js, "add_consumer", add_then_delete)
    monkeypatch.setattr(ns, "_EXPIRES", 120.0)  # the pull's expiry: what the call waited before
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(w.last_time_tick()), daemon=True)
    t.start()
    t.join(30)  # a bound, not a speed check: before, it waited the whole 120 s
    assert got == [14]


def test_oversized_message_is_refused_and_the_chain_goes_on(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    w.append(msg(0))
    big = MutableMessage(message_type=MessageType.INSERT, payload=b"x" * (2 << 20), vchannel="v1")
    with pytest.raises(InvalidArgumentError, match="max_payload"):
        w.append(big)
    w.append_batch([msg(1), msg(2)])
    with w.read(ReadOption("r")) as s:
        assert drain(s, 3) == [0, 1, 2]


def _first_payloads(w: Any, n: int) -> list[bytes]:
    """The payloads of the first ``n`` messages of ``w`` (at least ``n`` must be there)."""
    with w.read(ReadOption("r")) as s:
        got = s.recv_batch(10, 5.0)
        while len(got) < n:
            got += s.recv_batch(10, 5.0)
    return [bytes(m.payload) for m in got]


def test_chain_broken_by_a_foreign_publish_fails_once_then_recovers(opener: wn.NatsOpener) -> None:
    """Someone publishes to the channel's subject behind the WAL's back: the writer's next append is refused by the
    server (its expected last message is gone), fails with WALIOError, and the writer re-fences and goes on."""
    w = opener.open(chan())
    w.append(msg(0))
    subject = w._names.data_subject  # type: ignore[attr-defined]
    opener.lt.run(opener.js.publish(subject, b"foreign"), 10)
    with pytest.raises(WALIOError, match="predecessor"):
        w.append(msg(1))
    w.append_batch([msg(2), msg(3)])
    assert _first_payloads(w, 4) == [b"p0", b"foreign", b"p2", b"p3"]


def test_scanners_skip_an_older_writers_message_stored_after_a_newer_fence(opener: wn.NatsOpener) -> None:
    """On replicated streams an old writer's in-flight message can land after a newer fence (sequence checks
    only); the writer never acknowledges it and scanners must not deliver it. Simulated here by hand."""
    name = f"ch-{uuid.uuid4().hex[:8]}"
    w1 = opener.open(chan(1, name=name))
    w1.append(msg(0))
    f1 = w1._pub._fence_seq  # type: ignore[attr-defined]
    w2 = opener.open(chan(2, name=name))
    id1 = w2.append(msg(1))
    subject = w2._names.data_subject  # type: ignore[attr-defined]
    opener.lt.run(opener.js.publish(subject, b"stale", headers={"Wal-Fence": str(f1), "~i": "99"}), 10)
    opener.lt.run(opener.js.publish(subject, b"foreign", headers={"~i": "98"}), 10)
    w3 = opener.open(chan(3, name=name))
    w3.append(msg(2))
    with w3.read(ReadOption("all")) as s:
        assert drain(s, 4) == [0, 1, 98, 2]
    with w3.read(ReadOption("from", DeliverPolicy.start_from(id1))) as s:
        assert drain(s, 3) == [1, 98, 2]
        with pytest.raises(WALTimeoutError):
            s.recv(0.3)


class _CutProxy:
    """Forwards a loopback port to a server; while ``swallow`` is set, what the server sends is dropped (and
    counted in ``swallowed``); ``cut`` closes every connection, as a network failure would."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.swallow = False
        self.swallowed = b""
        self._conns: list[socket.socket] = []
        self._ls = socket.create_server(("127.0.0.1", free_port()))
        self.url = f"nats://127.0.0.1:{self._ls.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = self._ls.accept()
                u = socket.create_connection(("127.0.0.1", self.upstream))
                self._conns += [c, u]
                threading.Thread(target=self._pipe, args=(c, u, False), daemon=True).start()
                threading.Thread(target=self._pipe, args=(u, c, True), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, down: bool) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                if down and self.swallow:
                    self.swallowed += data
                else:
                    b.sendall(data)
        self._close(a, b)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for x in socks:
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)
            x.close()

    def cut(self) -> None:
        conns, self._conns = self._conns, []
        self._close(*conns)

    def close(self) -> None:
        self._ls.close()
        self.cut()


def test_a_message_delivered_into_a_dying_connection_reaches_a_tailing_scanner(server: NatsServer) -> None:
    """The consumer is no-ack: what the server sent into a connection that then died is delivered for it. The
    scanner saw the gap only at the consumer's next message, so on a quiet channel the last messages never came
    (30 s and more, until the next append), though the consumer's idle heartbeats said it had sent them."""
    px = _CutProxy(server.port)
    wop = wn.NatsOpenerBuilder().build(servers=server.url)
    rop = wn.NatsOpenerBuilder().build(servers=px.url, reconnect_time_wait=0.1)
    try:
        name = f"ch-{uuid.uuid4().hex[:8]}"
        w = wop.open(chan(name=name))
        w.append(msg(0))
        s = rop.open(chan(1, AccessMode.RO, name=name)).read(ReadOption("r"))
        assert drain(s, 1) == [0]
        px.swallow = True
        w.append(msg(1))
        deadline = time.monotonic() + 10
        while b"p1" not in px.swallowed and time.monotonic() < deadline:  # the server sent it to the reader
            time.sleep(0.01)
        px.cut()
        px.swallow = False
        assert s.recv(30).properties["i"] == "1"  # type: ignore[attr-defined]
    finally:
        rop.close()
        wop.close()
        px.close()


def test_an_undecodable_message_ends_the_scanner_instead_of_a_read_retried_for_ever(server: NatsServer) -> None:
    """A message on the channel's subject that is not the WAL's (a malformed reserved header, published behind the
    WAL's back) raised WALIOError, which the adaptor takes for a failure that may pass: it read the message again,
    with a backoff, for ever, and the reader only timed out. It ends the scanner, loudly, as localfs's damage does."""
    tag = uuid.uuid4().hex[:8]
    op = registry.must_get_builder("nats").build(servers=server.url, stream_prefix=f"U{tag}_", subject_prefix=f"u{tag}")
    with op:
        op.open(chan(name="c")).close()
        raw = op._impls  # type: ignore[attr-defined]
        subject = channel_names("c", f"U{tag}_", f"u{tag}").data_subject
        raw.lt.run(raw.js.publish(subject, b"x", headers={"_tt": "not_an_int"}), 10)
        with op.open(chan(1, AccessMode.RO, name="c")) as ro, ro.read(WALReadOption(DeliverPolicy.all())) as s:
            with pytest.raises(InvalidMessageError, match="undecodable"):
                while True:
                    s.recv(timeout=10)


def test_a_backend_scanner_dropped_without_close_releases_its_consumer(opener: wn.NatsOpener) -> None:
    """A bare ``NatsScanner`` (no adaptor) dropped without ``close()`` was held by its WAL's set and by its fetch
    task, so its consumer, subscription and task lived until the WAL closed: a program reading now and then leaked
    one consumer per read. The scanner collected unclosed now closes its reader."""
    import gc

    w = opener.open(chan())
    w.append(msg(0))
    names = w._names  # type: ignore[attr-defined]

    def consumers() -> int:
        return int(opener.run_api(opener.js.stream_info(names.stream), "info").state.consumer_count)

    s = w.read(ReadOption("dropped"))
    kept = w.read(ReadOption("kept"))
    assert drain(s, 1) == drain(kept, 1) == [0]  # both consumers are made
    assert consumers() == 2
    del s
    gc.collect()
    deadline = time.monotonic() + 20
    while consumers() != 1:
        assert time.monotonic() < deadline, "the dropped scanner's consumer is still there"
        time.sleep(0.1)
    w.append(msg(1))
    assert drain(kept, 1) == [1]  # the other scanner goes on
    w.close()
    assert kept.done().is_set()

def test_a_scanner_closed_while_its_consumer_is_being_made_deletes_it(opener: wn.NatsOpener) -> None:
    """A scanner closed (or dropped: its finalizer closes it) right after ``read()`` cancelled its fetch task while
    the consumer's creation was in flight: the server made the consumer all the same, and nothing deleted it (its
    ``inactive_threshold``, 30 s, did). The consumer made after the close is now deleted too."""
    w = opener.open(chan())
    w.append(msg(0))
    names = w._names  # type: ignore[attr-defined]

    def consumers() -> int:
        return int(opener.run_api(opener.js.stream_info(names.stream), "info").state.consumer_count)

    for i in range(10):
        w.read(ReadOption(f"r{i}")).close()
    for i in range(10):
        w.read(ReadOption(f"d{i}"))  # dropped at once
    deadline = time.monotonic() + 15  # well below the consumers' inactive_threshold
    while consumers():
        assert time.monotonic() < deadline, f"{consumers()} consumers of closed scanners left"
        time.sleep(0.2)


def test_deleted_stream_ends_scanners_with_an_error(opener: wn.NatsOpener) -> None:
    w = opener.open(chan())
    w.append(msg(0))
    s = w.read(ReadOption("r"))
    assert drain(s, 1) == [0]
    opener.lt.run(opener.js.delete_stream(w._names.stream), 10)  # type: ignore[attr-defined]
    assert s.done().wait(15)
    assert isinstance(s.error(), WALIOError)
    with pytest.raises(WALIOError, match="gone"):
        s.recv(1.0)


@pytest.mark.slow
def test_credentials_are_passed_through(tmp_path: Path) -> None:
    s = NatsServer(tmp_path, extra_conf='authorization { user: "walu", password: "s3cret" }')
    try:
        s.start()
        s.wait_ready()
        # The error names the cause, not a timeout. The server sends its -ERR and closes; on a loaded machine the
        # reset can reach the client before it reads the -ERR (a reset drops unread data), so a few tries.
        seen = []
        for _ in range(5):
            with pytest.raises(WALIOError, match="cannot connect") as ei:
                wn.NatsOpenerBuilder().build(
                    servers=s.url, user="walu", password="wrong", connect_timeout=0.5, max_reconnect_attempts=1
                )
            seen.append(str(ei.value))
            if "Authorization Violation" in seen[-1]:
                break
        assert "Authorization Violation" in seen[-1], seen
        with wn.NatsOpenerBuilder().build(servers=s.url, user="walu", password="s3cret") as op:
            w = op.open(chan())
            w.append(msg(0))
            with w.read(ReadOption("r")) as sc:
                assert drain(sc, 1) == [0]
    finally:
        s.kill()


def test_an_open_the_account_may_not_make_names_the_permission(tmp_path: Path) -> None:
    """An account without publish rights on the term bucket (``$KV.WAL_terms.>``): a writer's open on a stream with
    ``max_age`` failed with a bare "TimeoutError: nats: timeout", as the server answers such a publish only with a
    permission violation, on the connection's error callback. The error now names the refusal."""
    conf = (
        'authorization { users: [ { user: "walu", password: "s3cret", '
        'permissions: { publish: { deny: ["$KV.WAL_terms.>"] } } } ] }'
    )
    s = NatsServer(tmp_path, extra_conf=conf)
    try:
        s.start()
        s.wait_ready()
        with wn.NatsOpenerBuilder().build(servers=s.url, user="walu", password="s3cret", max_age=5.0,
                                          duplicate_window=0.5, request_timeout=1.0) as op:
            with pytest.raises(WALIOError, match=r"(?i)permissions violation for publish to \"\$KV\.WAL_terms\."):
                op.open(chan())
        with wn.NatsOpenerBuilder().build(servers=s.url, user="walu", password="s3cret") as op:
            op.open(chan()).append(msg(0))  # without max_age, no floor: the account is enough
    finally:
        s.kill()


def test_resync_fence_whose_ack_was_lost_does_not_fence_the_writer_itself(opener: wn.NatsOpener) -> None:
    """The fence record that restarts a broken chain is stored but its ack is lost (timeout, connection drop): the
    next re-fence finds the writer's own record at an unexpected sequence. That is not a newer writer: the append
    after it must succeed, not raise FencedError ("a newer writer (term 1) ... this writer (term 1) is fenced")."""
    import nats.errors

    w = opener.open(chan())
    w.append(msg(0))
    pub = w._pub  # type: ignore[attr-defined]
    opener.lt.run(opener.js.publish(w._names.data_subject, b"foreign"), 10)  # type: ignore[attr-defined]
    with pytest.raises(WALIOError, match="predecessor"):
        w.append(msg(1))  # the chain is broken: the next append re-fences
    real = pub._js.publish

    async def ack_lost(subject: str, payload: bytes = b"", **kw: object) -> object:
        await real(subject, payload, **kw)
        raise nats.errors.TimeoutError  # stored, but the writer never hears of it

    pub._js.publish = ack_lost
    try:
        with pytest.raises(WALIOError):
            w.append(msg(2))
    finally:
        pub._js.publish = real
    w.append_batch([msg(3), msg(4)])
    assert _first_payloads(w, 4) == [b"p0", b"foreign", b"p3", b"p4"]


def test_fence_check_of_replicated_streams_skips_the_writers_own_re_fence(opener: wn.NatsOpener) -> None:
    """Replicated streams check, before acknowledging, that no newer fence record follows the writer's. A re-fence
    of the same writer (restarting its chain after a failure in a concurrent append) stored while that check is
    under way is not a newer writer: the append is acknowledged, the writer is not fenced. Simulated on one server
    by taking the replicated path and storing the writer's own record just before the check reads."""
    from wal.walimpls.nats._headers import H_TERM, H_WRITER

    w = opener.open(chan())
    pub = w._pub  # type: ignore[attr-defined]
    pub._strict = False  # the replicated streams' chain: sequences only, plus the fence check
    w.append(msg(0))
    names = w._names  # type: ignore[attr-defined]
    real = pub._js.get_msg
    injected: list[int] = []

    async def get_msg(stream: str, **kw: object) -> object:
        if kw.get("next") and not injected:
            ack = await pub._js.publish(names.fence_subject, b"", headers={H_TERM: "1", H_WRITER: pub._writer})
            injected.append(int(ack.seq))
        return await real(stream, **kw)

    pub._js.get_msg = get_msg
    try:
        mid = w.append(msg(1))
    finally:
        pub._js.get_msg = real
    assert injected and mid.value < injected[0]
    assert pub._fenced is None


@pytest.mark.parametrize("how", ["tls:// URL", "tls_ca_file", "tls_hostname"])
def test_tls_asked_for_but_not_used_is_refused(server: NatsServer, how: str) -> None:
    """nats-py upgrades to TLS only when the server requires it: with TLS options (or a tls:// URL) against a server
    (or a man in the middle) that does not, it connected in plaintext and build() succeeded (review 11e)."""
    import ssl

    # max_reconnect_attempts=1: nats-py gives up after two refused tries (0, like -1, retries until our timeout)
    kw: dict[str, object] = {"connect_timeout": 2.0, "max_reconnect_attempts": 1}
    if how == "tls:// URL":
        kw["servers"] = server.url.replace("nats://", "tls://")
    elif how == "tls_hostname":  # the name to check the server's certificate against: it asks for TLS too
        kw["servers"] = server.url
        kw["tls_hostname"] = "localhost"
    else:
        kw["servers"] = server.url
        kw["tls_ca_file"] = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    with pytest.raises(WALIOError, match="did not require it"):
        wn.NatsOpenerBuilder().build(**kw)
    with wn.NatsOpenerBuilder().build(servers=server.url) as op:  # without TLS options, plaintext is what was asked
        op.open(chan()).close()


def test_tls_handshake_first_without_a_ca_file_is_used(server: NatsServer) -> None:
    """``tls_handshake_first=True`` reached nats-py only with a tls_ca_file or tls_cert_file: alone (the system's
    CAs) it was dropped, the client sent its CONNECT in plaintext, and build() refused that with advice to set
    tls_handshake_first=True. The TLS handshake now comes first: against this plaintext server it fails, before any
    NATS handshake."""
    with pytest.raises(WALIOError) as e:
        # after the failed handshake nats-py waits in its close and never tries again: build() ends at its timeout,
        # connect_timeout * 2 + 1 s (the handshake fails in milliseconds)
        wn.NatsOpenerBuilder().build(servers=server.url, tls_handshake_first=True, connect_timeout=0.5,
                                     max_reconnect_attempts=0)
    assert "did not require it" not in str(e.value), e.value


@pytest.mark.parametrize("creds", [{"user": "walu"}, {"password": "s3cret"},
                                   {"user": "walu", "password": "s3cret", "token": "t"}])
def test_credentials_nats_py_would_drop_are_refused_at_build(creds: dict[str, str]) -> None:
    """nats-py sends a user only with its password, and user/password rather than a token: the one left out went
    unsent without a word (the connect refused far from the mistake, or let in as someone else)."""
    with pytest.raises(InvalidArgumentError, match="user"):
        wn.NatsOpenerBuilder().build(servers="nats://127.0.0.1:1", **creds)


@pytest.mark.parametrize(
    "bad",
    [
        {"tls_handshake_first": "no"},  # bool("no") asked for TLS first
        {"tls_handshake_first": 0},
        {"max_bytes": -5},
    ],
    ids=["handshake-str", "handshake-int", "max_bytes-negative"],
)
def test_options_of_the_wrong_kind_are_refused_at_build(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
        wn.NatsOpenerBuilder().build(servers="nats://127.0.0.1:1", **bad)
