"""The adaptor's end-to-end invariant tests (tests/test_e2e_invariants.py), run on the nats backend against one
private nats-server; plus a full-WAL round trip. Each test gets its own stream and subject prefix."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _nats_server import NatsServer, find_nats_server

pytest.importorskip("nats")

import test_e2e_invariants as e2e

import wal.walimpls.nats  # noqa: F401  (registers "nats" even when the package is not installed)
from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server binary not installed"),
    pytest.mark.slow,
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    s = NatsServer(Path(tmp_path_factory.mktemp("nats-e2e")))
    try:
        s.start()
        s.wait_ready()
        yield s
    finally:
        s.kill()


@pytest.fixture
def make_opener(server: NatsServer) -> Iterator[Callable[..., Any]]:
    tag = uuid.uuid4().hex[:8]
    openers: list[Any] = []

    def make(**opts: Any) -> Any:
        opts.setdefault("servers", server.url)
        opts.setdefault("stream_prefix", f"E{tag}_")
        opts.setdefault("subject_prefix", f"e{tag}")
        op = registry.must_get_builder("nats").build(**opts)
        openers.append(op)
        return op

    yield make
    for op in openers:
        op.close()


# The adaptor's end-to-end tests, collected here so that they use this module's make_opener (nats).
for _name in (
    "test_resume_from_last_confirmed",
    "test_fence_tick_and_time_ticks_across_terms",
    "test_latest_and_vchannel_and_type_filters",
    "test_mvcc_and_idle_wal_does_not_grow",
    "test_async_for",
    "test_txn_context_manager_rolls_back_on_error",
):
    if hasattr(e2e, _name):
        globals()[_name] = getattr(e2e, _name)


def test_parallel_channels_terms_txns_and_stalled_readers(make_opener: Callable[..., Any]) -> None:
    e2e.test_parallel_channels_terms_txns_and_stalled_readers(make_opener)


def test_full_wal_round_trip(make_opener: Callable[..., Any]) -> None:
    """Append through the adaptor (sync, async, batch, txn), reopen at a higher term, read everything back."""
    op = make_opener()
    with op.open(OpenOption(PChannelInfo("rt", 1))) as w:
        assert w.wal_name == "nats"
        r1 = w.append(MutableMessage(MessageType.INSERT, b"a", {"k": "a"}, vchannel="v1"))
        futs = [
            w.append_async(MutableMessage(MessageType.INSERT, b"%d" % i, {"k": str(i)}, vchannel="v1"))
            for i in range(50)
        ]
        rs = [f.result(30) for f in futs]
        rs += w.append_messages([MutableMessage(MessageType.DELETE, b"d", {"k": "d"}, vchannel="v1")])
        with w.begin_txn(vchannel="v1", keepalive=10.0) as txn:
            txn.append(MutableMessage(MessageType.INSERT, b"t1", {"k": "t1"}, vchannel="v1"))
            txn.append(MutableMessage(MessageType.INSERT, b"t2", {"k": "t2"}, vchannel="v1"))
        ticks = [r1.time_tick] + [r.time_tick for r in rs]
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    with op.open(OpenOption(PChannelInfo("rt", 2))) as w2, w2.read(ReadOption(DeliverPolicy.all(), vchannel="v1")) as s:
        keys: list[Any] = []
        while len(keys) < 53:
            m = s.recv(10)
            if m.message_type is MessageType.TIME_TICK:
                continue
            if m.message_type is MessageType.TXN:
                keys.append(tuple(x.properties["k"] for x in m.messages))
            else:
                keys.append(m.properties["k"])
            assert m.message_id.wal_name == "nats"
        assert keys == ["a", *[str(i) for i in range(50)], "d", ("t1", "t2")]
