"""The stores a Python user would pick instead of our WAL, driven as fast as their own APIs allow.

Each function writes into its own fresh directory under ``root`` and returns a :class:`Rate` of records per
second. Durable means the call returned only after the store's fsync/fdatasync for that record (or batch).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time

import lmdb
from _bench_env import RECORD_BYTES, Rate, fresh_dir, record, timed_loop

WARMUP_OPS = 20


def _sqlite_connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(path, "log.db"), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    return conn


def sqlite_one_row_txns(root: str, synchronous: str, max_ops: int, max_seconds: float) -> Rate:
    """One INSERT per transaction (autocommit), sqlite in WAL mode; FULL fsyncs the -wal file at every commit."""
    conn = _sqlite_connect(fresh_dir(root, f"sqlite-{synchronous.lower()}"), synchronous)
    try:
        ex = conn.execute
        sql = "INSERT INTO log (payload) VALUES (?)"
        for i in range(WARMUP_OPS):
            ex(sql, (record(i),))
        return timed_loop(lambda i: ex(sql, (record(i),)), max_ops, max_seconds)
    finally:
        conn.close()


def sqlite_write_rows(root: str, rows: int) -> str:
    """A sqlite database of ``rows`` 100 B rows written in one transaction; returns its directory."""
    path = fresh_dir(root, "sqlite-select")
    conn = _sqlite_connect(path, "NORMAL")
    try:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO log (id, payload) VALUES (?, ?)", ((i, record(i)) for i in range(rows)))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def sqlite_select_scan(path: str, rows: int) -> Rate:
    """Connect to the database from :func:`sqlite_write_rows` and time ``SELECT id, payload ... ORDER BY id``."""
    conn = _sqlite_connect(path, "NORMAL")
    try:
        t0 = time.perf_counter()
        n = 0
        size = 0
        for row in conn.execute("SELECT id, payload FROM log ORDER BY id"):
            n += 1
            size += len(row[1])
        dt = time.perf_counter() - t0
    finally:
        conn.close()
    if n != rows or size != rows * RECORD_BYTES:
        raise AssertionError(f"sqlite scan returned {n} rows / {size} bytes, wrote {rows}")
    return Rate(n, dt)


def _lmdb_env(path: str) -> lmdb.Environment:
    # sync=True, metasync=True: a commit returns after the data and meta pages are flushed (lmdb's default).
    return lmdb.open(path, map_size=8 << 30, sync=True, metasync=True, writemap=False, max_dbs=0)


def lmdb_puts(root: str, puts_per_txn: int, max_ops: int, max_seconds: float) -> Rate:
    """Sequential-key puts (``append=True``, lmdb's fastest path), one synced commit per ``puts_per_txn`` puts."""
    env = _lmdb_env(fresh_dir(root, f"lmdb-{puts_per_txn}"))
    pack = struct.Struct(">Q").pack
    try:
        key = 0

        def txn_of(n: int) -> None:
            nonlocal key
            with env.begin(write=True) as txn:
                put = txn.put
                for _ in range(n):
                    put(pack(key), record(key), append=True)
                    key += 1

        txn_of(min(WARMUP_OPS, puts_per_txn))
        clock = time.perf_counter
        t0 = clock()
        deadline = t0 + max_seconds
        done = 0
        while done < max_ops and clock() < deadline:
            txn_of(puts_per_txn)
            done += puts_per_txn
        return Rate(done, clock() - t0)
    finally:
        env.close()


def raw_pwrite_fdatasync(root: str, size: int, max_ops: int, max_seconds: float) -> Rate:
    """``os.pwrite`` + ``os.fdatasync`` of ``size`` bytes at a time into a file preallocated with
    ``posix_fallocate`` (what a log segment is): the floor under any durable append of that size.
    """
    path = os.path.join(fresh_dir(root, f"raw-{size}"), "prealloc.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, (max_ops + WARMUP_OPS) * size)
        os.fsync(fd)
        buf = record(0, size)
        pwrite, fdatasync = os.pwrite, os.fdatasync
        for i in range(WARMUP_OPS):
            pwrite(fd, buf, i * size)
            fdatasync(fd)
        base = WARMUP_OPS * size

        def op(i: int) -> None:
            pwrite(fd, buf, base + i * size)
            fdatasync(fd)

        rate = timed_loop(op, max_ops, max_seconds)
        rate.extra["MB_per_s"] = rate.value * size / 1e6
        return rate
    finally:
        os.close(fd)
