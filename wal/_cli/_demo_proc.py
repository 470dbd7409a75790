"""The demo's child processes: a writer that reports each acknowledged append, and a read-only follower.

Run by ``wal demo`` as ``python -m wal._cli._demo_proc writer|follower ...``; each prints one line per event on
stdout, written with a single ``os.write`` so that a SIGKILL never leaves half a line:

- writer: ``ready <open_ms>``, ``ack <id> <seq> <latency_us>``, ``txn <commit_id> <txn_id> <body_ids,...>``, ``done``
- follower: ``ready``, ``msg <id> <type> <time_tick> <term> <seq> <lag_us>``, ``txn <id> <time_tick> <n_body>
  <body_seqs,...>``, ``done <time_ticks_seen>``

A writer payload is ``demo seq=<n> t_ns=<time.time_ns() before the append>``: the follower measures the
end-to-end lag from it, and the demo checks read-back payloads against the ``seq`` of each ack.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from types import FrameType

from .. import registry
from .._types import AccessMode, OpenOption, PChannelInfo, ReadOption
from ..errors import ShutdownError, WALTimeoutError
from ..message import ImmutableMessage, ImmutableTxnMessage, MessageType, MutableMessage
from ..options import DeliverPolicy

VCHANNEL = "v1"
TXN_BODY = 3
# A quick tick makes the follower's lag short: RO scanners release messages at each persisted time tick.
BUILD_OPTIONS = {"time_tick_interval": 0.05, "segment_bytes": 64 * 1024}  # small: a few sealed segments
_PAYLOAD = re.compile(rb"seq=(-?\d+) t_ns=(\d+)")


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def payload_for(seq: int) -> bytes:
    return f"demo seq={seq} t_ns={time.time_ns()}".encode() + b" " + b"x" * 64


def parse_payload(payload: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    m = _PAYLOAD.search(bytes(payload[:80]))
    return (int(m.group(1)), int(m.group(2))) if m else None


def writer(root: str, channel: str, term: int, rate: float, first_seq: int, count: int, txn_at: int) -> None:
    """Append at ``rate`` messages/s until killed (or ``count`` messages when > 0), a txn at ``txn_at`` (>= 0)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="log %(name)s: %(message)s")
    opener = registry.must_get_builder("localfs").build(root=root, **BUILD_OPTIONS)
    t0 = time.perf_counter()
    w = opener.open(OpenOption(channel=PChannelInfo(name=channel, term=term)))
    _say(f"ready {(time.perf_counter() - t0) * 1000:.1f}")
    period = 1.0 / rate
    deadline = time.perf_counter()
    seq = first_seq
    n = 0
    while count <= 0 or n < count:
        if n == txn_at:
            ids = []
            txn = w.begin_txn(vchannel=VCHANNEL)
            try:
                for part in range(TXN_BODY):
                    body = MutableMessage(MessageType.INSERT, payload_for(-1 - part), {"txn_part": str(part)}, VCHANNEL)
                    ids.append(txn.append(body).message_id.marshal())
                commit = txn.commit()
            except BaseException:
                txn.close()
                raise
            _say(f"txn {commit.message_id.marshal()} {txn.txn_ctx.txn_id} {','.join(ids)}")
        msg = MutableMessage(MessageType.INSERT, payload_for(seq), {"seq": str(seq)}, VCHANNEL)
        start = time.perf_counter()
        r = w.append(msg)
        _say(f"ack {r.message_id.marshal()} {seq} {(time.perf_counter() - start) * 1e6:.0f}")
        seq += 1
        n += 1
        deadline += period
        pause = deadline - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            deadline = time.perf_counter()  # fell behind: do not burst to catch up
    w.close()
    opener.close()
    _say("done")


def _describe(m: ImmutableMessage, now_ns: int, ready_ns: int) -> str:
    """One output line; the lag is left out ("-") for messages written before the follower was ready (catch-up)."""
    if isinstance(m, ImmutableTxnMessage):
        seqs = [str(p[0]) if (p := parse_payload(b.payload)) else "?" for b in m.messages]
        return f"txn {m.message_id.marshal()} {m.time_tick} {len(m.messages)} {','.join(seqs)}"
    p = parse_payload(m.payload)
    seq = p[0] if p else "-"
    lag = (now_ns - p[1]) // 1000 if p and p[1] >= ready_ns else "-"
    return f"msg {m.message_id.marshal()} {m.message_type.name} {m.time_tick} {m.wal_term} {seq} {lag}"


def follower(root: str, channel: str) -> None:
    """Print every message of the channel from the start, following the writer(s), until SIGTERM."""
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    opener = registry.must_get_builder("localfs").build(root=root, **BUILD_OPTIONS)
    ro = opener.open(OpenOption(channel=PChannelInfo(name=channel, term=0, access_mode=AccessMode.RO)))
    s = ro.read(ReadOption(deliver_policy=DeliverPolicy.all(), name="demo-follower"))
    ready_ns = time.time_ns()
    _say("ready")
    ticks = 0
    while not stop.is_set():
        try:
            m = s.recv(timeout=0.1)
        except WALTimeoutError:
            continue
        except ShutdownError:
            break
        if m.message_type is MessageType.TIME_TICK:
            ticks += 1
            continue
        _say(_describe(m, time.time_ns(), ready_ns))
    s.close()
    ro.close()
    opener.close()
    _say(f"done {ticks}")


def main(argv: list[str]) -> None:
    if argv[0] == "writer":
        root, channel, term, rate, first_seq, count, txn_at = argv[1:8]
        writer(root, channel, int(term), float(rate), int(first_seq), int(count), int(txn_at))
    elif argv[0] == "follower":
        follower(argv[1], argv[2])
    else:
        raise SystemExit(f"unknown role {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
