"""Concurrency stress on the full localfs WAL: many appending threads (append and pipelined append_async) and several
scanners (in this process, and a read-only follower in another process) for a bounded time. Every scanner sees
every acknowledged message exactly once, in one total order (the same everywhere), each producer's messages in its
order; traced memory stays bounded by the configuration (a small write-ahead buffer), not by the volume written.

WAL_STRESS_SECONDS sets the duration (default 3)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy

SECONDS = float(os.environ.get("WAL_STRESS_SECONDS", "3"))
WAB = 512 * 1024
ROOT = Path(__file__).resolve().parent.parent

FOLLOWER = r"""
import hashlib, sys
from wal import registry, OpenOption, PChannelInfo, AccessMode, ReadOption
from wal.message import MessageType
from wal.options import DeliverPolicy
o = registry.must_get_builder("localfs").build(root=sys.argv[1])
w = o.open(OpenOption(channel=PChannelInfo(name="s1", term=0, access_mode=AccessMode.RO)))
s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
h = hashlib.sha256(); n = 0; prev = None
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    m = s.recv(timeout=60)
    if m.message_type is not MessageType.INSERT:
        continue
    if bytes(m.payload) == b"END":
        break
    assert prev is None or m.message_id > prev, "follower: out of order"
    prev = m.message_id
    h.update(m.message_id.marshal().encode() + b":" + hashlib.sha256(m.payload).digest())
    n += 1
print(n, h.hexdigest())
s.close(); w.close(); o.close()
"""


def _payload(t: int, n: int) -> bytes:
    head = f"{t}/{n}/".encode()
    return head + bytes([n % 251]) * (64 + (n * 2131) % 16000)


class _Reader(threading.Thread):
    def __init__(self, w: Any, policy: DeliverPolicy) -> None:
        super().__init__(daemon=True)
        self.s = w.read(ReadOption(deliver_policy=policy))
        self.seen: list[tuple[Any, bytes]] = []  # (id, sha256 of the payload): no payload kept alive
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                m = self.s.recv(timeout=30)
                if m.message_type is not MessageType.INSERT:
                    continue
                if bytes(m.payload) == b"END":
                    return
                self.seen.append((m.message_id, hashlib.sha256(m.payload).digest()))
        except BaseException as e:
            self.error = e


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_many_writers_and_scanners_total_order_no_loss_bounded_memory(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    opener = registry.must_get_builder("localfs").build(
        root=str(tmp_path), segment_bytes=256 * 1024, write_ahead_buffer_bytes=WAB, time_tick_interval=0.05,
    )
    w = opener.open(OpenOption(channel=PChannelInfo(name="s1", term=1)))
    follower = subprocess.Popen([sys.executable, "-c", FOLLOWER, str(tmp_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, text=True)
    assert follower.stdout is not None
    assert follower.stdout.readline().strip() == "ready"
    readers = [_Reader(w, DeliverPolicy.all()) for _ in range(3)]
    for r in readers:
        r.start()
    acked: dict[int, list[tuple[Any, bytes]]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    volume = [0]
    errors: list[BaseException] = []

    def producer(t: int) -> None:
        mine: list[tuple[Any, bytes]] = []
        pipelined = t % 2 == 1
        n = 0
        try:
            while not stop.is_set():
                batch = [_payload(t, n + i) for i in range(8 if pipelined else 1)]
                n += len(batch)
                if pipelined:
                    futs = [w.append_async(MutableMessage(MessageType.INSERT, p, None, f"v{t % 3}")) for p in batch]
                    ids = [f.result(timeout=30).message_id for f in futs]
                else:
                    ids = [w.append(MutableMessage(MessageType.INSERT, batch[0], None, f"v{t % 3}"), timeout=30)
                           .message_id]
                for mid, p in zip(ids, batch, strict=True):
                    mine.append((mid, hashlib.sha256(p).digest()))
                    volume[0] += len(p)
        except BaseException as e:
            errors.append(e)
        with lock:
            acked[t] = mine

    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    producers = [threading.Thread(target=producer, args=(t,)) for t in range(8)]
    for p in producers:
        p.start()
    late = None
    time.sleep(SECONDS / 2)
    late = _Reader(w, DeliverPolicy.all())  # starts from the beginning while writers run: catch-up to tailing
    late.start()
    time.sleep(SECONDS / 2)
    stop.set()
    for p in producers:
        p.join(60)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not errors, errors
    w.append(MutableMessage(MessageType.INSERT, b"END", None, ""), timeout=30)
    out, err = follower.communicate(timeout=90)
    for r in [*readers, late]:
        r.join(60)
        assert r.error is None, r.error
    w.close()
    opener.close()

    # One total order: each producer's acknowledged IDs increase; all scanners agree, exactly once each.
    all_acked = sorted((x for mine in acked.values() for x in mine), key=lambda x: x[0])
    for t, mine in acked.items():
        ids = [m for m, _ in mine]
        assert ids == sorted(ids), f"producer {t}: acknowledged IDs out of its order"
    assert len(all_acked) > 200, "too few appends for a stress test"
    for r in [*readers, late]:
        ids = [m for m, _ in r.seen]
        assert len(set(ids)) == len(ids), "a scanner delivered a message twice"
        assert ids == sorted(ids), "a scanner delivered out of order"
        assert r.seen == all_acked, "a scanner's messages differ from the acknowledged ones"
    h = hashlib.sha256()
    for mid, d in all_acked:
        h.update(mid.marshal().encode() + b":" + d)
    assert follower.returncode == 0, err
    assert out.split() == [str(len(all_acked)), h.hexdigest()], "the other-process follower saw something else"
    # Memory: bounded by configuration (write-ahead buffer, in-flight appends), not by the bytes written.
    # (Payload views of read-only maps are not traced; test bookkeeping is ~100 B per message.)
    bound = 8 * WAB + 300 * len(all_acked) + (4 << 20)
    print(f"stress: {len(all_acked)} messages, {volume[0] >> 20} MiB, traced peak {(peak - base) >> 20} MiB")
    assert peak - base < bound, f"traced memory peak {peak - base} B over {bound} B for {volume[0]} B written"
    assert volume[0] > bound, f"only {volume[0]} B written: too little to tell bounded memory from unbounded"
