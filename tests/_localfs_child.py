"""Child processes for the localfs tests: a writer that acknowledges on stdout, and a read-only follower.

    python _localfs_child.py write ROOT CHANNEL TERM SEED THREADS SEGMENT_BYTES
    python _localfs_child.py follow ROOT CHANNEL COUNT
"""

from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _localfs_util import build, msg, open_ro, open_rw, payload_for

from wal.errors import WALTimeoutError
from wal.walimpls import ReadOption


def write(root: str, channel: str, term: int, seed: int, threads: int, segment_bytes: int) -> None:
    opener = build(root, segment_bytes=segment_bytes, sync="always")
    w = open_rw(opener, channel, term)
    os.write(1, b"ready\n")

    def loop(t: int) -> None:
        n = 0
        while True:
            m = msg(payload_for(seed, t, n), tt=n + 1, vchannel=f"v{t}", props={"seed": str(seed), "n": str(n)})
            mid = w.append(m)
            os.write(1, f"{mid.marshal()} {seed} {t} {n}\n".encode())
            n += 1

    ts = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def follow(root: str, channel: str, count: int) -> None:
    opener = build(root)
    ro = open_ro(opener, channel)
    s = ro.read(ReadOption(name="follower"))
    os.write(1, b"ready\n")
    got = 0
    while got < count:
        try:
            batch = s.recv_batch(256, 20.0)
        except WALTimeoutError:
            os.write(1, b"timeout\n")
            break
        for m in batch:
            os.write(1, f"{m.message_id.marshal()} {bytes(m.payload).hex()}\n".encode())
            got += 1
    s.close()
    ro.close()
    opener.close()


if __name__ == "__main__":
    if sys.argv[1] == "write":
        a = sys.argv[2:]
        write(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    else:
        follow(sys.argv[2], sys.argv[3], int(sys.argv[4]))
