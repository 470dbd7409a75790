"""End-to-end checks of DESIGN.md's invariants on every registered backend (and a fake one).

Several pchannels in parallel, several terms, concurrent autocommit appends mixed with committed, rolled-back
and expired transactions, readers (RW and RO) that stall long enough to fall out of a small write-ahead buffer,
and readers resuming from a message's last-confirmed ID.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _adaptor_fakes import FakeBuilder, data

from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.adaptor import adapt_impls_to_builder
from wal.errors import TxnExpiredError
from wal.message import ImmutableMessage, ImmutableTxnMessage, MessageType, MutableMessage, TxnContext
from wal.options import DeliverFilter, DeliverPolicy

SMALL_WAB = {"write_ahead_buffer_bytes": 4096, "write_ahead_buffer_keepalive": 0.1, "time_tick_interval": 0.05}


def _backends() -> list[Any]:
    out: list[Any] = [pytest.param("fake", id="fake")]
    names = registry.registered_names()
    for name in ("memory", "localfs"):
        out.append(pytest.param(name, marks=pytest.mark.skipif(name not in names, reason=f"{name} not registered")))
    return out


@pytest.fixture(params=_backends())
def make_opener(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., Any]]:
    name = request.param
    openers: list[Any] = []

    def make(**opts: Any) -> Any:
        b = adapt_impls_to_builder(FakeBuilder()) if name == "fake" else registry.must_get_builder(name)
        if name == "localfs":
            opts.setdefault("root", str(tmp_path / "wal"))
            opts.setdefault("segment_bytes", 1 << 20)  # not the default 64 MiB, preallocated per channel
        op = b.build(**opts)
        openers.append(op)
        return op

    yield make
    for op in openers:
        op.close()


def insert(key: str, v: str = "v1") -> MutableMessage:
    return MutableMessage(MessageType.INSERT, key.encode(), {"k": key}, vchannel=v)


def key_of(m: ImmutableMessage) -> Any:
    if isinstance(m, ImmutableTxnMessage):
        return tuple(x.properties["k"] for x in m.messages)
    return m.properties["k"] if "k" in m.properties else bytes(m.payload).decode()  # ``plain`` keys its payload


class Reader(threading.Thread):
    """Reads a scanner until it has seen ``stop_key``; checks order and collects keys."""

    def __init__(self, scanner: Any, stall_every: int = 0, stall: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.s = scanner
        self.stall_every = stall_every
        self.stall = stall
        self.keys: list[Any] = []
        self.msgs: list[ImmutableMessage] = []
        self.stop_keys: set[str] = set()
        self.error: BaseException | None = None
        self.last_tt = 0
        self.lock = threading.Condition()

    def run(self) -> None:
        try:
            n = 0
            for m in self.s:
                assert m.time_tick > self.last_tt, f"{self.s.name}: tt {m.time_tick} after {self.last_tt}"
                self.last_tt = m.time_tick
                assert m.last_confirmed_message_id <= m.message_id
                if m.message_type is MessageType.TIME_TICK:
                    continue
                if isinstance(m, ImmutableTxnMessage):
                    assert m.last_confirmed_message_id <= m.begin.message_id
                with self.lock:
                    self.keys.append(key_of(m))
                    self.msgs.append(m)
                    self.lock.notify_all()
                n += 1
                if self.stall_every and n % self.stall_every == 0:
                    time.sleep(self.stall)
        except BaseException as e:  # reported by wait_for
            self.error = e
            with self.lock:
                self.lock.notify_all()

    def wait_for(self, key: str, timeout: float = 20.0) -> None:
        with self.lock:
            ok = self.lock.wait_for(lambda: self.error is not None or key in self.keys, timeout)
        assert self.error is None, self.error
        assert ok, f"{self.s.name}: {key} not delivered within {timeout}s ({len(self.keys)} keys)"


def write_term(w: Any, name: str, term: int, n_auto: int) -> list[Any]:
    """Concurrent autocommit writers plus a txn writer; returns the keys that must be delivered."""
    expected: list[Any] = []
    lock = threading.Lock()

    def auto(tid: int) -> None:
        futs = []
        for i in range(n_auto):
            k = f"{name}/{term}/a{tid}/{i}"
            if i % 7 == 0:
                w.append(insert(k))
            else:
                futs.append(w.append_async(insert(k)))
            with lock:
                expected.append(k)
        for f in futs:
            f.result(10)

    def txns() -> None:
        for j in range(4):
            ks = tuple(f"{name}/{term}/t{j}/{x}" for x in range(3))
            with w.begin_txn("v1", keepalive=5.0) as t:  # committed
                for k in ks:
                    t.append(insert(k))
            with lock:
                expected.append(ks)
            t2 = w.begin_txn("v1")  # rolled back
            t2.append(insert(f"{name}/{term}/rb{j}"))
            t2.rollback()
            t3 = w.begin_txn("v1", keepalive=0.1)  # expired
            try:
                t3.append(insert(f"{name}/{term}/ex{j}"))
            except TxnExpiredError:
                pass  # a loaded machine may take longer than the keepalive already: expired either way
            time.sleep(0.25)
            with pytest.raises(TxnExpiredError):
                t3.commit()
        # Milvus style, by hand.
        b = w.append(MutableMessage(MessageType.BEGIN_TXN, b"", vchannel="v1"))
        assert b.txn_ctx is not None
        k = f"{name}/{term}/manual"
        w.append(MutableMessage(MessageType.INSERT, b"m", {"k": k}, vchannel="v1", txn_ctx=b.txn_ctx))
        w.append(MutableMessage(MessageType.COMMIT_TXN, b"", vchannel="v1", txn_ctx=b.txn_ctx))
        with lock:
            expected.append((k,))

    ts = [threading.Thread(target=auto, args=(i,)) for i in range(2)] + [threading.Thread(target=txns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    end = f"{name}/{term}/end"
    w.append(insert(end))
    expected.append(end)
    return expected


def run_channel(op: Any, name: str, terms: int, n_auto: int, errors: list[BaseException]) -> None:
    try:
        expected: list[Any] = []
        evicted = 0
        last_tt = 0
        for term in range(1, terms + 1):
            w = op.open(OpenOption(PChannelInfo(name, term)))
            ro = op.open(OpenOption(PChannelInfo(name, term, AccessMode.RO)))
            readers = [
                Reader(w.read(ReadOption(name=f"{name}-fast-{term}"))),
                Reader(w.read(ReadOption(name=f"{name}-slow-{term}")), stall_every=40, stall=0.25),
                Reader(ro.read(ReadOption(name=f"{name}-ro-{term}")), stall_every=60, stall=0.2),
            ]
            for r in readers:
                r.start()
            new = write_term(w, name, term, n_auto)
            expected += new
            for r in readers:
                r.wait_for(new[-1])
                assert len(r.keys) == len(set(r.keys)), f"{r.s.name}: duplicates"
                assert sorted(map(str, r.keys)) == sorted(map(str, expected)), f"{r.s.name}: lost or extra"
            first_tt = min(m.time_tick for m in readers[0].msgs if key_of(m) in set(new))
            assert first_tt > last_tt, "time ticks went back across terms"
            last_tt = readers[0].last_tt
            evicted += readers[1].s.stats["to_catchup"]
            ro.close()
            w.close()
            for r in readers:
                r.join(5)
                assert not r.is_alive() and r.error is None, r.error
        assert evicted >= 1, "the stalled RW reader never fell out of the write-ahead buffer"
    except BaseException as e:
        errors.append(e)


@pytest.mark.timeout(120)
def test_parallel_channels_terms_txns_and_stalled_readers(make_opener: Callable[..., Any]) -> None:
    op = make_opener(**SMALL_WAB)
    errors: list[BaseException] = []
    ts = [threading.Thread(target=run_channel, args=(op, f"ch{i}", 2, 120, errors)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(100)
    assert not errors, errors


def read_all(s: Any, n: int, timeout: float = 10.0) -> list[ImmutableMessage]:
    return data(s, n, timeout)


def assert_nothing_more(s: Any, wait: float = 0.3) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            m = s.recv(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return
        assert m.message_type is MessageType.TIME_TICK, f"unexpected extra message {m!r}"


@pytest.mark.timeout(120)
def test_resume_from_last_confirmed(make_opener: Callable[..., Any]) -> None:
    """Invariant 4: from start_from(m.lc) with time_tick_gt(m.tt) (or _gte) nothing is lost or duplicated."""
    op = make_opener(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("resume", 1)))
    expected = write_term(w, "resume", 1, 60)
    # An open transaction spanning the resume points: its begin holds the last-confirmed IDs back.
    late = w.begin_txn("v1", keepalive=30.0)
    late.append(insert("late-1"))
    extra = [f"after/{i}" for i in range(20)]
    for k in extra:
        w.append(insert(k))
    late.append(insert("late-2"))
    late.commit()
    expected += [*extra, ("late-1", "late-2")]
    with w.read(ReadOption()) as s:
        full = read_all(s, len(expected))
    assert sorted(map(str, map(key_of, full))) == sorted(map(str, expected))
    keys = [key_of(m) for m in full]
    rng = random.Random(7)
    ro = op.open(OpenOption(PChannelInfo("resume", 1, AccessMode.RO)))
    for k in [*rng.sample(range(len(full)), 12), len(full) - 1]:
        m = full[k]
        for f, start, src in (
            (DeliverFilter.time_tick_gt(m.time_tick), k + 1, w),
            (DeliverFilter.time_tick_gte(m.time_tick), k, ro),
        ):
            opt = ReadOption(deliver_policy=DeliverPolicy.start_from(m.last_confirmed_message_id), deliver_filters=[f])
            with src.read(opt) as s:
                got = [key_of(x) for x in read_all(s, len(full) - start)]
                assert got == keys[start:], f"resume after #{k} ({f.kind.name})"
                assert_nothing_more(s, 0.05)
    ro.close()
    w.close()


@pytest.mark.timeout(60)
def test_fence_tick_and_time_ticks_across_terms(make_opener: Callable[..., Any]) -> None:
    """Invariant 2: opening for writing appends a persisted TIME_TICK first; ticks keep growing across terms."""
    op = make_opener()
    last = 0
    for term in (1, 2, 3):
        w = op.open(OpenOption(PChannelInfo("fence", term)))
        rs = [w.append(insert(f"{term}/{i}")) for i in range(5)]
        assert rs[0].time_tick > last
        assert [r.time_tick for r in rs] == sorted({r.time_tick for r in rs})
        assert all(r.last_confirmed_message_id <= r.message_id for r in rs)
        last = rs[-1].time_tick
        w.close()
    ro = op.open(OpenOption(PChannelInfo("fence", 3, AccessMode.RO)))
    raw = ro._impls.read(__import__("wal.walimpls", fromlist=["ReadOption"]).ReadOption(name="raw"))
    seen: list[ImmutableMessage] = []
    while len([m for m in seen if m.message_type is MessageType.INSERT]) < 15:
        seen.append(raw.recv(5))
    raw.close()
    for term in (1, 2, 3):
        first = next(m for m in seen if m.wal_term == term)
        assert first.message_type is MessageType.TIME_TICK and first.is_persisted
        assert first.last_confirmed_message_id == first.message_id
    ro.close()


@pytest.mark.timeout(60)
def test_latest_and_vchannel_and_type_filters(make_opener: Callable[..., Any]) -> None:
    op = make_opener(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("filters", 1)))
    w.append(insert("before"))
    s_latest = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))
    s_v2 = w.read(ReadOption(vchannel="v2"))
    s_del = w.read(ReadOption(deliver_filters=[DeliverFilter.message_type(MessageType.DELETE)]))
    w.append(insert("a1", "v1"))
    w.append(insert("a2", "v2"))
    w.append(MutableMessage(MessageType.DELETE, b"d", {"k": "d1"}, vchannel="v1"))
    w.append(MutableMessage(MessageType.FLUSH, b"", {"k": "all"}))  # for every vchannel
    assert [key_of(m) for m in read_all(s_latest, 4)] == ["a1", "a2", "d1", "all"]
    assert [key_of(m) for m in read_all(s_v2, 2)] == ["a2", "all"]
    assert [key_of(m) for m in read_all(s_del, 1)] == ["d1"]
    for s in (s_latest, s_v2, s_del):
        assert_nothing_more(s, 0.15)
    w.close()
    for s in (s_latest, s_v2, s_del):
        assert s.done().is_set() and s.error() is None


@pytest.mark.timeout(60)
def test_mvcc_and_idle_wal_does_not_grow(make_opener: Callable[..., Any]) -> None:
    op = make_opener(time_tick_interval=0.02)
    w = op.open(OpenOption(PChannelInfo("idle", 1)))
    r = w.append(insert("x"))
    assert w.get_latest_mvcc_timestamp("v1") >= r.time_tick
    assert w.get_latest_mvcc_timestamp("other") >= r.time_tick
    time.sleep(0.2)  # the tick after the write is persisted ...
    before = w.sync_operator.persisted_ticks
    time.sleep(0.3)  # ... but an idle WAL persists nothing more
    assert w.sync_operator.persisted_ticks == before
    # Idle ticks still reach tailing readers.
    with w.read(ReadOption(deliver_policy=DeliverPolicy.latest())) as s:
        assert s.recv(2).message_type is MessageType.TIME_TICK
    w.close()


@pytest.mark.timeout(60)
def test_async_for(make_opener: Callable[..., Any]) -> None:
    import asyncio

    op = make_opener()
    w = op.open(OpenOption(PChannelInfo("aio", 1)))
    for i in range(5):
        w.append(insert(str(i)))

    async def consume() -> list[str]:
        out: list[str] = []
        async for m in w.read(ReadOption()):
            if m.message_type is MessageType.INSERT:
                out.append(m.properties["k"])
                if len(out) == 5:
                    break
        return out

    assert asyncio.run(consume()) == [str(i) for i in range(5)]
    w.close()


def test_txn_context_manager_rolls_back_on_error(make_opener: Callable[..., Any]) -> None:
    op = make_opener(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("txn", 1)))
    with pytest.raises(RuntimeError), w.begin_txn("v1") as t:
        t.append(insert("no"))
        raise RuntimeError("abort")
    with w.begin_txn("v1") as t:
        assert isinstance(t.txn_ctx, TxnContext)
        t.append(insert("yes"))
    w.append(insert("end"))
    with w.read(ReadOption()) as s:
        got = [key_of(m) for m in read_all(s, 2)]
    assert got == [("yes",), "end"]
    w.close()


@pytest.mark.timeout(60)
def test_restart_keeps_messages_and_time_ticks(make_opener: Callable[..., Any], request: pytest.FixtureRequest) -> None:
    """Invariants 1 and 2 across a restart (a new opener on the same storage; persistent backends only)."""
    if request.node.callspec.params["make_opener"] != "localfs":
        pytest.skip("only a persistent backend keeps messages across openers")
    op = make_opener(time_tick_interval=0.05)
    w = op.open(OpenOption(PChannelInfo("restart", 1)))
    first = write_term(w, "restart", 1, 30)
    last_tt = w.append(insert("last-of-1")).time_tick
    first.append("last-of-1")
    op.close()
    op2 = make_opener(time_tick_interval=0.05)
    w2 = op2.open(OpenOption(PChannelInfo("restart", 2)))
    r = w2.append(insert("first-of-2"))
    assert r.time_tick > last_tt
    with w2.read(ReadOption()) as s:
        got = [key_of(m) for m in read_all(s, len(first) + 1)]
        assert_nothing_more(s, 0.1)
    assert sorted(map(str, got)) == sorted(map(str, [*first, "first-of-2"]))
    assert got[-1] == "first-of-2"
    w2.close()


@pytest.mark.timeout(120)
def test_pipelining_producers_that_run_the_periodic_ticks_lose_nothing(make_opener: Callable[..., Any]) -> None:
    """Producers of ``append_async`` that fill batches run them in their own threads, and the periodic ticks that
    fall due as a batch ends (small batches and a 10 ms tick interval: ~100 batches and a few producer-run ticks
    per second here, the thread running the others), beside a synchronous appender: readers that tail, stall out
    of a small write-ahead buffer or read RO still see every message exactly once in time-tick order, and the WAL
    keeps persisting ticks while data is written."""
    op = make_opener(**{**SMALL_WAB, "time_tick_interval": 0.01}, max_append_batch=16, max_inflight_appends=256)
    w = op.open(OpenOption(PChannelInfo("pipe-ticks", 1)))
    ro = op.open(OpenOption(PChannelInfo("pipe-ticks", 1, AccessMode.RO)))
    readers = [
        Reader(w.read(ReadOption(name="fast"))),
        Reader(w.read(ReadOption(name="slow")), stall_every=200, stall=0.2),
        Reader(ro.read(ReadOption(name="ro"))),
    ]
    for r in readers:
        r.start()
    ticks_before = w.sync_operator.persisted_ticks
    expected: list[str] = []
    lock = threading.Lock()

    def producer(p: int) -> None:
        window: list[Any] = []
        for i in range(1000):
            k = f"p{p}/{i}"
            window.append(w.append_async(insert(k, f"v{i % 3}")))
            with lock:
                expected.append(k)
            if len(window) > 200:
                window.pop(0).result(10)
        for f in window:
            f.result(10)

    def sync_appender() -> None:
        for i in range(20):
            k = f"s/{i}"
            w.append(insert(k))
            with lock:
                expected.append(k)
            time.sleep(0.03)

    ts = [threading.Thread(target=producer, args=(p,)) for p in range(2)] + [threading.Thread(target=sync_appender)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert w.sync_operator.persisted_ticks - ticks_before >= 2  # ticks kept coming while data was written
    w.append(insert("end"))
    expected.append("end")
    for r in readers:
        r.wait_for("end")
        assert len(r.keys) == len(set(r.keys)), f"{r.s.name}: duplicates"
        assert sorted(r.keys) == sorted(expected), f"{r.s.name}: lost or extra"
    ro.close()
    w.close()
    for r in readers:
        r.join(5)
        assert not r.is_alive() and r.error is None, r.error


def plain(key: str) -> MutableMessage:
    """A message without properties: the write-ahead buffer's compact form (``insert`` carries one)."""
    return MutableMessage(MessageType.INSERT, key.encode(), None, vchannel="v1")


@pytest.mark.parametrize("seed", [1, 2])
def test_readers_coming_and_going_while_the_buffer_is_kept_on_demand(
    make_opener: Callable[..., Any], seed: int
) -> None:
    """The write-ahead buffer keeps messages only while someone reads it (a 50 ms keepalive here, so it starts and
    stops keeping many times): readers opened at random moments from the start, after a random acknowledged
    message or at the newest tick, some stalling past the keepalive, each see exactly the messages after their
    start, once and in order, while a writer pipelines, groups and appends one at a time with pauses."""
    rng = random.Random(seed)
    op = make_opener(write_ahead_buffer_keepalive=0.05, time_tick_interval=0.02, max_append_batch=64)
    w = op.open(OpenOption(PChannelInfo(f"od{seed}", 1)))
    first_min_tt = w._wab._min_tt
    written: list[tuple[Any, str]] = []  # (message ID, key), acknowledged, in order
    lock = threading.Lock()
    done = threading.Event()

    def writer() -> None:
        wrng = random.Random(seed + 100)
        i = 0
        while i < 3000:
            kind = wrng.random()
            if kind < 0.5:
                keys = [f"a{i + j}" for j in range(wrng.randint(1, 300))]
                rs = [f.result(10) for f in [w.append_async(plain(k)) for k in keys]]
            elif kind < 0.8:
                keys = [f"g{i + j}" for j in range(wrng.randint(1, 50))]
                rs = w.append_messages([plain(k) for k in keys])
            else:
                keys = [f"s{i}"]
                rs = [w.append(plain(keys[0]))]
            with lock:
                written.extend(zip((r.message_id for r in rs), keys, strict=True))
            i += len(keys)
            if wrng.random() < 0.1:
                time.sleep(wrng.choice([0.001, 0.03, 0.08]))  # sometimes past the keepalive
        done.set()

    readers: list[tuple[Reader, list[str] | None]] = []  # the reader, and the keys it must see (None: a suffix)
    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        time.sleep(rng.choice([0.005, 0.02, 0.06]))
        with lock:
            snapshot = list(written)
        policy = rng.random()
        stall = (rng.randint(50, 400), 0.07) if rng.random() < 0.3 else (0, 0.0)
        name = f"r{len(readers)}"
        if policy < 0.35 or not snapshot:
            r = Reader(w.read(ReadOption(name=name)), *stall)
            readers.append((r, ["all"]))
        elif policy < 0.7:
            k = rng.randrange(len(snapshot))
            r = Reader(w.read(ReadOption(name=name, deliver_policy=DeliverPolicy.start_after(snapshot[k][0]))), *stall)
            readers.append((r, [key for _, key in snapshot[: k + 1]]))  # what it must not see
        else:
            r = Reader(w.read(ReadOption(name=name, deliver_policy=DeliverPolicy.latest())), *stall)
            readers.append((r, None))
        r.start()
    t.join(60)
    w.append(plain("end"))
    all_keys = [key for _, key in written] + ["end"]
    for r, spec in readers:
        r.wait_for("end")
        assert len(r.keys) == len(set(r.keys)), f"{r.s.name}: duplicates"
        if spec == ["all"]:
            assert r.keys == all_keys, f"{r.s.name}: lost or extra"
        elif spec is None:  # latest(): everything from some message on
            assert r.keys == all_keys[len(all_keys) - len(r.keys):], f"{r.s.name}: not a suffix"
        else:
            assert r.keys == all_keys[len(spec):], f"{r.s.name}: not everything after its start"
    assert w._wab._min_tt > first_min_tt  # the buffer did drop what nobody read
    assert len(readers) >= 5
    w.close()
    for r, _ in readers:
        r.join(5)
        assert not r.is_alive() and r.error is None, r.error
