"""The nats backend on a 3-node JetStream cluster (replicas=3) on loopback: SIGKILL the stream leader during
appends; every acknowledged message is read back once and in order, appends resume after a short pause, and the
restarted node catches up."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _nats_server import NatsCluster, NatsServer, find_nats_server, nats_cluster

pytest.importorskip("nats")

import wal.walimpls.nats as wn
from wal import OpenOption, PChannelInfo
from wal.errors import WALError, WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.walimpls import ReadOption

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server binary not installed"),
    pytest.mark.slow,
    pytest.mark.timeout(240),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path) as c:
        yield c


def msg(i: int) -> MutableMessage:
    m = MutableMessage(message_type=MessageType.INSERT, payload=b"p%d" % i, properties={"i": str(i)}, vchannel="v")
    return m.with_time_tick(1000 + i)


def local_last_seq(s: NatsServer, stream: str) -> int:
    """The stream's last sequence in one node's own store (its monitoring endpoint)."""
    url = f"http://127.0.0.1:{s.http_port}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=2) as r:
        jsz: dict[str, Any] = json.load(r)
    for acc in jsz.get("account_details", []):
        for st in acc.get("stream_detail", []):
            if st["name"] == stream:
                return int(st["state"]["last_seq"])
    return -1


def leader_of(op: wn.NatsOpener, stream: str) -> str:
    info = op.lt.run(op.js.stream_info(stream), 10)
    return str(info.cluster.leader)


def test_sigkill_leader_during_appends(cluster: NatsCluster) -> None:
    op = wn.NatsOpenerBuilder().build(servers=cluster.urls, replicas=3, publish_timeout=1.0, append_timeout=60.0)
    try:
        w = op.open(OpenOption(PChannelInfo("replicated", 1)))
        stream = "WAL_replicated"
        tail = w.read(ReadOption("tail"))
        acked: list[int] = []
        ack_times: list[float] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def pump() -> None:
            i = 0
            while not stop.is_set():
                try:
                    if i % 100 < 50:  # pipelined batches and single appends, interleaved
                        w.append_batch([msg(j) for j in range(i, i + 10)])
                        acked.extend(range(i, i + 10))
                        i += 10
                    else:
                        w.append(msg(i))
                        acked.append(i)
                        i += 1
                    ack_times.append(time.monotonic())
                except WALError as e:
                    failures.append(e)
                    i += 10

        t = threading.Thread(target=pump)
        t.start()
        time.sleep(2.0)
        victim = next(s for s in cluster.servers if s.name == leader_of(op, stream))
        n_before = len(acked)
        killed_at = time.monotonic()
        victim.kill(signal.SIGKILL)
        # appends continue after a short pause (a new leader is elected)
        deadline = time.monotonic() + 30
        while len(acked) < n_before + 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acked) >= n_before + 200, "appends did not resume after the leader was killed"
        resumed = [x for x in ack_times if x > killed_at]
        gaps = [b - a for a, b in zip([killed_at, *resumed], resumed, strict=False)]
        print(f"acked before kill: {n_before}; longest pause after kill: {max(gaps):.2f}s")
        victim.start()
        victim.wait_ready(60, jetstream=False)
        time.sleep(1.0)
        stop.set()
        t.join(90)
        assert not t.is_alive()
        assert not failures, failures
        # every acknowledged message, once, in order (from a fresh scanner and from the one that tailed throughout)
        with w.read(ReadOption("all")) as s:
            got = _drain(s, len(acked))
            with pytest.raises(WALTimeoutError):
                s.recv(1.0)
        assert got == acked
        assert _drain(tail, len(acked)) == acked
        tail.close()
        # the restarted node catches up
        leader_last = op.lt.run(op.js.stream_info(stream), 10).state.last_seq
        deadline = time.monotonic() + 60
        while local_last_seq(victim, stream) != leader_last and time.monotonic() < deadline:
            time.sleep(0.2)
        assert local_last_seq(victim, stream) == leader_last
    finally:
        op.close()


def _drain(s: Any, n: int, timeout: float = 60.0) -> list[int]:
    out: list[int] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        try:
            out += [int(m.properties["i"]) for m in s.recv_batch(n - len(out), 2.0)]
        except WALTimeoutError:
            pass
    return out


def test_fencing_on_replicated_stream(cluster: NatsCluster) -> None:
    """replicas=3 (sequence-only chain, fence checked after each acknowledgement): an older writer pipelining
    while a newer one opens ends with FencedError; nothing of it is delivered after the newer writer's records."""
    op = wn.NatsOpenerBuilder().build(servers=cluster.urls, replicas=3, publish_timeout=1.0, append_timeout=30.0)
    try:
        old = op.open(OpenOption(PChannelInfo("fenced", 1)))
        acked: list[int] = []
        errors: list[BaseException] = []

        def pump() -> None:
            # A broken chain surfaces as a retryable WALIOError (the writer resyncs); the old writer retries like a
            # real client would, and must end with FencedError once the newer fence is visible.
            from wal.errors import WALIOError

            i = 0
            while True:
                try:
                    old.append_batch([msg(j) for j in range(i, i + 50)])
                except WALIOError as e:
                    errors.append(e)
                    if len(errors) > 20:
                        return
                    i += 50  # that batch is not acknowledged: never expected back
                    continue
                except BaseException as e:
                    errors.append(e)
                    return
                acked.extend(range(i, i + 50))
                i += 50

        t = threading.Thread(target=pump)
        t.start()
        time.sleep(1.0)
        new = op.open(OpenOption(PChannelInfo("fenced", 2)))
        new.append(msg(-1))
        t.join(30)
        assert not t.is_alive()
        from wal.errors import FencedError

        assert isinstance(errors[-1], FencedError), errors
        with new.read(ReadOption("r")) as s:
            got = _drain(s, len(acked) + 1)
            while got[-1] != -1:
                got += _drain(s, 1)
            with pytest.raises(WALTimeoutError):
                s.recv(0.5)
        # every acknowledged message in order (plus maybe stored parts of failed batches), then the new writer
        body = got[:-1]
        assert body == sorted(set(body)), "old writer's messages out of order or duplicated"
        assert set(acked) <= set(body), "an acknowledged message is missing"
        assert got[-1] == -1
    finally:
        op.close()


def test_a_replicated_max_age_stream_keeps_its_term(cluster: NatsCluster) -> None:
    """replicas=3 and ``max_age``, on a stream made by an earlier version: the writer's open keeps its term (in a
    replicated KV bucket), and a lower term is refused once the data is gone."""
    import nats.js.api as api
    import nats.js.errors

    from wal.errors import FencedError, WALIOError

    op = wn.NatsOpenerBuilder().build(servers=cluster.urls, replicas=3, publish_timeout=1.0, append_timeout=30.0)
    try:
        old = api.StreamConfig(
            name="WAL_aged", subjects=["wal.aged.m", "wal.aged.t"], storage=api.StorageType.FILE, num_replicas=3,
            duplicate_window=0.5, max_age=1.0, metadata={"wal_channel": "aged"},
        )
        op.lt.run(op.js.add_stream(old), 30)
        w = op.open(OpenOption(PChannelInfo("aged", 5)))
        w.append(msg(0))
        deadline = time.monotonic() + 30
        while True:  # until max_age deleted the data message
            try:
                op.run_api(op.js.get_msg("WAL_aged", subject="wal.aged.m"), "last data message")
            except WALIOError as e:
                if isinstance(e.__cause__, nats.js.errors.NotFoundError):
                    break
                raise
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(FencedError, match="owned by term 5"):
            op.open(OpenOption(PChannelInfo("aged", 1)))
        w.append(msg(1))
    finally:
        op.close()

def test_a_stream_a_reader_made_survives_its_leader_lost_right_after_the_writer_opened(cluster: NatsCluster) -> None:
    """A reader made the stream first (one replica); the writer's open gives it 3 and waited until "every replica is
    current", which the first stream infos after the update (the old group, no replicas) said at once. The leader
    killed right after the open left the stream without one: appends failed for over 40 s."""
    from wal import AccessMode

    with wn.NatsOpenerBuilder().build(servers=cluster.urls) as r:
        r.open(OpenOption(PChannelInfo("prov", 1, AccessMode.RO)))
    op = wn.NatsOpenerBuilder().build(servers=cluster.urls, replicas=3, request_timeout=2.0, publish_timeout=1.0,
                                      append_timeout=20.0)
    try:
        w = op.open(OpenOption(PChannelInfo("prov", 1)))
        host = leader_of(op, "WAL_prov")
        w.append(msg(0))
        next(s for s in cluster.servers if s.name == host).kill()
        deadline = time.monotonic() + 40
        while True:
            try:
                w.append(msg(1))
                break
            except WALError:
                assert time.monotonic() < deadline, "the stream has no leader"
    finally:
        op.close()


def test_the_term_bucket_gets_the_replicas_of_a_replicated_channel(cluster: NatsCluster) -> None:
    """One term bucket serves every channel of a prefix, and the first writer that needs it made it with its own
    stream's replicas: after a single-replica channel, a replicas=3 channel's floor had one copy, and with that node
    down no writer could open the channel (``WALIOError``, a timeout) though its stream had a quorum."""
    with wn.NatsOpenerBuilder().build(servers=cluster.urls, max_age=60.0, duplicate_window=1.0) as op1:
        op1.open(OpenOption(PChannelInfo("single", 1)))
    op = wn.NatsOpenerBuilder().build(servers=cluster.urls, replicas=3, max_age=60.0, duplicate_window=1.0,
                                      request_timeout=2.0, publish_timeout=1.0, append_timeout=30.0)
    try:
        host = leader_of(op, "KV_WAL_terms")  # the bucket's only node, before the fix
        w1 = op.open(OpenOption(PChannelInfo("triple", 1)))
        w1.append(msg(0))
        assert op.lt.run(op.js.stream_info("KV_WAL_terms"), 10).config.num_replicas == 3
        node = next(s for s in cluster.servers if s.name == host)
        node.kill()
        deadline = time.monotonic() + 60
        while True:  # a leader election may be under way: the open is retried as a caller would
            try:
                w2 = op.open(OpenOption(PChannelInfo("triple", 2)))
                break
            except WALError:
                assert time.monotonic() < deadline, "no writer could open the replicated channel"
                time.sleep(0.5)
        w2.append(msg(1))
    finally:
        op.close()


def test_conformance_kit_on_replicated_streams(cluster: NatsCluster) -> None:
    from wal.helper.conformance import WALImplsConformance

    WALImplsConformance(
        wn.NatsOpenerBuilder(), message_count=100, build_options={"servers": cluster.urls, "replicas": 3}
    ).run()
