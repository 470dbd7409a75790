"""Scanners dropped without ``close()`` (``for m in w.read(...): break``) release what they hold.

The WAL used to keep every scanner until it closed: a dropped localfs reader kept its segment mapped and open, so
segments that retention deleted still held their disk space, and a dropped ``async for`` kept its worker thread.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy


def ins(i: int, size: int = 10) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"%d" % i + b"x" * size, vchannel="v1")


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``cond`` held within ``timeout`` (the reaper closes in its own thread)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _deleted_maps(root: Path) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if str(root) in line and line.rstrip().endswith("(deleted)")]


def _read_one_and_drop(w: Any) -> threading.Event:
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    for _ in s:
        break  # dropped here, never closed
    return s.done()  # type: ignore[no-any-return]


def test_dropped_follower_scanners_do_not_pin_segments_retention_deleted(tmp_path: Path) -> None:
    b = registry.must_get_builder("localfs")
    op = b.build(root=str(tmp_path), segment_bytes=64 << 10, retention_bytes=256 << 10)
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    for i in range(50):
        w.append(ins(i, 1000))
    ro = op.open(OpenOption(PChannelInfo("c", 0, AccessMode.RO)))
    dones = [_read_one_and_drop(ro) for _ in range(5)]
    for i in range(2000):  # some thirty segments: retention deletes the first, which every dropped reader had mapped
        w.append_async(ins(i, 1000))
    w.append(ins(-1))
    assert not (tmp_path / "c" / f"{1:020d}.seg").exists()
    assert _until(lambda: not _deleted_maps(tmp_path)), _deleted_maps(tmp_path)[:3]
    assert all(d.is_set() for d in dones)  # done() of a dropped scanner is set, as close() sets it
    ro.close()
    op.close()


@pytest.fixture(params=["memory", "localfs"])
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    b = registry.must_get_builder(request.param)
    op = b.build(root=str(tmp_path), segment_bytes=1 << 20) if request.param == "localfs" else b.build()
    w = op.open(OpenOption(PChannelInfo("p1", 1)))
    w.append(ins(0))
    yield w
    op.close()


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wal-scanner-") and t.name != "wal-scanner-reaper"]


def test_dropped_async_for_leaves_no_worker_thread(writer: Any) -> None:
    async def read_one() -> None:
        async for _ in writer.read(ReadOption(deliver_policy=DeliverPolicy.all())):
            break  # dropped here, never closed

    async def main() -> None:
        for _ in range(20):
            await read_one()

    before = len(_workers())
    asyncio.run(main())
    assert _until(lambda: len(_workers()) <= before), [t.name for t in _workers()]


def test_the_wal_forgets_dropped_scanners_and_still_closes_held_ones(writer: Any) -> None:
    for _ in range(50):
        _read_one_and_drop(writer)
    held = writer.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    assert _until(lambda: len(writer._scanners) == 1)  # only the held one: dropped ones are not kept
    writer.close()
    assert held.done().wait(5)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_a_read_only_wal_dropped_without_close_is_closed(tmp_path: Path, backend: str) -> None:
    """The opener kept every read-only WAL it opened until it closed, so one dropped without ``close()`` (a tool
    that peeks at each channel of a root) kept its backend open for the opener's life: on localfs, each channel
    followed that way kept its watchdog thread (30 channels peeked at, 30 threads more). The opener holds them
    weakly now; one collected unclosed is closed by the reaper (a writer is still kept: its close is its owner's)."""
    b = registry.must_get_builder(backend)
    op = b.build(root=str(tmp_path), segment_bytes=1 << 20) if backend == "localfs" else b.build()
    names = [f"c{i}" for i in range(30)]
    for name in names:
        with op.open(OpenOption(PChannelInfo(name, 1))) as w:
            w.append(ins(0))
    kept = op.open(OpenOption(PChannelInfo(names[0], 0, AccessMode.RO)))
    threads = threading.active_count()
    dropped = []
    for name in names:
        ro = op.open(OpenOption(PChannelInfo(name, 0, AccessMode.RO)))
        for m in ro.read(ReadOption(deliver_policy=DeliverPolicy.all())):
            if m.message_type is MessageType.INSERT:
                break  # the scanner and then the WAL are dropped, never closed
        dropped.append(weakref.ref(ro))
        del ro, m
    assert _until(lambda: all(r() is None for r in dropped))
    assert _until(lambda: threading.active_count() <= threads + 2), [t.name for t in threading.enumerate()]
    s = kept.read(ReadOption(deliver_policy=DeliverPolicy.all()))  # one held is untouched, and the close ends it
    assert s.recv(timeout=5) is not None
    op.close()
    assert s.done().wait(5)
