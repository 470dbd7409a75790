"""``bench``: a short run of the main scenarios on this machine, through the public API, on a temporary directory.

For comparisons with other logs and the full method see ``benches/`` and ``docs/BENCHMARKS.md``; this command is
the quick "what does my disk give" check.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from .. import registry
from .._interfaces import WAL
from .._types import AccessMode, AppendResult, OpenOption, PChannelInfo, ReadOption
from ..errors import WALTimeoutError
from ..message import MessageType, MutableMessage
from ..options import DeliverPolicy
from ._common import EXIT_CODES_HELP, channel_name, format_table, percentile

__all__ = ["bench"]

WINDOW = 1024  # append_async futures in flight before the producer waits for the oldest
THREADS = 32


@dataclass
class Result:
    scenario: str
    ops: int
    seconds: float
    payload_bytes: int
    latencies: list[float] | None  # seconds per op, None when not measured

    def row(self) -> tuple[str, ...]:
        rate = self.ops / self.seconds if self.seconds > 0 else 0.0
        mbps = rate * self.payload_bytes / 1e6
        lat = sorted(self.latencies) if self.latencies else []

        def ms(q: float) -> str:
            return f"{percentile(lat, q) * 1000:.3f}" if lat else "-"

        return (self.scenario, str(self.ops), f"{self.seconds:.2f}", f"{rate:,.0f}", f"{mbps:.2f}", ms(0.5), ms(0.99))


@contextmanager
def _wal(root: str, channel: str, **options: Any) -> Iterator[WAL]:
    opener = registry.must_get_builder("localfs").build(root=root, **options)
    try:
        with opener.open(OpenOption(channel=PChannelInfo(channel, 1))) as w:
            yield w
    finally:
        opener.close()


def _msg(payload: bytes) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, payload, None, "v1")


def durable_single(root: str, channel: str, n: int, payload: bytes) -> Result:
    lat: list[float] = []
    with _wal(root, f"{channel}-single") as w:
        w.append(_msg(payload))  # warm-up: first segment, first tick
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            w.append(_msg(payload))
            lat.append(time.perf_counter() - s)
        secs = time.perf_counter() - t0
    return Result("durable append (1 thread)", n, secs, len(payload), lat)


def _latency_recorder(into: list[float], start: float) -> Callable[[Future[AppendResult]], None]:
    def done(_f: Future[AppendResult]) -> None:
        into.append(time.perf_counter() - start)

    return done


def pipelined(root: str, channel: str, n: int, payload: bytes) -> Result:
    lat: list[float] = []
    with _wal(root, f"{channel}-pipelined") as w:
        w.append(_msg(payload))
        inflight: deque[Future[AppendResult]] = deque()
        t0 = time.perf_counter()
        for _ in range(n):
            if len(inflight) >= WINDOW:
                inflight.popleft().result()
            start = time.perf_counter()
            f = w.append_async(_msg(payload))
            f.add_done_callback(_latency_recorder(lat, start))
            inflight.append(f)
        for f in inflight:
            f.result()
        secs = time.perf_counter() - t0
    return Result("append_async pipelined", n, secs, len(payload), lat)


def group_commit(root: str, channel: str, per_thread: int, payload: bytes) -> Result:
    lats: list[list[float]] = [[] for _ in range(THREADS)]
    with _wal(root, f"{channel}-group") as w:
        w.append(_msg(payload))
        go = threading.Barrier(THREADS + 1)

        def work(k: int) -> None:
            go.wait()
            mine = lats[k]
            for _ in range(per_thread):
                s = time.perf_counter()
                w.append(_msg(payload))
                mine.append(time.perf_counter() - s)

        ts = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
        for t in ts:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        secs = time.perf_counter() - t0
    return Result(f"group commit ({THREADS} threads)", THREADS * per_thread, secs, len(payload),
                  [x for lst in lats for x in lst])


def catch_up_scan(root: str, channel: str, n: int, payload: bytes) -> Result:
    with _wal(root, f"{channel}-scan", sync="never") as w:
        batch = [payload] * 1000
        left = n
        while left > 0:
            w.append_messages([_msg(p) for p in batch[: min(left, 1000)]])
            left -= min(left, 1000)
    # A fresh read-only opener: nothing cached, every message comes from the files.
    opener = registry.must_get_builder("localfs").build(root=root)
    try:
        ro = opener.open(OpenOption(channel=PChannelInfo(f"{channel}-scan", 0, AccessMode.RO)))
        got = 0
        t0 = time.perf_counter()
        with ro.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
            while got < n:
                try:
                    m = s.recv(timeout=5.0)
                except WALTimeoutError:
                    break
                if m.message_type is MessageType.INSERT:
                    got += 1
        secs = time.perf_counter() - t0
    finally:
        opener.close()
    return Result("catch-up scan (read-only)", got, secs, len(payload), None)


@click.command(epilog=EXIT_CODES_HELP, short_help="Measure the main scenarios on this machine.")
@click.option("--quick", is_flag=True, help="a smaller run (a few seconds).")
@click.option("--payload-bytes", type=click.IntRange(min=1, max=1 << 20), default=100, show_default=True,
              help="size of each message's payload.")
@click.option("--root", "--dir", "base", type=click.Path(file_okay=False, exists=True), default=None,
              help="where to make the run's temporary WAL root, removed after (default: the system's temp dir; "
                   "pick the disk to test). --dir is its older name.")
@click.option("--channel", default="bench", show_default=True, metavar="NAME", callback=channel_name,
              help="prefix of the scenarios' channel names (NAME-single, NAME-pipelined, NAME-group, NAME-scan).")
def bench(quick: bool, payload_bytes: int, base: str | None, channel: str) -> None:
    """A short run of the main scenarios on localfs (sync="always" unless said), with a table of results.

    \b
    Scenarios: durable single-thread append; pipelined append_async from one thread; 32 threads appending at
    once (group commit: one write and one fdatasync for many appends); catch-up scan of a written channel by a
    read-only WAL. Latency is per append, from call to acknowledgement. Numbers depend on the disk and on what
    else runs: compare runs on the same machine only.
    """
    payload = bytes(range(256)) * (payload_bytes // 256) + bytes(range(payload_bytes % 256))
    sizes = (500, 10_000, 50, 50_000) if quick else (3000, 50_000, 300, 200_000)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="wal-bench-", dir=base) as root:
        click.echo(f"localfs in {root}, {payload_bytes} B payloads{' (quick)' if quick else ''}", err=True)
        for fn, n in ((durable_single, sizes[0]), (pipelined, sizes[1]), (group_commit, sizes[2]),
                      (catch_up_scan, sizes[3])):
            r = fn(root, channel, n, payload)
            results.append(r)
            click.echo(f"  {r.scenario}: done", err=True)
    click.echo(format_table(("scenario", "ops", "seconds", "ops/s", "MB/s", "p50 ms", "p99 ms"),
                            [r.row() for r in results], right=(False, True, True, True, True, True, True)))
