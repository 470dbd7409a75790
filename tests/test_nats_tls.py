"""nats backend over TLS: a reconnect that reaches a server without TLS (review 11g).

A TCP proxy stands between the client and the servers: it first forwards to a server that requires TLS, then
(every connection dropped) to one that does not, as a man in the middle or a misconfigured node would.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _nats_server import NatsServer, find_nats_server, free_port

pytest.importorskip("nats")

import wal.walimpls.nats as wn
from wal import OpenOption, PChannelInfo
from wal.errors import WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.walimpls import ReadOption

pytestmark = [
    pytest.mark.skipif(find_nats_server() is None, reason="nats-server binary not installed"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (makes the certificates)"),
    pytest.mark.timeout(120),
]


def _certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=wal-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


class _Proxy:
    """Forwards 127.0.0.1:port to an upstream port; ``switch`` drops every connection and changes the upstream.
    ``received`` holds what clients sent to each upstream."""

    def __init__(self, upstream: int) -> None:
        self.port = free_port()
        self.upstream = upstream
        self.received: dict[int, bytes] = {}
        self._conns: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        for t in asyncio.all_tasks(self._loop):
            t.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        up = self.upstream
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", up)
        except OSError:
            cw.transport.abort()
            return
        self._conns += [cw, uw]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, record: bool) -> None:
            try:
                while b := await r.read(65536):
                    if record:
                        self.received[up] = self.received.get(up, b"") + b
                    w.write(b)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                for x in (cw, uw):
                    x.close()

        await asyncio.gather(pipe(cr, uw, True), pipe(ur, cw, False))

    def _call(self, fn: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait()

    def switch(self, upstream: int) -> None:
        def do() -> None:
            self.upstream = upstream
            for w in self._conns:
                w.close()
            self._conns.clear()

        self._call(do)

    def close(self) -> None:
        def do() -> None:
            assert self._server is not None
            self._server.close()
            for w in self._conns:
                w.close()
            self._loop.stop()

        self._call(do)
        self._thread.join()


@pytest.fixture
def tls_and_plain(tmp_path: Path) -> Iterator[tuple[NatsServer, NatsServer, Path]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = _certs(certs)
    tls = NatsServer(tmp_path, "tls", extra_conf=f'tls {{ cert_file: "{cert}", key_file: "{key}" }}')
    plain = NatsServer(tmp_path, "plain")
    try:
        for s in (tls, plain):
            s.start()
        for s in (tls, plain):
            s.wait_ready()
        yield tls, plain, ca
    finally:
        tls.kill()
        plain.kill()


def _msg(i: int) -> MutableMessage:
    m = MutableMessage(message_type=MessageType.INSERT, payload=b"secret-%d" % i, properties={}, vchannel="v1")
    m.with_time_tick(1000 + i)
    return m


def test_a_reconnect_to_a_server_without_tls_sends_nothing_and_waits_for_one_with_tls(
    tls_and_plain: tuple[NatsServer, NatsServer, Path],
) -> None:
    """nats-py upgrades to TLS only when the server requires it. The reconnect check ran in reconnected_cb, after
    nats-py had sent the CONNECT (credentials), replayed the subscriptions and flushed every publish buffered during
    the outage in plaintext (and read replies: a man in the middle could acknowledge appends that were never
    stored), then closed the connection for good: the WAL was dead even once a TLS server was back. The check now
    runs before the CONNECT: nothing is sent, and the client goes on trying until it reaches a server with TLS."""
    tls, plain, ca = tls_and_plain
    proxy = _Proxy(tls.port)
    try:
        op = wn.NatsOpenerBuilder().build(servers=f"nats://127.0.0.1:{proxy.port}", tls_ca_file=str(ca),
                                          publish_timeout=0.5, append_timeout=2.0)
        try:
            w = op.open(OpenOption(PChannelInfo(f"ch-{uuid.uuid4().hex[:8]}", 1)))
            first = w.append(_msg(1))
            proxy.switch(plain.port)
            with pytest.raises(WALTimeoutError):  # no server with TLS to reach: as with an unreachable cluster
                w.append(_msg(2))
            assert b"CONNECT" not in proxy.received.get(plain.port, b"")
            assert b"secret-2" not in proxy.received.get(plain.port, b"")
            proxy.switch(tls.port)  # a server with TLS again: the same connection goes on
            last = w.append(_msg(3))
            assert not op.nc.is_closed
            got: list[bytes] = []
            with w.read(ReadOption("r", DeliverPolicy.start_from(first))) as s:
                while not got or got[-1] != b"secret-3":
                    got += [m.payload for m in s.recv_batch(3, 10.0)]
            # message 2 timed out: stored or not, as with any remote log (its buffered publish may go out at the
            # reconnect), never twice and never after 3
            assert got in ([b"secret-1", b"secret-3"], [b"secret-1", b"secret-2", b"secret-3"]), got
            assert last > first
            w.close()
        finally:
            op.close()
    finally:
        proxy.close()
