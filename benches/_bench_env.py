"""Where benchmarks write, and the records they write.

fsync on tmpfs or ramfs returns at once, so a "durable" rate measured there says nothing about a disk: the
directory is checked against /proc/mounts and refused (or, when the caller insists, flagged in the output).
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

RECORD_BYTES = 100
BIG_RECORD_BYTES = 64 * 1024
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs", "squashfs", "overlay_tmpfs"})


def filesystem_of(path: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding ``path``: the longest matching mount point wins."""
    real = os.path.realpath(path)
    best = ("/", "unknown")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, parts[2])
    except OSError:
        pass
    return best


def is_memory_backed(path: str) -> bool:
    return filesystem_of(path)[1] in MEMORY_FILESYSTEMS


@contextmanager
def bench_dir(parent: str | None, allow_tmpfs: bool = False) -> Iterator[str]:
    """A fresh directory under ``parent`` (default: the system temp dir), removed afterwards."""
    parent = parent or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    if is_memory_backed(parent) and not allow_tmpfs:
        mnt, fs = filesystem_of(parent)
        raise SystemExit(
            f"{parent} is on {fs} (mounted at {mnt}): fsync there is free and every durable rate would be a lie; "
            "pass --dir on a disk-backed filesystem (or --allow-tmpfs to measure anyway)"
        )
    d = tempfile.mkdtemp(prefix="wal-bench-", dir=parent)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fresh_dir(root: str, name: str) -> str:
    """A new, uniquely named directory under ``root``: a repeated measurement never reuses an earlier run's files."""
    return tempfile.mkdtemp(prefix=f"{name}-", dir=root)


def record(i: int, size: int = RECORD_BYTES) -> bytes:
    """``size`` bytes starting with the record number, so a scan can check it got the right row."""
    head = struct.pack(">Q", i)
    return head + b"x" * (size - len(head))


def stamped_record(size: int = RECORD_BYTES) -> bytes:
    """A record carrying the time it was made (perf_counter_ns), for latency measurements."""
    head = struct.pack(">Q", time.perf_counter_ns())
    return head + b"t" * (size - len(head))


def stamp_of(payload: bytes | bytearray | memoryview) -> int:
    return int(struct.unpack_from(">Q", payload, 0)[0])


@dataclass
class Rate:
    """Operations per second measured over ``ops`` operations in ``seconds``; ``extra`` holds side numbers."""

    ops: int
    seconds: float
    unit: str = "op/s"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


def timed_loop(op: Callable[[int], object], max_ops: int, max_seconds: float) -> Rate:
    """Call ``op(i)`` until ``max_ops`` calls or ``max_seconds`` elapsed (checked every call), whichever first."""
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + max_seconds
    i = 0
    while i < max_ops:
        op(i)
        i += 1
        if clock() > deadline:
            break
    return Rate(i, clock() - t0)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def median_rate(rates: list[Rate]) -> Rate:
    """The run with the median rate (an odd count picks a real run; extras travel with it)."""
    ordered = sorted(rates, key=lambda r: r.value)
    med = ordered[(len(ordered) - 1) // 2]
    if len(rates) > 1:
        med.extra = dict(med.extra)
        med.extra["runs"] = float(len(rates))
        med.extra["spread_pct"] = 100 * (ordered[-1].value - ordered[0].value) / max(statistics.fmean(
            [r.value for r in rates]), 1e-12)
    return med
