"""Appends through the public API (sync="always" unless said), 100 B records unless said."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import _bench_wal as walb
import pytest
from _bench_env import BIG_RECORD_BYTES, record

THREADS = 32
APPENDS_PER_THREAD = 16
PIPELINE = 1000


@pytest.fixture
def wal(bench_root: str) -> Iterator[Any]:
    with walb.full_wal(bench_root, sync="always") as w:
        yield w


@pytest.mark.benchmark(group="append-durable")
def test_durable_single_append(benchmark: Any, wal: Any) -> None:
    """One ``append`` waiting for its own fdatasync: the latency a caller sees."""
    msg = walb._msg
    r = benchmark(lambda: wal.append(msg(record(0))))
    assert r.message_id is not None


@pytest.mark.benchmark(group="append-durable")
def test_group_commit_32_threads(benchmark: Any, wal: Any) -> None:
    """32 threads each appending APPENDS_PER_THREAD in a row; group commit should share fdatasyncs between them.
    A round is THREADS * APPENDS_PER_THREAD appends (see extra_info).
    """
    msg = walb._msg

    def worker() -> int:
        for i in range(APPENDS_PER_THREAD):
            wal.append(msg(record(i)))
        return APPENDS_PER_THREAD

    with ThreadPoolExecutor(THREADS, thread_name_prefix="bench-append") as pool:
        def round_() -> int:
            fs = [pool.submit(worker) for _ in range(THREADS)]
            wait(fs)
            return sum(f.result() for f in fs)

        benchmark.extra_info["appends_per_round"] = THREADS * APPENDS_PER_THREAD
        n = benchmark.pedantic(round_, rounds=20, warmup_rounds=1)
    assert n == THREADS * APPENDS_PER_THREAD


@pytest.mark.benchmark(group="append-pipelined")
def test_pipelined_append_async(benchmark: Any, wal: Any) -> None:
    """PIPELINE ``append_async`` calls issued back to back, then every future awaited (a round)."""
    msg = walb._msg

    def round_() -> int:
        fs = [wal.append_async(msg(record(i))) for i in range(PIPELINE)]
        return len([f.result() for f in fs])

    benchmark.extra_info["appends_per_round"] = PIPELINE
    assert benchmark.pedantic(round_, rounds=20, warmup_rounds=1) == PIPELINE


@pytest.mark.benchmark(group="append-pipelined")
def test_append_messages_1000(benchmark: Any, wal: Any) -> None:
    """One ``append_messages`` of PIPELINE messages: one call, one group commit."""
    msg = walb._msg
    benchmark.extra_info["appends_per_round"] = PIPELINE
    rs = benchmark.pedantic(lambda: wal.append_messages([msg(record(i)) for i in range(PIPELINE)]),
                            rounds=20, warmup_rounds=1)
    assert len(rs) == PIPELINE


@pytest.mark.benchmark(group="append-pipelined")
def test_bare_append_batch_1000(benchmark: Any, bench_root: str) -> None:
    """The backend alone (no adaptor): ``WALImpls.append_batch`` of PIPELINE messages, time ticks stamped here."""
    msg = walb._msg
    clock = walb._Clock()
    with walb.bare_wal(bench_root, sync="always") as w:
        benchmark.extra_info["appends_per_round"] = PIPELINE
        ids = benchmark.pedantic(
            lambda: w.append_batch([msg(record(i)).with_time_tick(clock.next()) for i in range(PIPELINE)]),
            rounds=20, warmup_rounds=1)
    assert len(ids) == PIPELINE


@pytest.mark.benchmark(group="append-64k")
def test_append_64k(benchmark: Any, wal: Any) -> None:
    """One 64 KiB ``append`` waiting for its fdatasync."""
    payload = record(0, BIG_RECORD_BYTES)
    msg = walb._msg
    r = benchmark(lambda: wal.append(msg(payload)))
    assert r.message_id is not None
