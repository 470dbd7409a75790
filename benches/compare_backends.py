"""The same workloads through the full WAL on each backend, in one run: localfs, nats (JetStream), memory.

    .venv/bin/python benches/compare_backends.py            # full counts
    .venv/bin/python benches/compare_backends.py --quick    # small counts (a few seconds)

nats runs against a nats-server started here on a free loopback port with ``sync_interval: always`` (the setting
our durability claims need; see docs/NATS.md), so both durable backends sync every acknowledged append. Rates are
messages per second of 100 B records; ratios are against localfs in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy

PAYLOAD = b"x" * 100


def _msg(i: int) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, PAYLOAD, {"i": str(i)}, vchannel="v1")


@contextmanager
def _opener(backend: str, workdir: Path) -> Iterator[Any]:
    if backend == "localfs":
        op = registry.must_get_builder("localfs").build(root=str(workdir / "lf"), sync="always")
        try:
            yield op
        finally:
            op.close()
    elif backend == "memory":
        op = registry.must_get_builder("memory").build()
        try:
            yield op
        finally:
            op.close()
    elif backend == "nats":
        from _nats_server import nats_server

        with nats_server(workdir / "nats") as srv:
            op = registry.must_get_builder("nats").build(servers=srv.url)
            try:
                yield op
            finally:
                op.close()
    else:
        raise ValueError(backend)


def _durable_single(w: Any, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        w.append(_msg(i))
    return n / (time.perf_counter() - t)


def _pipelined(w: Any, n: int) -> float:
    t = time.perf_counter()
    futs = [w.append_async(_msg(i)) for i in range(n)]
    for f in futs:
        f.result(timeout=120)
    return n / (time.perf_counter() - t)


def _scan(w: Any, n: int) -> float:
    t = time.perf_counter()
    got = 0
    with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
        while got < n:
            m = s.recv(timeout=30)
            if m.message_type is MessageType.INSERT:
                got += 1
    return n / (time.perf_counter() - t)


def run(backends: list[str], single: int, pipelined: int, repeat: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for backend in backends:
        res: dict[str, list[float]] = {"durable single append": [], "pipelined append_async": [], "catch-up scan": []}
        with tempfile.TemporaryDirectory(dir=str(Path(__file__).resolve().parent.parent)) as d:
            with _opener(backend, Path(d)) as op:
                for r in range(repeat):
                    with op.open(OpenOption(PChannelInfo(f"cmp{r}", 1))) as w:
                        res["durable single append"].append(_durable_single(w, single))
                        res["pipelined append_async"].append(_pipelined(w, pipelined))
                        res["catch-up scan"].append(_scan(w, single + pipelined))
        out[backend] = {k: statistics.median(v) for k, v in res.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts")
    ap.add_argument("--backends", default="localfs,nats,memory")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    single, pipelined = (100, 2000) if a.quick else (500, 20000)
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    res = run(backends, single, pipelined, 1 if a.quick else a.repeat)
    base = res.get("localfs")
    print(f"{'workload':<26}" + "".join(f"{b:>22}" for b in backends))
    for wl in ("durable single append", "pipelined append_async", "catch-up scan"):
        row = f"{wl:<26}"
        for b in backends:
            v = res[b][wl]
            ratio = f" ({v / base[wl]:.2f}x)" if base and b != "localfs" else ""
            row += f"{v:>13,.0f}/s{ratio:>7}"
        print(row)
    print("ratios are against localfs in the same run; medians of", 1 if a.quick else a.repeat, "runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
