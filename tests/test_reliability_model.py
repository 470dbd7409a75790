"""A hypothesis state machine drives the full WAL (registry.must_get_builder) on memory and localfs (4 KiB segments)
against a simple model: a list of committed entries (a message, or a committed txn's body). Rules: append,
append_async (pipelined), txn begin/append/commit/rollback, reads with every deliver policy, truncate,
close/reopen and (localfs) crash/reopen with term + 1. Every read must give exactly the model's entries for that
policy, in order, with strictly increasing time ticks.

WAL_MODEL_EXAMPLES / WAL_MODEL_STEPS set the size (default 6 examples of up to 20 steps per backend)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from typing import Any

import pytest
from _faults import PowerLossFileOps
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import WALTimeoutError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy

EXAMPLES = int(os.environ.get("WAL_MODEL_EXAMPLES", "6"))
STEPS = int(os.environ.get("WAL_MODEL_STEPS", "20"))
STEP_COUNT = {"steps": 0, "reads": 0, "crashes": 0, "reopens": 0, "txns": 0}

payloads = st.binary(min_size=0, max_size=1500)


class WALModel(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="wal-model-")
        self.term = 1
        self.entries: list[tuple[Any, tuple[bytes, ...], bool]] = []  # (message ID, payloads, is_txn)
        self.floor: Any = None  # after truncate(floor), entries before it may be gone
        # Last-confirmed IDs of plain appends: truncating at one keeps every message after it, a txn whose commit
        # comes later included (invariant 4: a last-confirmed ID never passes an open txn's begin).
        self.checkpoints: list[Any] = []
        self.own_ids: set[Any] = set()
        self.fops: PowerLossFileOps | None = None
        self.opener: Any = None
        self.w: Any = None
        self.n = 0

    # -- lifetime ----------------------------------------------------------------------------------------------------
    def _build(self) -> Any:
        opts: dict[str, Any] = {"time_tick_interval": 0.05}
        if self.backend == "localfs":
            self.fops = PowerLossFileOps(random.Random(0))
            opts.update(root=self.root, segment_bytes=4096, _file_ops=self.fops)
        return registry.must_get_builder(self.backend).build(**opts)

    def _open(self) -> None:
        self.w = self.opener.open(OpenOption(channel=PChannelInfo(name="m1", term=self.term)))

    @initialize()
    def start(self) -> None:
        self.opener = self._build()
        self._open()

    def teardown(self) -> None:
        try:
            if self.opener is not None:
                self.opener.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _payload(self, p: bytes) -> bytes:
        self.n += 1
        return f"{self.n}:".encode() + p

    def _msg(self, p: bytes, vch: str = "v1") -> MutableMessage:
        return MutableMessage(MessageType.INSERT, p, {"n": str(self.n)}, vch)

    # -- writes ------------------------------------------------------------------------------------------------------
    @rule(p=payloads)
    def append(self, p: bytes) -> None:
        p = self._payload(p)
        r = self.w.append(self._msg(p), timeout=10)
        self.entries.append((r.message_id, (p,), False))
        self.checkpoints.append((r.last_confirmed_message_id, r.message_id))
        if r.last_confirmed_message_id == r.message_id:
            self.own_ids.add(r.message_id)
        STEP_COUNT["steps"] += 1

    @rule(ps=st.lists(payloads, min_size=1, max_size=8))
    def append_async(self, ps: list[bytes]) -> None:
        ps = [self._payload(p) for p in ps]
        futs = [self.w.append_async(self._msg(p)) for p in ps]
        for p, f in zip(ps, futs, strict=True):
            r = f.result(timeout=10)
            self.entries.append((r.message_id, (p,), False))
        STEP_COUNT["steps"] += 1

    @rule(ps=st.lists(payloads, min_size=0, max_size=5), commit=st.booleans(), interleave=st.booleans())
    def txn(self, ps: list[bytes], commit: bool, interleave: bool) -> None:
        ps = [self._payload(p) for p in ps]
        t = self.w.begin_txn("v1", keepalive=30.0)
        outside: list[tuple[Any, tuple[bytes, ...], bool]] = []
        for p in ps:
            t.append(self._msg(p))
            if interleave:  # a plain append while the txn is open: delivered before the txn (at its position)
                q = self._payload(b"outside")
                r = self.w.append(self._msg(q), timeout=10)
                outside.append((r.message_id, (q,), False))
                self.checkpoints.append((r.last_confirmed_message_id, r.message_id))
        self.entries.extend(outside)
        if commit:
            r = t.commit()
            self.entries.append((r.message_id, tuple(ps), True))
        else:
            t.rollback()
        STEP_COUNT["txns"] += 1
        STEP_COUNT["steps"] += 1

    @rule(i=st.integers(0, 1000))
    def truncate(self, i: int) -> None:
        if not self.checkpoints:
            return
        mid = self.checkpoints[i % len(self.checkpoints)][0]
        self.w.truncate(mid)
        if self.floor is None or self.floor < mid:
            self.floor = mid
        STEP_COUNT["steps"] += 1

    # -- reopening ---------------------------------------------------------------------------------------------------
    @rule()
    def close_reopen(self) -> None:
        self.w.close()
        if self.backend == "localfs":  # a new opener too: everything comes back from disk
            self.opener.close()
            self.opener = self._build()
        self.term += 1
        self._open()
        STEP_COUNT["reopens"] += 1
        STEP_COUNT["steps"] += 1

    @precondition(lambda self: self.backend == "localfs")
    @rule()
    def crash_reopen(self) -> None:
        """The process "dies": nothing is closed, every descriptor and the lock vanish, written bytes stay."""
        assert self.fops is not None
        self.fops.process_crash()
        self.w = None
        self.opener = self._build()  # the dead opener is abandoned, its threads fail quietly on the dead files
        self.term += 1
        self._open()
        STEP_COUNT["crashes"] += 1
        STEP_COUNT["steps"] += 1

    # -- reads -------------------------------------------------------------------------------------------------------
    def _read(self, policy: DeliverPolicy, want: int, last: Any = None) -> list[Any]:
        """User messages (ticks skipped) until ``want`` arrived (or the model's ``last`` ID: a truncation may have
        dropped some before it), then anything more within a short grace period."""
        out: list[Any] = []
        s = self.w.read(ReadOption(deliver_policy=policy))
        try:
            deadline = time.monotonic() + 5.0
            grace: float | None = None
            while True:
                now = time.monotonic()
                if grace is None and (len(out) >= want or (last is not None and out and out[-1].message_id >= last)):
                    grace = now + 0.1
                end = grace if grace is not None else deadline
                if now >= end:
                    break
                try:
                    m = s.recv(timeout=end - now)
                except (WALTimeoutError, TimeoutError):
                    break
                if m.message_type in (MessageType.INSERT, MessageType.TXN):
                    out.append(m)
        finally:
            s.close()
        STEP_COUNT["reads"] += 1
        return out

    def _compare(self, got: list[Any], want: list[tuple[Any, tuple[bytes, ...], bool]], what: str) -> None:
        g = [(m.message_id, tuple(bytes(x.payload) for x in m.messages) if m.message_type is MessageType.TXN
              else (bytes(m.payload),), m.message_type is MessageType.TXN) for m in got]
        short = [(str(a), len(b)) for a, b, _ in g]
        assert g == want, f"{what}: got {short}, want {[(str(a), len(b)) for a, b, _ in want]}"

    def _visible(self) -> list[tuple[Any, tuple[bytes, ...], bool]]:
        return list(self.entries)

    @rule()
    def read_all(self) -> None:
        want = self._visible()
        got = self._read(DeliverPolicy.all(), len(want), want[-1][0] if want else None)
        if self.floor is not None and got:  # truncation may have dropped a prefix (whole segments) before floor
            first = got[0].message_id
            lost = [e for e in want if e[0] < first]
            want = [e for e in want if e[0] >= first]
            assert all(e[0] < self.floor for e in lost), "truncate deleted a message at or after its argument"
        self._compare(got, want, "all")
        ticks = [m.time_tick for m in got]
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks), "time ticks not strictly increasing"

    @rule(i=st.integers(0, 1000), after=st.booleans())
    def read_from(self, i: int, after: bool) -> None:
        """From a last-confirmed ID (invariant 4: nothing after it is lost, an open txn's begin is not passed); after
        one only when it is the message's own ID (no txn was open)."""
        points = [c for c in self.checkpoints if not after or c[1] in self.own_ids]
        if not points:
            return
        lc, own = points[i % len(points)]
        if self.floor is not None and lc < self.floor:
            return
        # Invariant 4: from m's last-confirmed ID, everything from m on is delivered (earlier messages may be too).
        pol = DeliverPolicy.start_after(own) if after else DeliverPolicy.start_from(lc)
        want = [e for e in self.entries if (e[0] > own if after else e[0] >= own)]
        got = [m for m in self._read(pol, len(want), want[-1][0] if want else None) if m.message_id >= own]
        self._compare(got, want, f"start_{'after' if after else 'from'}({lc}) for message {own}")

    @rule(p=payloads)
    def read_latest(self, p: bytes) -> None:
        s = self.w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
        try:
            p = self._payload(p)
            r = self.w.append(self._msg(p), timeout=10)
            self.entries.append((r.message_id, (p,), False))
            deadline = time.monotonic() + 10.0
            while True:
                m = s.recv(timeout=max(deadline - time.monotonic(), 0.001))
                if m.message_type is MessageType.INSERT:
                    assert m.message_id == r.message_id and bytes(m.payload) == p, "latest() delivered an old message"
                    break
        finally:
            s.close()
        STEP_COUNT["reads"] += 1


class MemoryModel(WALModel):
    backend = "memory"


class LocalFSModel(WALModel):
    backend = "localfs"


# No shrinking: a failing run replays slowly (reads wait for missing messages), and the printed steps are enough.
_SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("machine", [MemoryModel, LocalFSModel], ids=["memory", "localfs"])
def test_wal_matches_model(machine: type[WALModel]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=_SETTINGS)
    print("model:", STEP_COUNT)
