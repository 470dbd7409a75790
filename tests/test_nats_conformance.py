"""The backend conformance kit (wal.helper.conformance) against the nats backend and one private nats-server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _nats_server import NatsServer, find_nats_server

pytest.importorskip("nats")

import wal.walimpls.nats as wn
from wal.helper.conformance import WALImplsConformance

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server binary not installed"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    s = NatsServer(Path(tmp_path_factory.mktemp("nats-conf")))
    try:
        s.start()
        s.wait_ready()
        yield s
    finally:
        s.kill()


def test_conformance_kit_passes(server: NatsServer) -> None:
    tag = uuid.uuid4().hex[:8]
    WALImplsConformance(
        wn.NatsOpenerBuilder(),
        message_count=100,
        build_options={"servers": server.url, "stream_prefix": f"C{tag}_", "subject_prefix": f"c{tag}"},
    ).run()


@pytest.mark.slow
def test_conformance_kit_passes_with_more_messages(server: NatsServer) -> None:
    tag = uuid.uuid4().hex[:8]
    WALImplsConformance(
        wn.NatsOpenerBuilder(),
        message_count=1000,
        build_options={"servers": server.url, "stream_prefix": f"D{tag}_", "subject_prefix": f"d{tag}"},
        latest_quiet_seconds=0.3,  # the test above keeps the kit's 1 s; this one is for the volume
    ).run()
