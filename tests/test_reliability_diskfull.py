"""A real full disk: the full WAL on a small tmpfs (root only; skipped where it cannot be mounted) appends until the
file system is full. Every append that failed failed with a WALError, none that was acknowledged is lost once space
is freed, the log reopens (also while the disk is still full: an open that cannot write fails cleanly and damages
nothing), `wal verify` finds nothing, and appends go on.

The injected faults of test_reliability_faults.py take the same paths one operation at a time; here the kernel
decides which call runs out first (a record, a segment's preallocation, an index, a temporary file, FIRST)."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import WALError, WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.walimpls.localfs.tools import verify

pytestmark = pytest.mark.timeout(180)

FS_BYTES = 3 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """A file taking all but about ``leave`` bytes of the file system."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        size = st.f_bavail * st.f_frsize - leave
        if size > 0:
            os.posix_fallocate(f.fileno(), 0, size)
    return filler


def _open(root: Path, term: int, segment_bytes: int) -> tuple[Any, Any]:
    opener = registry.must_get_builder("localfs").build(root=str(root), segment_bytes=segment_bytes, sync="always")
    try:
        return opener, opener.open(OpenOption(channel=PChannelInfo(name="p1", term=term)))
    except BaseException:
        opener.close()
        raise


def _payload(t: int, n: int, rng: random.Random) -> bytes:
    head = f"{t}/{n}|".encode()
    size = rng.choice((rng.randint(1, 200), rng.randint(200, 5000), rng.randint(5000, 40_000)))
    return (head * (size // len(head) + 1))[:size]


def _user_messages(w: Any) -> dict[int, bytes]:
    """Every INSERT stored: read until a second passes without one (a tailing reader also gets the WAL's
    unpersisted time ticks, every ``time_tick_interval``)."""
    out: dict[int, bytes] = {}
    with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
        quiet_until = time.monotonic() + 1.0
        while time.monotonic() < quiet_until:
            try:
                m = s.recv(timeout=1.0)
            except WALTimeoutError:
                break
            if m.message_type is MessageType.INSERT:
                out[int(m.message_id.value)] = bytes(m.payload)
                quiet_until = time.monotonic() + 1.0
    return out


# Free space left beside the WAL (more than its first segment's preallocation, so the first open works) and segment
# sizes, so that the disk fills in the middle of a segment, at a roll, or with a big record.
CASES = [(96, 64 << 10, False), (200, 64 << 10, True), (420, 64 << 10, False), (300, 256 << 10, True),
         (600, 256 << 10, False), (800, 256 << 10, True)]


@pytest.mark.parametrize("leave_kib,segment_bytes,use_async", CASES)
def test_a_full_disk_fails_appends_cleanly_and_loses_nothing_acknowledged(
    small_fs: Path, leave_kib: int, segment_bytes: int, use_async: bool
) -> None:
    root = small_fs / "wal"
    filler = _fill(small_fs, leave_kib << 10)
    opener, w = _open(root, 1, segment_bytes)
    acked: dict[int, bytes] = {}
    attempted: set[bytes] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def run(t: int) -> None:
        rng = random.Random(leave_kib * 100 + t)
        n = 0
        while not stop.is_set():
            p = _payload(t, n, rng)
            n += 1
            with lock:
                attempted.add(p)
            m = MutableMessage(MessageType.INSERT, p, None, f"v{t}")
            try:
                r = w.append_async(m).result(timeout=30) if use_async else w.append(m, timeout=30)
            except BaseException as e:  # every failure is checked below
                with lock:
                    errors.append(e)
                stop.set()
                return
            with lock:
                acked[int(r.message_id.value)] = p

    threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "an append hung on a full disk"
    assert errors, "the disk never filled"
    assert all(isinstance(e, WALError) for e in errors), [repr(e) for e in errors]
    assert acked, "nothing was acknowledged before the disk filled"
    try:
        w.close()
    except WALError:
        pass  # its close summary may not fit either: recovery does without it
    opener.close()

    # Still full: an open either works or fails with a WALError, and changes nothing that was acknowledged.
    try:
        opener, w = _open(root, 2, segment_bytes)
    except WALError:
        pass
    else:
        try:
            w.close()
        except WALError:
            pass
        opener.close()

    filler.unlink()
    opener, w = _open(root, 3, segment_bytes)
    try:
        got = _user_messages(w)
        lost = sorted(set(acked) - set(got))
        assert not lost, f"{len(lost)} acknowledged message(s) lost, first IDs {lost[:5]}"
        assert all(got[i] == p for i, p in acked.items()), "an acknowledged message came back with other bytes"
        assert set(got.values()) <= attempted, "a message that was never appended came back"
        w.append(MutableMessage(MessageType.INSERT, b"after", None, "v0"), timeout=10)
    finally:
        w.close()
        opener.close()
    assert verify(str(root), "p1") == []
