#!/usr/bin/env python3
"""SIGKILL a localfs writer at random moments, over and over; every acknowledged append must survive.

    python tools/crashloop.py [--kills 1000] [--seed S] [--root DIR] [--reset-every 50] [--quiet]

Each round starts a child process that opens the channel with the full WAL (``registry.must_get_builder
("localfs")``, ``sync="always"``, a random segment size) and appends from a random number of threads, each either
with ``append`` or pipelined ``append_async`` (a random window), payloads of random sizes (some larger than a
segment). A thread reports an acknowledgement on the pipe (one ``write`` per line, after ``append`` returned or its
future resolved), in its own append order. The parent kills the child with SIGKILL at a random moment (sometimes
while it is still opening and recovering), reopens the channel (recovery, term + 1) and checks that every
acknowledged message is there with its exact payload, that each thread's acknowledgements have increasing IDs and
that IDs are dense. Every ``--reset-every`` kills the channel starts afresh (so checking stays linear).

Exit status 0 when nothing was lost, 1 otherwise (each problem printed). The summary's last line is
``crashloop: kills=K acks=A verified=V lost=0 ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def payload_for(seed: int, thread: int, n: int, size: int) -> bytes:
    """Deterministic bytes, so the parent can check an exact payload from an ack line."""
    h = hashlib.blake2b(f"{seed}/{thread}/{n}".encode(), digest_size=32).digest()
    return (h * (size // 32 + 1))[:size]


def _size(rng: random.Random, segment_bytes: int) -> int:
    r = rng.random()
    if r < 0.6:
        return rng.randint(0, 256)
    if r < 0.95:
        return rng.randint(257, 8192)
    if r < 0.99:
        return rng.randint(8193, 65536)
    return segment_bytes + rng.randint(1, 4096)  # a record that needs a segment of its own


# -- child ----------------------------------------------------------------------------------------------------------
def child(root: str, term: int, seed: int) -> None:
    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    rng = random.Random(seed)
    segment_bytes = rng.choice((4096, 16384, 65536, 1 << 20))
    threads = rng.randint(1, 6)
    opener = registry.must_get_builder("localfs").build(
        root=root, sync="always", segment_bytes=segment_bytes, time_tick_interval=rng.choice((0.005, 0.05, 0.2)),
    )
    w = opener.open(OpenOption(channel=PChannelInfo(name="crash", term=term)))
    os.write(1, b"ready\n")

    def loop(t: int) -> None:
        trng = random.Random(seed * 1000 + t)
        window = trng.choice((0, 0, 1, 4, 16))  # 0: synchronous append
        pending: deque[tuple[int, int, Future[Any]]] = deque()
        n = 0
        while True:
            size = _size(trng, segment_bytes)
            m = MutableMessage(MessageType.INSERT, payload_for(seed, t, n, size), {"n": str(n)}, f"v{t}")
            if window == 0:
                r = w.append(m)
                os.write(1, f"{r.message_id.marshal()} {t} {n} {size}\n".encode())
            else:
                pending.append((n, size, w.append_async(m)))
                while len(pending) >= window:
                    pn, psize, f = pending.popleft()
                    r = f.result()
                    os.write(1, f"{r.message_id.marshal()} {t} {pn} {psize}\n".encode())
            n += 1

    for t in range(threads):
        threading.Thread(target=loop, args=(t,), daemon=True).start()
    time.sleep(3600)


# Children are forked from a warm server, multiprocessing's forkserver: a fresh interpreter spent ~0.2 s importing
# ``wal`` before it opened its WAL, a fork of one that imported it ~0.01 s. The server is a fresh interpreter of its
# own: the parent runs other threads by the time it forks (a reopened WAL's), whose locks a fork copies in whatever
# state they are. (3.11's forkserver imports its preload before it sets its sys.path: modules found where ``wal`` is;
# when ``wal`` is not installed the child imports it itself, only slower.)
_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["wal", "wal.walimpls.localfs", "wal.adaptor"])


def _forked_child(out: Any, err: Any, root: str, term: int, seed: int) -> None:
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    out.close()
    err.close()
    threads = len(os.listdir(f"/proc/{os.getppid()}/task"))  # a fork copies the forking thread only
    if threads != 1:
        raise RuntimeError(f"forked from a process that runs {threads} threads: unsafe")
    child(root, term, seed)


# -- parent ---------------------------------------------------------------------------------------------------------
class _CutCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.cut = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "cut" in record.getMessage():
            self.cut += 1


def _read_all(w: Any) -> dict[int, tuple[bytes, str]]:
    from wal.errors import WALTimeoutError
    from wal.options import DeliverPolicy
    from wal.walimpls import ReadOption

    out: dict[int, tuple[bytes, str]] = {}
    prev = 0
    with w.read(ReadOption(name="crashloop", deliver_policy=DeliverPolicy.all())) as s:
        while True:
            try:
                batch = s.recv_batch(4096, 0.05)
            except WALTimeoutError:
                return out
            for m in batch:
                mid = int(m.message_id.value)
                if mid != prev + 1:
                    raise AssertionError(f"IDs not dense: {mid} after {prev}")
                prev = mid
                out[mid] = (bytes(m.payload), m.vchannel)


def _sabotage(chdir: str, newest_ack: int) -> None:
    """Self-test of the checker: lose the segment holding the newest acknowledged message (as a broken disk
    would), so the run must fail. Not simply the newest segment: a kill can land just after a roll, when the newest
    segment holds nothing acknowledged yet, and deleting it would prove nothing."""
    firsts = sorted(int(n[:-4]) for n in os.listdir(chdir) if n.endswith(".seg") and n[:-4].isdigit())
    holding = [f for f in firsts if f <= newest_ack]
    if holding:
        os.unlink(os.path.join(chdir, f"{holding[-1]:020d}.seg"))


def run(kills: int, seed: int, root: str, reset_every: int, quiet: bool, sabotage: bool = False) -> int:
    from wal import OpenOption, PChannelInfo
    from wal.registry import get_impls_builder

    logging.basicConfig(level=logging.ERROR)
    counter = _CutCounter()
    lfs = logging.getLogger("wal.localfs")
    lfs.setLevel(logging.WARNING)
    lfs.addHandler(counter)
    lfs.propagate = False
    rng = random.Random(seed)
    # The forkserver (started with the first child, from this environment) imports wal from this checkout.
    pp = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + pp if pp else "")
    problems: list[str] = []
    acked: dict[int, tuple[int, int, int, int]] = {}  # id -> (child seed, thread, n, size)
    total_acks = verified = early = max_len = 0
    term = 0
    t0 = time.monotonic()
    chdir = os.path.join(root, "crash")
    for k in range(kills):
        if reset_every and k % reset_every == 0:
            shutil.rmtree(chdir, ignore_errors=True)
            acked.clear()
        child_seed = rng.randrange(1 << 30)
        term += 1
        out_r, out_w = _CTX.Pipe(duplex=False)
        err_r, err_w = _CTX.Pipe(duplex=False)
        p = _CTX.Process(target=_forked_child, args=(out_w, err_w, root, term, child_seed), daemon=True)
        try:
            p.start()
        finally:
            out_w.close()  # the child's copies went with the start: EOF once it is gone
            err_w.close()
        with open(out_r.fileno(), "rb", closefd=False) as stdout, open(err_r.fileno(), "rb", closefd=False) as stderr:
            if rng.random() < 0.15:  # during start-up: locking, recovery of the last crash, the fence tick
                time.sleep(rng.uniform(0.0, 0.5))
                early += 1
            else:
                stdout.readline()  # "ready" (or EOF if it failed)
                time.sleep(rng.uniform(0.0, 0.3))
            assert p.pid is not None
            os.kill(p.pid, signal.SIGKILL)
            out, err = stdout.read(), stderr.read()
        out_r.close()
        err_r.close()
        p.join()
        if p.exitcode != -signal.SIGKILL:
            problems.append(f"kill {k}: the child exited with {p.exitcode} before the kill: {err.decode()[-2000:]}")
            break
        per_thread: dict[int, int] = {}
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # "ready"; a line is written whole (one write below PIPE_BUF), never cut
            mid, t, n, size = (int(x) for x in parts)
            if mid <= per_thread.get(t, 0):
                problems.append(f"kill {k}: thread {t} acknowledged ID {mid} after {per_thread[t]} (order)")
            per_thread[t] = mid
            acked[mid] = (child_seed, t, n, size)
            total_acks += 1
        term += 1
        if sabotage and acked:
            _sabotage(chdir, max(acked))
        opener = get_impls_builder("localfs").build(root=root, segment_bytes=4096)
        try:
            w = opener.open(OpenOption(channel=PChannelInfo(name="crash", term=term)))
            try:
                got = _read_all(w)
            finally:
                w.close()
        except Exception as e:
            problems.append(f"kill {k}: reopening failed: {type(e).__name__}: {e}")
            break
        finally:
            opener.close()
        max_len = max(max_len, len(got))
        for mid, (cs, t, n, size) in acked.items():
            have = got.get(mid)
            if have is None:
                problems.append(f"kill {k}: acknowledged message {mid} (child {cs} thread {t} #{n}) is lost")
            elif have[0] != payload_for(cs, t, n, size) or have[1] != f"v{t}":
                problems.append(f"kill {k}: message {mid} does not hold what was acknowledged")
            else:
                verified += 1
        if problems:
            break
        if not quiet and (k + 1) % 50 == 0:
            print(f"  {k + 1} kills, {total_acks} acks, {time.monotonic() - t0:.0f} s", flush=True)
    for msg in problems[:20]:
        print("LOST/BROKEN:", msg)
    status = "ok" if not problems else "FAILED"
    print(
        f"crashloop: kills={k + 1 if kills else 0} acks={total_acks} verified={verified} lost={len(problems)} "
        f"early_kills={early} torn_tails_cut={counter.cut} longest_log={max_len} "
        f"seconds={time.monotonic() - t0:.1f} seed={seed} {status}",
        flush=True,
    )
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--root", default=None, help="directory for the log (default: a temporary one, removed)")
    ap.add_argument("--reset-every", type=int, default=50, help="start a fresh channel every N kills (0: never)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sabotage", action="store_true", help=argparse.SUPPRESS)  # self-test: must exit 1
    ap.add_argument("--child", nargs=3, metavar=("ROOT", "TERM", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], int(a.child[1]), int(a.child[2]))
        return 0
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    if a.root:
        os.makedirs(a.root, exist_ok=True)
        return run(a.kills, seed, a.root, a.reset_every, a.quiet, a.sabotage)
    tmp = tempfile.mkdtemp(prefix="wal-crashloop-")
    try:
        return run(a.kills, seed, tmp, a.reset_every, a.quiet, a.sabotage)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
