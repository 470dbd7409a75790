"""The pure-Python floor of a checked scan: walk every record of a localfs log in its map and check its CRC.

No message objects, no IDs, no WAL: the least a pure-Python reader that verifies each record must do. A catch-up
scan cannot beat this rate, so ``scan_floor`` next to ``sqlite_select`` says whether ``catchup_scan >= 1x`` is
reachable at all without a C accelerator.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from _bench_env import Rate
from crc32c import crc32c

from wal.walimpls.localfs._format import DATA_START, REC_MAGIC, SEGMENT_SUFFIX

_HEAD = struct.Struct("<IIB")  # crc32c, body length, magic: the fields a walk needs (the full header is 32 B)


def _segments(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(SEGMENT_SUFFIX)]
    return sorted(out)


def _walk(mm: mmap.mmap) -> int:
    unpack = _HEAD.unpack_from
    crc = crc32c
    pos = DATA_START
    limit = len(mm)
    n = 0
    while pos + 32 <= limit:
        c, body_len, magic = unpack(mm, pos)
        end = pos + 32 + body_len
        if magic != REC_MAGIC or end > limit or crc(mm[pos + 4 : end]) != c:
            break
        n += 1
        pos += (32 + body_len + 7) & ~7
    return n


def crc_walk(root: str, records: int) -> Rate:
    """Time the walk over every segment of the log under ``root`` (maps opened inside the timed region)."""
    t0 = time.perf_counter()
    n = 0
    for path in _segments(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        with mm:
            n += _walk(mm)
    dt = time.perf_counter() - t0
    if n < records:  # the log also holds the WAL's time ticks
        raise AssertionError(f"floor walk found {n} valid records, {records} were written")
    return Rate(n, dt)
