"""SIGKILL a writer (sync="always") at random moments; every acknowledged message must survive, in order."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import _localfs_child
import pytest
from _localfs_util import build, msg, open_rw, payload_for, read_all
from _warm_child import WarmChild

KILLS = 50


def _run_and_kill(root: Path, term: int, seed: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    threads = 1 + seed % 3
    # Forked from a warm server (``_warm_child``): a fresh interpreter spent ~0.17 s importing before each open.
    p = WarmChild(_localfs_child.write, str(root), "p1", term, seed, threads, 8192)
    # Sometimes during start-up and recovery, mostly while appending (rolls every few dozen records). "While
    # appending" counts from the child's "ready" (its WAL open): on a busy machine the start-up alone can take
    # longer than the whole delay, and the children then acknowledged too few messages for the test to count.
    if rng.random() < 0.2:
        time.sleep(rng.uniform(0.02, 0.25))
    else:
        delay = rng.uniform(0.05, 0.25)
        line = p.readline(timeout=30)
        assert line in (b"ready\n", b""), line  # b"": the child ended (communicate() gets its stderr)
        time.sleep(delay)
    p.kill()
    out, err, code = p.communicate()
    assert code == -signal.SIGKILL, err.decode()
    acks = []
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 4:  # a line cut by the kill is not an ack the test may count on... but none is cut:
            acks.append((int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])))  # each is one write()
    return acks


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    rng = random.Random(1234)
    expected: dict[int, bytes] = {}
    total_acks = 0
    for i in range(KILLS):
        term = 2 * i + 1
        acks = _run_and_kill(tmp_path, term, seed=i, rng=rng)
        total_acks += len(acks)
        for mid, seed, t, n in acks:
            expected[mid] = payload_for(seed, t, n)
        # Per thread, acks come in append order: their IDs must grow.
        by_thread: dict[int, list[int]] = {}
        for mid, _seed, t, _n in acks:
            by_thread.setdefault(t, []).append(mid)
        for ids in by_thread.values():
            assert ids == sorted(ids)

        opener = build(tmp_path, segment_bytes=8192)
        try:
            w = open_rw(opener, "p1", term + 1)  # terms grow across processes: also checks term persistence
            got = read_all(w, idle=0.05)
            ids = [m.message_id.value for m in got]  # type: ignore[attr-defined]
            assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True, "IDs must be dense and ordered"
            by_id = {m.message_id.value: m for m in got}  # type: ignore[attr-defined]
            for mid, payload in expected.items():
                assert mid in by_id, f"kill {i}: acknowledged message {mid} lost"
                assert bytes(by_id[mid].payload) == payload, f"kill {i}: message {mid} has the wrong payload"
            # Appends continue right after the recovered tail.
            nxt = w.append(msg(b"after-crash", tt=1))
            assert nxt.value == (ids[-1] + 1 if ids else 1)  # type: ignore[attr-defined]
            expected[nxt.value] = b"after-crash"  # type: ignore[attr-defined]
            w.close()
        finally:
            opener.close()
    print(f"{KILLS} kills, {total_acks} acknowledged appends, {len(expected)} messages checked")
    assert total_acks > 10 * KILLS, f"the children acknowledged only {total_acks} messages: the test is too weak"
    assert len(os.listdir(tmp_path / "p1")) > 4  # segments rolled during the run


def test_follower_keeps_following_across_writer_crashes(tmp_path: Path) -> None:
    """A read-only follower stays open while writers are SIGKILLed and restarted (recovery cuts torn tails under
    its maps); it ends up with exactly the log: every record once, in order, never one that was cut."""
    from _localfs_util import open_ro

    from wal.errors import WALTimeoutError
    from wal.walimpls import ReadOption

    rng = random.Random(99)
    ropener = build(tmp_path)
    ro = open_ro(ropener)
    s = ro.read(ReadOption(name="follower"))
    seen: list[tuple[int, bytes]] = []
    try:
        for i in range(6):
            _run_and_kill(tmp_path, 2 * i + 1, seed=100 + i, rng=rng)
            while True:
                try:
                    seen.extend((m.message_id.value, bytes(m.payload)) for m in s.recv_batch(512, 0.2))  # type: ignore
                except WALTimeoutError:
                    break
        opener = build(tmp_path, segment_bytes=8192)
        try:
            w = open_rw(opener, "p1", 1000)
            final = [(m.message_id.value, bytes(m.payload)) for m in read_all(w, idle=0.05)]  # type: ignore
            w.close()
        finally:
            opener.close()
        while len(seen) < len(final):
            try:
                seen.extend((m.message_id.value, bytes(m.payload)) for m in s.recv_batch(512, 0.5))  # type: ignore
            except WALTimeoutError:
                break
        assert len(final) > 100
        assert seen == final
    finally:
        s.close()
        ro.close()
        ropener.close()
