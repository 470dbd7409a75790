"""Our WAL measured through its public API (``registry.must_get_builder``) and through the bare backend
(``registry.get_impls_builder``), on 100 B records unless said.

Every measurement opens its own channel in a fresh directory, builds its messages inside the timed loop (what a
user pays), and closes everything before returning.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from _bench_env import (
    BIG_RECORD_BYTES,
    RECORD_BYTES,
    Rate,
    fresh_dir,
    percentile,
    record,
    stamp_of,
    stamped_record,
    timed_loop,
)

from wal import AppendResult, OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage, compose_ts
from wal.options import DeliverPolicy
from wal.walimpls import ReadOption as ImplsReadOption

BACKEND = "localfs"
CHANNEL = "bench"
VCHANNEL = "v1"
WARMUP_OPS = 20
PIPELINE_WINDOW = 4096  # futures in flight before the producer waits for the oldest one
BATCH = 1000  # messages per append_batch / append_messages call (lmdb's peer commits per 1,000 puts)
INSERT = MessageType.INSERT


def _msg(payload: bytes) -> MutableMessage:
    return MutableMessage(INSERT, payload, None, VCHANNEL)


@contextmanager
def _channel(builder: Any, root: str, term: int, options: dict[str, Any]) -> Iterator[Any]:
    opener = builder.build(root=root, **options)
    try:
        w = opener.open(OpenOption(channel=PChannelInfo(CHANNEL, term)))
        try:
            yield w
        finally:
            w.close()
    finally:
        opener.close()


@contextmanager
def full_wal(root: str, term: int = 1, **options: Any) -> Iterator[Any]:
    """A WAL through the adaptor: what users get from ``registry.must_get_builder``."""
    with _channel(registry.must_get_builder(BACKEND), root, term, options) as w:
        yield w


@contextmanager
def bare_wal(root: str, term: int = 1, **options: Any) -> Iterator[Any]:
    """The backend alone, without the adaptor (no time ticks, interceptors, cache or futures)."""
    with _channel(registry.get_impls_builder(BACKEND), root, term, options) as w:
        yield w


class _Clock:
    """Strictly increasing hybrid time ticks for messages sent to the bare backend (the adaptor's job otherwise)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        tt = compose_ts(int(time.time() * 1000), 0)
        self._last = tt if tt > self._last else self._last + 1
        return self._last


# -- appends ----------------------------------------------------------------------------------------------------


def single_append(root: str, max_ops: int, max_seconds: float, size: int = RECORD_BYTES) -> Rate:
    """One thread, ``w.append`` after ``w.append``, sync="always": every call waits for its fdatasync."""
    with full_wal(fresh_dir(root, f"single-{size}"), sync="always") as w:
        append = w.append
        for i in range(WARMUP_OPS):
            append(_msg(record(i, size)))
        rate = timed_loop(lambda i: append(_msg(record(i, size))), max_ops, max_seconds)
    if size != RECORD_BYTES:
        rate.extra["MB_per_s"] = rate.value * size / 1e6
    return rate


def bare_single_append(root: str, max_ops: int, max_seconds: float) -> Rate:
    """The backend's own ``WALImpls.append``, one thread, sync="always" (time ticks stamped here)."""
    clock = _Clock()
    with bare_wal(fresh_dir(root, "bare-single"), sync="always") as w:
        append = w.append
        for i in range(WARMUP_OPS):
            append(_msg(record(i)).with_time_tick(clock.next()))
        return timed_loop(lambda i: append(_msg(record(i)).with_time_tick(clock.next())), max_ops, max_seconds)


def big_append(root: str, max_ops: int, max_seconds: float) -> Rate:
    return single_append(root, max_ops, max_seconds, BIG_RECORD_BYTES)


def big_append_reused(root: str, max_ops: int, max_seconds: float) -> Rate:
    """As :func:`big_append`, but every message carries the same payload object, as ``raw_64k`` writes one
    buffer. A diagnostic: the write-ahead cache keeps the newest 64 MiB of payloads alive for tailing readers, so
    a fresh 64 KiB payload per append lands on memory the process has not touched (16 page faults per append
    measured); with one payload object reused, what is left is the write path itself.
    """
    payload = record(0, BIG_RECORD_BYTES)
    with full_wal(fresh_dir(root, "single-64k-reused"), sync="always") as w:
        append = w.append
        for _ in range(WARMUP_OPS):
            append(_msg(payload))
        rate = timed_loop(lambda _i: append(_msg(payload)), max_ops, max_seconds)
    rate.extra["MB_per_s"] = rate.value * BIG_RECORD_BYTES / 1e6
    return rate


def threaded_append(root: str, threads: int, max_ops: int, max_seconds: float, bare: bool = False) -> Rate:
    """``threads`` threads each calling ``w.append`` in a loop, sync="always": group commit shares the syncs.
    ``bare``: the backend's ``WALImpls.append`` without the adaptor (time ticks stamped here, under a lock).
    """
    opened = bare_wal if bare else full_wal
    with opened(fresh_dir(root, f"threads-{threads}"), sync="always") as w:
        if bare:
            clock, tick_lock, impls_append = _Clock(), threading.Lock(), w.append

            def append(m: MutableMessage) -> object:
                with tick_lock:
                    m.with_time_tick(clock.next())
                return impls_append(m)
        else:
            append = w.append
        for i in range(WARMUP_OPS):
            append(_msg(record(i)))
        per_thread = max(1, max_ops // threads)
        start = threading.Barrier(threads + 1)
        counts = [0] * threads
        errors: list[BaseException] = []
        deadline = [0.0]

        def worker(k: int) -> None:
            clock = time.perf_counter
            start.wait()
            n = 0
            try:
                while n < per_thread and clock() < deadline[0]:
                    append(_msg(record(n)))
                    n += 1
            except BaseException as e:
                errors.append(e)
            counts[k] = n

        ts = [threading.Thread(target=worker, args=(k,), name=f"bench-append-{k}") for k in range(threads)]
        for t in ts:
            t.start()
        t0 = time.perf_counter()
        deadline[0] = t0 + max_seconds
        start.wait()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return Rate(sum(counts), dt, extra={"threads": float(threads)})


def pipeline_floor(max_ops: int, max_seconds: float) -> Rate:
    """The least any ``append_async`` costs in pure Python, nothing written: per record, the harness's payload,
    the ``MutableMessage`` a user builds and the ``concurrent.futures.Future`` the API returns, settled.
    Shown next to ``lmdb_batch1000`` (whose put is C): a pipelined append cannot beat this rate.
    """
    def op(_i: int) -> None:
        for k in range(1000):
            f: Future[int] = Future()
            _msg(record(k))
            f.set_result(k)

    rate = timed_loop(op, max(1, max_ops // 1000), max_seconds)
    return Rate(rate.ops * 1000, rate.seconds)


def pipelined_append(root: str, max_ops: int, max_seconds: float) -> Rate:
    """One thread issuing ``w.append_async`` without waiting (up to PIPELINE_WINDOW in flight), sync="always";
    the clock stops when the last future has resolved.
    """
    with full_wal(fresh_dir(root, "pipelined"), sync="always") as w:
        for f in [w.append_async(_msg(record(i))) for i in range(WARMUP_OPS)]:
            f.result()
        submit = w.append_async
        pending: deque[Future[AppendResult]] = deque()
        clock = time.perf_counter
        t0 = clock()
        deadline = t0 + max_seconds
        n = 0
        while n < max_ops:
            pending.append(submit(_msg(record(n))))
            n += 1
            if len(pending) > PIPELINE_WINDOW:
                pending.popleft().result()
            if n % 256 == 0 and clock() > deadline:
                break
        for f in pending:
            f.result()
        return Rate(n, clock() - t0)


def batched_append_full(root: str, max_ops: int, max_seconds: float) -> Rate:
    """``w.append_messages`` of BATCH messages at a time through the adaptor, sync="always"."""
    with full_wal(fresh_dir(root, "batched-full"), sync="always") as w:
        append_messages = w.append_messages
        append_messages([_msg(record(i)) for i in range(WARMUP_OPS)])
        return _batched(lambda base: append_messages([_msg(record(base + j)) for j in range(BATCH)]),
                        max_ops, max_seconds)


def batched_append_bare(root: str, max_ops: int, max_seconds: float) -> Rate:
    """The bare backend's ``append_batch`` of BATCH messages (time ticks stamped here), sync="always"."""
    clock = _Clock()
    with bare_wal(fresh_dir(root, "batched-bare"), sync="always") as w:
        append_batch = w.append_batch

        def batch(base: int) -> object:
            return append_batch([_msg(record(base + j)).with_time_tick(clock.next()) for j in range(BATCH)])

        batch(0)
        return _batched(batch, max_ops, max_seconds)


def _batched(batch: Callable[[int], object], max_ops: int, max_seconds: float) -> Rate:
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + max_seconds
    n = 0
    while n < max_ops and clock() < deadline:
        batch(n)
        n += BATCH
    return Rate(n, clock() - t0)


# -- scans ------------------------------------------------------------------------------------------------------


def write_log(root: str, records: int, size: int = RECORD_BYTES, sync: str = "never", **options: Any) -> int:
    """Fill a channel with ``records`` INSERT messages through the public API (batched), then close it."""
    per_batch = max(1, min(BATCH, (1 << 20) // size))
    with full_wal(root, term=1, sync=sync, **options) as w:
        done = 0
        while done < records:
            n = min(per_batch, records - done)
            w.append_messages([_msg(record(done + j, size)) for j in range(n)])
            done += n
    return done


def catchup_scan_full(root: str, records: int, term: int) -> Rate:
    """Reopen the channel (so the adaptor's cache is cold) and time a scanner from the first message to the
    ``records``-th INSERT, touching each payload.
    """
    with full_wal(root, term=term, sync="always") as w:
        t0 = time.perf_counter()
        with w.read(ReadOption(deliver_policy=DeliverPolicy.all(), name="bench-catchup")) as s:
            recv = s.recv
            n = size = 0
            while n < records:
                m = recv(10.0)
                if m.message_type == INSERT:
                    n += 1
                    size += len(m.payload)
            dt = time.perf_counter() - t0
    _check_scan(n, size, records)
    return Rate(n, dt)


def catchup_scan_bare(root: str, records: int, term: int) -> Rate:
    """The same scan through the bare backend's ``ScannerImpls.recv_batch``."""
    with bare_wal(root, term=term, sync="always") as w:
        t0 = time.perf_counter()
        s = w.read(ImplsReadOption(name="bench-catchup-bare", deliver_policy=DeliverPolicy.all()))
        try:
            recv_batch = s.recv_batch
            n = size = 0
            while n < records:
                for m in recv_batch(1024, 10.0):
                    if m.message_type == INSERT:
                        n += 1
                        size += len(m.payload)
            dt = time.perf_counter() - t0
        finally:
            s.close()
    _check_scan(n, size, records)
    return Rate(n, dt)


def _check_scan(n: int, size: int, records: int) -> None:
    if n != records or size != records * RECORD_BYTES:
        raise AssertionError(f"scan delivered {n} INSERTs / {size} payload bytes, {records} were written")


# -- reopen -----------------------------------------------------------------------------------------------------


def write_big_log(root: str, total_bytes: int) -> int:
    """A log of ``total_bytes`` of 64 KiB payloads (sync="never": durability is not what is measured here)."""
    return write_log(root, max(1, total_bytes // BIG_RECORD_BYTES), BIG_RECORD_BYTES)


def du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def reopen(root: str, term: int) -> Rate:
    """Seconds from ``build()`` to an open, writable WAL (the backend's recovery and the adaptor's first tick)
    on an existing log; ``extra['bare_s']`` is the backend alone, opened right after.
    """
    t0 = time.perf_counter()
    with full_wal(root, term=term, sync="always"):
        dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    with bare_wal(root, term=term + 1, sync="always") as w:
        bare = time.perf_counter() - t1
        if w.last_time_tick() <= 0:  # a reopen that did not find the log would be fast for the wrong reason
            raise AssertionError(f"reopened {root} but the backend reports no recovered time tick")
    return Rate(1, dt, unit="s", extra={"open_s": dt, "bare_s": bare})


# -- tailing latency ------------------------------------------------------------------------------------------------


def tailing_latency(root: str, rate: float, seconds: float) -> Rate:
    """A writer appends (``w.append``, sync="always") at ``rate`` per second; a scanner opened with
    ``DeliverPolicy.latest()`` in another thread receives them. Latency = receive time minus the time just before
    ``append`` was called, so it includes the append's own fdatasync (what a consumer waits for after a producer
    starts an append). ``extra``: p50/p99/max in ms, and ``ack_p50/p99_ms`` measured from ``append``'s return
    instead (the delivery lag after the acknowledgement).
    """
    count = max(1, int(rate * seconds))
    got: list[tuple[int, int]] = []  # (stamp = call time, receive time), ns
    acked: dict[int, int] = {}  # stamp -> append return time, ns
    with full_wal(fresh_dir(root, "tail"), sync="always") as w:
        s = w.read(ReadOption(deliver_policy=DeliverPolicy.latest(), name="bench-tail"))
        failure: list[BaseException] = []

        def reader() -> None:
            try:
                clock = time.perf_counter_ns
                while len(got) < count:
                    m = s.recv(5.0)
                    if m.message_type == INSERT:
                        got.append((stamp_of(m.payload), clock()))
            except BaseException as e:
                failure.append(e)

        t = threading.Thread(target=reader, name="bench-tail-reader")
        t.start()
        try:
            period = 1.0 / rate
            now_ns = time.perf_counter_ns
            t0 = time.perf_counter()
            for i in range(count):
                delay = t0 + i * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                payload = stamped_record()
                w.append(_msg(payload))
                acked[stamp_of(payload)] = now_ns()
            sent_s = time.perf_counter() - t0
            t.join(10.0)
        finally:
            s.close()
            t.join()
    if failure:
        raise failure[0]
    lat = sorted((r - st) / 1e6 for st, r in got)
    after_ack = sorted(max(0, r - acked[st]) / 1e6 for st, r in got if st in acked)
    return Rate(len(lat), sent_s, extra={
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": lat[-1] if lat else float("nan"),
        "ack_p50_ms": percentile(after_ack, 50), "ack_p99_ms": percentile(after_ack, 99),
        "achieved_rate": count / sent_s,
    })
