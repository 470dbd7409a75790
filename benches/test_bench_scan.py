"""Catch-up scans of a log written once per session, from a freshly reopened WAL (cold adaptor cache)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import _bench_wal as walb
import pytest

from wal import ReadOption
from wal.options import DeliverPolicy
from wal.walimpls import ReadOption as ImplsReadOption


def _scan(recv_many: Any, rows: int) -> int:
    n = 0
    while n < rows:
        for m in recv_many():
            if m.message_type == walb.INSERT:
                n += 1
                m.payload  # delivered payloads are touched, as a consumer would
    return n


@pytest.fixture
def reopened(scan_log: tuple[str, int], terms: Iterator[int]) -> Iterator[tuple[Any, int]]:
    path, rows = scan_log
    with walb.full_wal(path, term=next(terms), sync="always") as w:
        yield w, rows


@pytest.mark.benchmark(group="scan")
def test_catchup_scan(benchmark: Any, reopened: tuple[Any, int]) -> None:
    """A scanner from the first message to the last of the log, through the public ``recv``."""
    w, rows = reopened

    def scan() -> int:
        with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
            return _scan(lambda: (s.recv(10.0),), rows)

    benchmark.extra_info["messages_per_round"] = rows
    assert benchmark.pedantic(scan, rounds=5, warmup_rounds=1) == rows


@pytest.mark.benchmark(group="scan")
def test_catchup_scan_bare(benchmark: Any, scan_log: tuple[str, int], terms: Iterator[int]) -> None:
    """The same scan through the backend alone: ``ScannerImpls.recv_batch``."""
    path, rows = scan_log
    with walb.bare_wal(path, term=next(terms), sync="always") as w:
        def scan() -> int:
            with w.read(ImplsReadOption(name="bench-bare", deliver_policy=DeliverPolicy.all())) as s:
                return _scan(lambda: s.recv_batch(1024, 10.0), rows)

        benchmark.extra_info["messages_per_round"] = rows
        assert benchmark.pedantic(scan, rounds=5, warmup_rounds=1) == rows


@pytest.mark.benchmark(group="scan")
def test_catchup_scan_floor(benchmark: Any, scan_log: tuple[str, int]) -> None:
    """The pure-Python floor under both scans: walk the log's map and check each record's CRC, no objects."""
    import _bench_scan_floor as floor

    path, rows = scan_log
    benchmark.extra_info["messages_per_round"] = rows
    assert benchmark.pedantic(lambda: floor.crc_walk(path, rows).ops, rounds=5, warmup_rounds=1) >= rows


@pytest.mark.benchmark(group="scan-reorder")
def test_reorder_push_many_in_order(benchmark: Any) -> None:
    """The adaptor's reorder buffer on a catch-up run in (tt, ID) order: one pass, appended whole, then released."""
    from wal.message import ImmutableMessage, MessageType
    from wal.utility import ReorderBuffer
    from wal.walimpls.localfs import LocalFSMessageID

    msgs = [
        ImmutableMessage(message_id=LocalFSMessageID(i + 1), message_type=MessageType.INSERT, payload=b"x" * 100,
                         time_tick=1000 + i)
        for i in range(10_000)
    ]

    def run() -> int:
        rb = ReorderBuffer()
        for k in range(0, len(msgs), 512):
            rb.push_many(msgs[k : k + 512])
        return len(rb.pop_until(1 << 62))

    benchmark.extra_info["messages_per_round"] = len(msgs)
    assert benchmark.pedantic(run, rounds=20, warmup_rounds=1) == len(msgs)
