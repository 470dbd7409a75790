"""The append path stores plain messages in the write-ahead buffer in compact form (no ImmutableMessage kept per
message): tailing readers must still get exactly what was appended, field by field, in order.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import pytest

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.message import ImmutableMessage, MessageType, MutableMessage
from wal.options import DeliverPolicy

N = 700


def _msg(i: int) -> MutableMessage:
    props = {"k": str(i)} if i in (5, N - 10) else None  # with properties: their batch is kept as messages
    mtype = MessageType.DELETE if i % 11 == 0 else MessageType.INSERT
    return MutableMessage(mtype, b"payload-%d" % i, props, vchannel=f"v{i % 3}")


def _recv_data(s: Any, n: int) -> list[ImmutableMessage]:
    out: list[ImmutableMessage] = []
    deadline = time.monotonic() + 20.0
    while len(out) < n:
        m = s.recv(max(0.01, deadline - time.monotonic()))
        if m.message_type is not MessageType.TIME_TICK:
            out.append(m)
    return out


@pytest.mark.parametrize("backend", ["localfs", "memory"])
def test_tailing_reader_gets_every_field_of_compact_entries(tmp_path: Path, backend: str) -> None:
    opts: dict[str, Any] = {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}
    opener = registry.must_get_builder(backend).build(**opts)
    try:
        w = opener.open(OpenOption(channel=PChannelInfo(name="c1", term=2)))
        try:
            tail = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
            msgs = [_msg(i) for i in range(N)]
            futs = [w.append_async(m) for m in msgs[: N // 2]]
            results = [f.result(10.0) for f in futs]
            for k in range(N // 2, N, 50):  # synchronous groups too
                results += w.append_messages(msgs[k : k + 50])
            got = _recv_data(tail, N)
            for i, (m, r, g) in enumerate(zip(msgs, results, got, strict=True)):
                assert (g.message_id, g.time_tick, g.last_confirmed_message_id) == (
                    r.message_id, r.time_tick, r.last_confirmed_message_id
                ), i
                assert type(g.message_id) is type(r.message_id)
                assert g.message_type is m.message_type
                assert bytes(g.payload) == bytes(m.payload) and g.vchannel == m.vchannel
                assert dict(g.properties) == (m.properties or {})
                assert g.txn_ctx is None and g.wal_term == 2 and not g.not_persisted
                assert g.last_confirmed_message_id <= g.message_id
            assert [g.time_tick for g in got] == sorted({g.time_tick for g in got})  # strictly increasing
            # The buffer really holds compact entries, untracked by the collector once it has seen them.
            entries = [e for e in w._wab._queue._msgs if type(e) is tuple]  # type: ignore[attr-defined]
            assert len(entries) >= N // 3
            gc.collect()
            assert not any(gc.is_tracked(e) for e in entries)
            # A reader resuming from a mid-stream ID (rebuilt IDs compare equal to the backend's).
            k = N // 3
            again = w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(results[k].message_id)))
            tail2 = _recv_data(again, N - k)
            assert [g.message_id for g in tail2] == [r.message_id for r in results[k:]]
            assert [bytes(g.payload) for g in tail2] == [bytes(m.payload) for m in msgs[k:]]
            again.close()
            tail.close()
        finally:
            w.close()
    finally:
        opener.close()
