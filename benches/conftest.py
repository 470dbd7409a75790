"""pytest-benchmark suite: ``.venv/bin/pytest benches`` (never collected by the plain test run, whose testpaths
is tests/). The side-by-side comparison with sqlite3 and lmdb, with the targets, is ``benches/compare.py``.

Sizes can be scaled down with WAL_BENCH_SCAN_ROWS and WAL_BENCH_REOPEN_BYTES; WAL_BENCH_DIR picks the parent
directory (it must not be tmpfs, where fsync is free).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (_HERE, os.path.dirname(_HERE)) if p not in sys.path]  # benches/ helpers, this checkout

from _bench_env import bench_dir, filesystem_of, is_memory_backed  # noqa: E402

SCAN_ROWS = int(os.environ.get("WAL_BENCH_SCAN_ROWS", "100000"))
REOPEN_BYTES = int(os.environ.get("WAL_BENCH_REOPEN_BYTES", str(1 << 30)))


def _parent(tmp_path_factory: pytest.TempPathFactory) -> str:
    parent = os.environ.get("WAL_BENCH_DIR") or str(tmp_path_factory.getbasetemp())
    if is_memory_backed(parent):
        mnt, fs = filesystem_of(parent)
        pytest.skip(f"{parent} is on {fs} ({mnt}): fsync is free there; set WAL_BENCH_DIR to a disk directory")
    return parent


@pytest.fixture
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh directory on a disk-backed filesystem, removed afterwards."""
    with bench_dir(_parent(tmp_path_factory)) as d:
        yield d


@pytest.fixture(scope="session")
def terms() -> Iterator[int]:
    """Ever-growing terms, so each reopen of a shared log is a new writer generation."""
    return itertools.count(2)


@pytest.fixture(scope="session")
def scan_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A channel of SCAN_ROWS 100 B INSERT messages, written once per session."""
    import _bench_wal as walb

    with bench_dir(_parent(tmp_path_factory)) as d:
        path = os.path.join(d, "scan")
        walb.write_log(path, SCAN_ROWS)
        yield path, SCAN_ROWS


@pytest.fixture(scope="session")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A channel of REOPEN_BYTES of 64 KiB messages (1 GiB by default), written once per session."""
    import _bench_wal as walb

    with bench_dir(_parent(tmp_path_factory)) as d:
        path = os.path.join(d, "big")
        walb.write_big_log(path, REOPEN_BYTES)
        yield path
