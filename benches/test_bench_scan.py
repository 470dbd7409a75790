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
