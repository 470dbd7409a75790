"""A seeded random driver checks what each scanner delivers against a model of the log, through the full WAL on
``memory`` and ``localfs`` (4 KiB segments, a 2 KiB write-ahead buffer, so tailing readers get evicted and fall back
to catch-up, and back).

The writer (this thread, with bursts of concurrent autocommit appends) appends on two vchannels and to every
vchannel, commits, rolls back, lets expire and leaves open transactions, truncates, closes and reopens with a higher
term (localfs: often a second writer on a new opener). Readers in threads (RW scanners of the current writer, RO
scanners that live across terms) start with every deliver policy (IDs taken from append results, a txn's begin and
body, delivered messages and time ticks), every filter, with and without a vchannel, some stalling. RW readers that a
close ended resume on the next writer from their last delivered message (``start_from(lc)`` + ``time_tick_gt(tt)``).

The model says exactly what each reader delivers, in order: a plain message when its ID is at or after the start
(after, for ``start_after``) and it passes the filters; a committed txn, once, as one TXN whose body keeps the
filtered types, when its begin is at or after the start and its commit passes the time-tick filters; nothing rolled
back, expired or never committed. Every delivered message (ticks too) has a time tick above the one before. What a
truncate deleted (wholly before its argument) or retention deleted (starting before the oldest message delivered)
may be missing, nothing else.

``WAL_SCAN_SEEDS=a-b`` runs seeds a..b-1 (default 1-3 per backend, 40 steps; the slow form 100-104, 120 steps;
seeds 100-110 and 200-212 passed in session 14).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import ShutdownError, WALError, WALTimeoutError
from wal.message import ImmutableMessage, MessageType, MutableMessage
from wal.options import DeliverFilter, DeliverFilterKind, DeliverPolicy, DeliverPolicyKind

VCHS = ("v1", "v2")
TYPES = (MessageType.INSERT, MessageType.DELETE)


@dataclass
class Entry:
    """A plain message, or a committed txn (``begin`` set, ``body`` its (type, key) list)."""

    mid: Any
    tt: int
    vch: str | None
    mtype: MessageType
    key: str
    begin: Any = None
    body: list[tuple[MessageType, str]] = field(default_factory=list)
    seq: int = 0  # model order of append (for latest())
    begin_seq: int = 0  # a txn's begin's (latest() delivers a txn only when it saw the begin)

    @property
    def start(self) -> Any:
        return self.begin if self.begin is not None else self.mid


def expected(entries: list[Entry], policy: DeliverPolicy, filters: list[DeliverFilter], vch: str | None,
             latest_seq: int = 0) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in sorted(entries, key=lambda e: e.tt):
        k = policy.kind
        if k is DeliverPolicyKind.LATEST and (e.seq < latest_seq or (e.begin is not None and e.begin_seq < latest_seq)):
            continue
        if k is DeliverPolicyKind.START_FROM and not e.start >= policy.message_id:
            continue
        if k is DeliverPolicyKind.START_AFTER and not e.start > policy.message_id:
            continue
        if vch is not None and e.vch is not None and e.vch != vch:
            continue
        types: frozenset[MessageType] | None = None
        ok = True
        for f in filters:
            if f.kind is DeliverFilterKind.TIME_TICK_GT:
                ok = ok and e.tt > f.time_tick
            elif f.kind is DeliverFilterKind.TIME_TICK_GTE:
                ok = ok and e.tt >= f.time_tick
            else:
                types = f.message_types if types is None else types & f.message_types
        if not ok:
            continue
        if e.begin is not None:
            out.append(("txn", e.mid, tuple(key for t, key in e.body if types is None or t in types)))
        elif types is None or e.mtype in types:
            out.append(("msg", e.mid, e.key))
    return out


def observed(m: ImmutableMessage) -> tuple[Any, ...]:
    if m.message_type is MessageType.TXN:
        return ("txn", m.message_id, tuple(x.properties["k"] for x in m.messages))
    return ("msg", m.message_id, m.properties["k"])


class Reader(threading.Thread):
    def __init__(self, name: str, wal: Any, policy: DeliverPolicy, filters: list[DeliverFilter], vch: str | None,
                 rng: random.Random, latest_seq: int, rw: bool) -> None:
        super().__init__(daemon=True, name=name)
        self.policy, self.filters, self.vch, self.latest_seq, self.rw = policy, filters, vch, latest_seq, rw
        self.stall = rng.random() < 0.4
        self.stall_rng = random.Random(rng.random())
        self.scanner = wal.read(ReadOption(deliver_policy=policy, deliver_filters=list(filters), vchannel=vch))
        self.msgs: list[ImmutableMessage] = []
        self.stop_tt: int | None = None
        self.ended = ""  # "stop", "shutdown", "deadline" or "error"
        self.error: BaseException | None = None

    def describe(self) -> str:
        return f"{self.name}(policy={self.policy}, filters={self.filters}, vch={self.vch}, rw={self.rw})"

    def run(self) -> None:
        deadline: float | None = None
        try:
            while True:
                if self.stop_tt is not None and deadline is None:
                    deadline = time.monotonic() + 20.0
                if deadline is not None and time.monotonic() > deadline:
                    self.ended = "deadline"
                    return
                try:
                    m = self.scanner.recv(timeout=0.1)
                except (WALTimeoutError, TimeoutError):
                    continue
                except ShutdownError:
                    self.ended = "shutdown"
                    return
                self.msgs.append(m)
                if self.stall and self.stall_rng.random() < 0.05:
                    time.sleep(self.stall_rng.choice((0.01, 0.05, 0.15)))
                if self.stop_tt is not None and m.time_tick >= self.stop_tt:
                    self.ended = "stop"
                    return
        except BaseException as e:  # reported by the driver
            self.error = e
            self.ended = "error"
        finally:
            self.scanner.close()


class Driver:
    def __init__(self, backend: str, seed: int) -> None:
        self.backend = backend
        self.rng = random.Random(seed)
        self.seed = seed
        self.root = tempfile.mkdtemp(prefix="wal-scan-model-")
        self.term = 1
        self.entries: list[Entry] = []
        self.ids: list[Any] = []  # IDs seen anywhere (results, begins, bodies, delivered messages)
        self.tts: list[int] = []
        self.seq = 0
        self.n = 0
        self.floor: Any = None
        self.retention = backend == "localfs" and self.rng.random() < 0.3
        self.openers: list[Any] = []
        self.readers: list[Reader] = []
        self.finished: list[Reader] = []
        self.open_txns: list[Any] = []
        self.ro: Any = None
        self.lock = threading.Lock()

    # -- lifetime --------------------------------------------------------------------------------------------------
    def build(self) -> Any:
        # txn_close_timeout: a close waits that long for the txns left open (no thread here ends them, so the wait
        # always runs out); the default 3 s made the close path no different, only 3 s longer per reopen.
        opts: dict[str, Any] = {"time_tick_interval": 0.02, "write_ahead_buffer_bytes": 2048,
                                "write_ahead_buffer_keepalive": 0.1, "txn_keepalive": 5.0, "txn_close_timeout": 0.1}
        if self.backend == "localfs":
            opts.update(root=self.root, segment_bytes=4096, sync="never")
            if self.retention:
                opts.update(retention_bytes=16384)
        op = registry.must_get_builder(self.backend).build(**opts)
        self.openers.append(op)
        return op

    def open_writer(self) -> None:
        self.w = self.opener.open(OpenOption(channel=PChannelInfo(name="c", term=self.term)))

    def reopen(self) -> None:
        """Close the writer (its RW readers end) and open the next term: on localfs often from a second opener, as a
        second writer process would."""
        # Some txns stay open across the close (never committed; the close then waits txn_close_timeout for them,
        # as Milvus's graceful close does), the others are rolled back first.
        if self.open_txns and self.rng.random() < 0.6:
            for t in self.open_txns:
                t.rollback()
        self.open_txns.clear()
        self.w.close()
        self.term += 1
        if self.backend == "localfs" and self.rng.random() < 0.5:
            self.opener = self.build()
        self.open_writer()
        self.resume_ended()

    # -- writes ----------------------------------------------------------------------------------------------------
    def key(self) -> str:
        self.n += 1
        return f"k{self.n}"

    def msg(self, vch: str | None, mtype: MessageType | None = None) -> tuple[MutableMessage, str]:
        k = self.key()
        t = mtype or self.rng.choice(TYPES)
        return MutableMessage(t, b"x" * self.rng.choice((1, 10, 200)), {"k": k}, vchannel=vch), k

    def note(self, r: Any) -> None:
        self.ids.extend((r.message_id, r.last_confirmed_message_id))
        self.tts.append(r.time_tick)

    def add(self, e: Entry, begin_seq: int = 0) -> None:
        with self.lock:
            self.seq += 1
            e.seq = self.seq
            e.begin_seq = begin_seq or self.seq
            self.entries.append(e)

    def append_one(self) -> None:
        vch = self.rng.choice((*VCHS, None))
        m, k = self.msg(vch)
        r = self.w.append(m, timeout=10)
        self.note(r)
        self.add(Entry(r.message_id, r.time_tick, vch, m.message_type, k))

    def burst(self) -> None:
        """Concurrent autocommit appends (several threads, pipelined futures)."""
        def work(seed: float) -> None:
            rng = random.Random(seed)
            futs = []
            for _ in range(rng.randint(1, 12)):
                vch = rng.choice((*VCHS, None))
                with self.lock:
                    m, k = self.msg(vch)
                futs.append((self.w.append_async(m), m, k, vch))
            for f, m, k, vch in futs:
                r = f.result(timeout=10)
                self.add(Entry(r.message_id, r.time_tick, vch, m.message_type, k))

        ts = [threading.Thread(target=work, args=(self.rng.random(),)) for _ in range(self.rng.randint(2, 4))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def txn(self) -> None:
        vch = self.rng.choice(VCHS)
        end = self.rng.choice(("commit", "commit", "rollback", "open", "expire"))
        t = self.w.begin_txn(vch, keepalive=0.15 if end == "expire" else 5.0)
        with self.lock:
            self.seq += 1
            begin_seq = self.seq
        self.ids.append(t.begin_result.message_id)
        self.tts.append(t.begin_result.time_tick)
        body = []
        for _ in range(self.rng.randint(0, 4)):
            m, k = self.msg(vch)
            r = t.append(m)
            self.note(r)
            body.append((m.message_type, k))
            if self.rng.random() < 0.3:
                self.append_one()  # interleaved plain appends
        if end == "commit":
            r = t.commit()
            self.note(r)
            self.add(Entry(r.message_id, r.time_tick, vch, MessageType.TXN, "", begin=t.begin_result.message_id,
                           body=body), begin_seq)
        elif end == "rollback":
            t.rollback()
        elif end == "expire":
            time.sleep(0.3)
            try:
                t.commit(timeout=10)
            except WALError:
                pass
            else:
                raise AssertionError("a txn committed after its keepalive ran out")
        else:
            self.open_txns.append(t)

    def truncate(self) -> None:
        cands = [c for c in self.ids if self.floor is None or c >= self.floor]
        if not cands:
            return
        mid = self.rng.choice(cands[-30:])
        self.w.truncate(mid)
        if self.floor is None or self.floor < mid:
            self.floor = mid

    # -- readers ---------------------------------------------------------------------------------------------------
    def scanned(self) -> None:
        """IDs and time ticks of messages readers delivered: ticks (a not-persisted one carries a last-confirmed ID),
        TXNs (the commit's), their begins and bodies."""
        for r in self.readers:
            for m in list(r.msgs[-20:]):
                self.ids.extend((m.message_id, m.last_confirmed_message_id))
                self.tts.append(m.time_tick)
                if m.message_type is MessageType.TXN:
                    self.ids.extend(x.message_id for x in m.messages)
                    self.ids.append(m.begin.message_id)

    def policy(self) -> DeliverPolicy:
        self.scanned()
        r = self.rng.random()
        if r < 0.15 or not self.ids:
            return DeliverPolicy.all()
        if r < 0.3:
            return DeliverPolicy.latest()
        mid = self.rng.choice(self.ids)
        return DeliverPolicy.start_from(mid) if r < 0.65 else DeliverPolicy.start_after(mid)

    def filters(self) -> list[DeliverFilter]:
        out = []
        if self.tts and self.rng.random() < 0.35:
            t = self.rng.choice(self.tts)
            out.append(DeliverFilter.time_tick_gt(t) if self.rng.random() < 0.5 else DeliverFilter.time_tick_gte(t))
        if self.rng.random() < 0.35:
            out.append(DeliverFilter.message_type(*self.rng.sample(TYPES, self.rng.randint(1, 2))))
        return out

    def start_reader(self, ro: bool = False) -> None:
        wal = self.ro if ro else self.w
        vch = self.rng.choice((*VCHS, None, None))
        r = Reader(f"r{len(self.readers) + len(self.finished)}", wal, self.policy(), self.filters(), vch,
                   self.rng, self.seq + 1, not ro)
        r.start()
        self.readers.append(r)

    def resume_ended(self) -> None:
        """RW readers that the close ended resume on the new writer from their last delivered message."""
        for r in list(self.readers):
            if not r.rw:
                continue
            r.join(30)
            assert not r.is_alive(), r.describe()
            assert r.ended == "shutdown", (r.describe(), r.ended, r.error)
            self.readers.remove(r)
            self.finished.append(r)
            if r.msgs and self.rng.random() < 0.7:
                last = r.msgs[-1]
                fs = [*r.filters, DeliverFilter.time_tick_gt(last.time_tick)]
                nr = Reader(r.name + "+", self.w, DeliverPolicy.start_from(last.last_confirmed_message_id), fs,
                            r.vch, self.rng, 0, True)
                nr.start()
                self.readers.append(nr)

    # -- checks ----------------------------------------------------------------------------------------------------
    def check(self, r: Reader, complete: bool) -> None:
        assert r.error is None, (r.describe(), repr(r.error))
        ticks = [m.time_tick for m in r.msgs]
        assert all(a < b for a, b in itertools.pairwise(ticks)), (r.describe(), "ticks not increasing")
        got = [observed(m) for m in r.msgs if m.message_type is not MessageType.TIME_TICK]
        want = expected(self.entries, r.policy, r.filters, r.vch, r.latest_seq)
        if (self.floor is not None or self.retention) and got:
            # Deleted messages may be missing (README "Truncation"): with truncate, only what lies wholly before its
            # argument (a txn whose commit is before it); with retention, what starts (a txn: its begin) before the
            # oldest message delivered. Nothing else, and the rest in order.
            starts = {e.mid: e.start for e in self.entries}
            oldest = min(m.message_id for m in r.msgs if m.message_type is not MessageType.TIME_TICK)
            got_set = set(got)
            # A reader that falls behind retention goes on at the oldest message kept (README "Truncation"): with
            # retention anything may be missing, but what comes must be whole (a TXN with its whole body) and in order.
            want = [x for x in want if x in got_set or not (
                (not self.retention and x[1] < self.floor) or (self.retention and starts[x[1]] < oldest))]
            if self.retention:
                want = [x for x in want if x in got_set]
        if not complete:
            want = want[: len(got)]
        if got != want:
            n = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            raise AssertionError(
                f"seed {self.seed} {self.backend}: {r.describe()} ended={r.ended}: first difference at {n}: "
                f"got {got[n:n + 3]} want {want[n:n + 3]} (got {len(got)}, want {len(want)}); floor {self.floor}, "
                f"retention {self.retention}, txns (begin, commit) "
                f"{[(e.begin, e.mid) for e in self.entries if e.begin is not None]}"
            )

    def run(self, steps: int) -> None:
        self.opener = self.build()
        self.open_writer()
        self.ro = self.opener.open(OpenOption(channel=PChannelInfo(name="c", access_mode=AccessMode.RO)))
        try:
            for _ in range(steps):
                x = self.rng.random()
                if x < 0.3:
                    self.append_one()
                elif x < 0.45:
                    self.burst()
                elif x < 0.6:
                    self.txn()
                elif x < 0.65:
                    self.truncate()
                elif x < 0.7:
                    self.reopen()
                elif x < 0.82:
                    self.start_reader(ro=self.rng.random() < 0.3)
                elif x < 0.87:
                    time.sleep(0.15)  # stalled readers fall out of the write-ahead buffer
                else:
                    self.append_one()
            # Sentinels: an empty committed txn on each vchannel (passes every type filter), then wait for them.
            stop = 0
            for v in VCHS:
                t = self.w.begin_txn(v)
                r = t.commit()
                self.add(Entry(r.message_id, r.time_tick, v, MessageType.TXN, "", begin=t.begin_result.message_id))
                stop = r.time_tick
            for rd in self.readers:
                rd.stop_tt = stop
            # A tick is delivered only when it releases nothing (README "Reading"), and an idle writer persists none:
            # "end" messages (in no model) until every reader saw a time tick at or past the last sentinel.
            for _ in range(100):
                self.w.append(MutableMessage(MessageType.INSERT, b"", {"k": "end"}, vchannel=None))
                time.sleep(0.05)
                if not any(rd.is_alive() for rd in self.readers):
                    break
            for rd in self.readers:
                rd.join(40)
                assert not rd.is_alive(), rd.describe()
                if rd.ended != "stop":
                    self.check(rd, complete=False)
                    last = rd.msgs[-1] if rd.msgs else None
                    seen = last and (last.message_type.name, last.message_id, last.time_tick)
                    tail = expected(self.entries, rd.policy, rd.filters, rd.vch, rd.latest_seq)[-3:]
                    raise AssertionError(
                        f"seed {self.seed} {self.backend}: {rd.describe()} ended {rd.ended} ({rd.error!r}) after "
                        f"{len(rd.msgs)} messages, the last {seen}, waiting for tick {stop}; expected ... {tail}"
                    )
                # The "end" message may or may not have been delivered: it is in no model.
                rd.msgs = [m for m in rd.msgs if m.message_type is MessageType.TIME_TICK or observed(m)[2] != "end"]
                self.check(rd, complete=True)
            for rd in self.finished:
                self.check(rd, complete=False)
        finally:
            for rd in self.readers:
                rd.scanner.close()
            for op in self.openers:
                op.close()
            shutil.rmtree(self.root, ignore_errors=True)


def _seeds(default: str) -> list[int]:
    a, b = os.environ.get("WAL_SCAN_SEEDS", default).split("-")
    return list(range(int(a), int(b)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("seed", _seeds("1-3"))
def test_scanners_deliver_what_the_model_says(backend: str, seed: int) -> None:
    Driver(backend, seed).run(40)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("seed", _seeds("100-104"))  # 4 seeds keep the suite under 10 min; more by hand
def test_scanners_deliver_what_the_model_says_long(backend: str, seed: int) -> None:
    Driver(backend, seed).run(120)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("how", ["tailing", "evicted", "ro"])
def test_latest_does_not_deliver_a_txn_begun_before_read(backend: str, how: str, tmp_path: Any) -> None:
    """``latest()`` starts after what was appended before ``read()``, a txn's begin included: a txn begun before and
    committed after is not delivered (as ``start_from`` past its begin), whether the reader tails the write-ahead
    buffer, falls back from it to the backend first, or reads a RO WAL."""
    opts: dict[str, Any] = {"time_tick_interval": 0.01, "write_ahead_buffer_bytes": 1024,
                            "write_ahead_buffer_keepalive": 0.05}
    if backend == "localfs":
        opts.update(root=str(tmp_path / "wal"), segment_bytes=4096, sync="never")
    with registry.must_get_builder(backend).build(**opts) as op:
        w = op.open(OpenOption(channel=PChannelInfo(name="c", term=1)))
        src = op.open(OpenOption(channel=PChannelInfo(name="c", access_mode=AccessMode.RO))) if how == "ro" else w
        t = w.begin_txn("v1")
        t.append(MutableMessage(MessageType.INSERT, b"body", {"k": "body"}, vchannel="v1"))
        with src.read(ReadOption(deliver_policy=DeliverPolicy.latest())) as s:
            if how == "evicted":
                for i in range(50):
                    w.append(MutableMessage(MessageType.INSERT, b"x" * 100, {"k": f"p{i}"}, vchannel="v2"))
                time.sleep(0.2)
            t.commit()
            after = w.begin_txn("v1")
            after.append(MutableMessage(MessageType.DELETE, b"", {"k": "after"}, vchannel="v1"))
            r = after.commit()
            got = []
            while True:
                m = s.recv(timeout=10)
                if m.message_type is MessageType.TXN:
                    got.append(observed(m))
                    if m.message_id == r.message_id:
                        break
        assert got == [("txn", r.message_id, ("after",))]
