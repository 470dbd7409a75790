"""Appends through the public API (sync="always" unless said), 100 B records unless said."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
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


# -- CPU of the append path: sync="never", so the disk is out of the picture ---------------------------------------
@pytest.fixture
def wal_nosync(bench_root: str) -> Iterator[Any]:
    with walb.full_wal(bench_root, sync="never") as w:
        yield w


@pytest.mark.benchmark(group="append-cpu")
def test_cpu_single_append(benchmark: Any, wal_nosync: Any) -> None:
    """One synchronous ``append`` without fdatasync: the adaptor's whole per-append path (inline dispatcher run,
    interceptor chain, per-batch time tick into the write-ahead buffer) plus the backend's write. Compare with
    ``test_cpu_bare_single_append``: the difference is what the adaptor costs per synchronous append.
    """
    msg = walb._msg
    r = benchmark(lambda: wal_nosync.append(msg(record(0))))
    assert r.message_id is not None


@pytest.mark.benchmark(group="append-cpu")
def test_cpu_bare_single_append(benchmark: Any, bench_root: str) -> None:
    """The backend's ``append`` alone, sync="never" (time ticks stamped here)."""
    msg = walb._msg
    clock = walb._Clock()
    with walb.bare_wal(bench_root, sync="never") as w:
        mid = benchmark(lambda: w.append(msg(record(0)).with_time_tick(clock.next())))
    assert mid is not None


@pytest.mark.benchmark(group="append-cpu")
def test_cpu_pipelined_append_async(benchmark: Any, wal_nosync: Any) -> None:
    """PIPELINE ``append_async`` calls then every result, sync="never": the per-message cost of the pipelined
    path (future, queue entry, batch through the chain, write-ahead buffer, settling) without the disk.
    """
    msg = walb._msg

    def round_() -> int:
        fs = [wal_nosync.append_async(msg(record(i))) for i in range(PIPELINE)]
        return len([f.result() for f in fs])

    benchmark.extra_info["appends_per_round"] = PIPELINE
    assert benchmark.pedantic(round_, rounds=20, warmup_rounds=1) == PIPELINE


OPEN_TXNS = 10_000


@pytest.mark.benchmark(group="append-cpu")
def test_cpu_single_append_beside_open_txns(benchmark: Any, wal_nosync: Any) -> None:
    """``test_cpu_single_append`` with OPEN_TXNS transactions begun and left open (the default 10 s keepalive
    outlasts the run). The txn cleanup after each batch is O(log n) in the open txns, so this should read close to
    the run without them; before session 14 it read ~700x slower (every open txn was looked at after each batch).
    """
    from wal.message import MessageType, MutableMessage

    for i in range(OPEN_TXNS):
        wal_nosync.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel=f"t{i}"), timeout=60)
    msg = walb._msg
    r = benchmark(lambda: wal_nosync.append(msg(record(0))))
    assert r.message_id is not None


@pytest.mark.benchmark(group="append-floor")
def test_floor_messages_and_futures(benchmark: Any) -> None:
    """A floor for pipelined appends in pure Python: only building PIPELINE ``MutableMessage`` objects and a
    ``concurrent.futures.Future`` for each, nothing appended. No append path can beat this loop.
    """
    msg = walb._msg

    def round_() -> int:
        return len([(msg(record(i)), Future()) for i in range(PIPELINE)])

    benchmark.extra_info["appends_per_round"] = PIPELINE
    assert benchmark.pedantic(round_, rounds=20, warmup_rounds=1) == PIPELINE


def _wab_and_messages(n: int) -> tuple[Any, list[Any]]:
    """A write-ahead buffer and ``n`` one-message batches for it (what ``n`` synchronous appends hand over)."""
    from wal.message import MessageType, MutableMessage
    from wal.utility import WriteAheadBuffer
    from wal.walimpls.localfs import LocalFSMessageID

    first = MutableMessage(MessageType.TIME_TICK, b"").with_time_tick(1).with_last_confirmed_use_message_id()
    wab = WriteAheadBuffer("bench", 64 << 20, 60.0, first.into_immutable(LocalFSMessageID(1)))
    msgs = [
        walb._msg(record(i)).with_time_tick(2 * i + 2).into_immutable(LocalFSMessageID(i + 2)) for i in range(n)
    ]
    return wab, msgs


@pytest.mark.benchmark(group="append-cpu")
@pytest.mark.parametrize("how", ["batch_tick", "append"])
def test_cpu_per_batch_tick_into_buffer(benchmark: Any, how: str) -> None:
    """PIPELINE one-message batches into the write-ahead buffer with their not-persisted tick: ``batch_tick`` is
    the append path's (``append_batch_tick``: the tick kept as fields, the messages queued when read), ``append``
    the general one (a tick message built and queued with its messages, eviction checked, per batch).
    """
    from wal.message import ImmutableMessage, MessageType
    from wal.walimpls.localfs import LocalFSMessageID

    lc = LocalFSMessageID(1)

    def setup() -> tuple[tuple[Any, list[Any]], dict[str, Any]]:
        return _wab_and_messages(PIPELINE), {}

    def batch_tick(wab: Any, msgs: list[Any]) -> int:
        for m in msgs:
            wab.append_batch_tick([m], m.time_tick + 1, lc)
        return len(wab)

    def append(wab: Any, msgs: list[Any]) -> int:
        for m in msgs:
            tt = m.time_tick + 1
            wab.append([m], ImmutableMessage(message_id=lc, message_type=MessageType.TIME_TICK, payload=b"",
                                             time_tick=tt, last_confirmed_message_id=lc, not_persisted=True))
        return len(wab)

    benchmark.extra_info["batches_per_round"] = PIPELINE
    n = benchmark.pedantic(batch_tick if how == "batch_tick" else append, setup=setup, rounds=30)
    assert n == PIPELINE + 1  # every message queued (the first tick stays)
