"""The backend conformance kit: run it against your ``OpenerBuilderImpls`` to check the backend contract.

It ports Milvus's walimpls test framework (``milvus-tests.md`` kit A): three channels in parallel, each through
terms 1 to 3; per term a writer with up to five concurrent appends and two scanners tailing from the start, which
must see every message of every term in ID order; ``start_from``/``start_after``/``latest`` exactness;
read-only WALs refusing writes (and reading everything); ten scanners opened and closed at once; then truncate
and reopen at term 4, where messages at and after the truncation point must stay readable.

Beyond Milvus it checks what the adaptor relies on:

- what a scanner delivers is exactly what was appended: type, payload, properties, vchannel, time tick (real
  hybrid ticks, which do not fit a double), last-confirmed ID (another message's too), txn context and term, on
  messages of several types (a transaction's begin, body and commit, time ticks, another vchannel);
- ``append_batch`` returns one increasing ID per message (the adaptor appends nothing else);
- ``recv_batch`` in small batches loses nothing at batch boundaries;
- a ``latest`` scanner, on the writer and on a read-only WAL open beside it, delivers exactly what is appended
  after it opened (read-only WALs follow a live writer);
- a read with the ``vchannel`` hint still delivers that vchannel's messages, those for every vchannel and every
  time tick among them;
- ``close`` wakes a scanner blocked in ``recv(None)``;
- an RW open at a term older than one seen raises ``FencedError``;
- ``last_time_tick()`` is 0 or the largest stored tick.

It needs no test framework::

    from wal.helper.conformance import WALImplsConformance
    WALImplsConformance(MyBuilder(), message_count=100, build_options={"url": ...}).run()

Every wait has a timeout and a watchdog names the step a thread is stuck in, so a broken backend fails with
:class:`ConformanceError` instead of hanging the test run.
"""

from __future__ import annotations

import itertools
import queue
import random
import string
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from .._types import AccessMode, OpenOption, PChannelInfo
from ..errors import AccessModeError, FencedError, ShutdownError, WALTimeoutError
from ..message import ImmutableMessage, MessageID, MessageType, MutableMessage, TxnContext, compose_ts
from ..options import DeliverPolicy
from ..walimpls import OpenerBuilderImpls, OpenerImpls, ReadOption, ROWALImpls, ScannerImpls, WALImpls

__all__ = ["ConformanceError", "WALImplsConformance"]

_MAX_CONCURRENT_APPENDS = 5
_FAST_CLOSE_SCANNERS = 10
_SMALL_BATCH = 7  # recv_batch size of the second read-only pass: many batch boundaries
_RICH = 5  # messages per term of the kit's append_batch (see WALImplsConformance._rich_batch)
_TICK_JUMP = 1 << 20
"""How far above the kit's tick counter the rich batch's begin is stamped: the counter steps by one per message,
so every later message of the run, the final tick included, stays below it."""


class ConformanceError(AssertionError):
    """The backend broke the contract; the message says which check, on which channel and term."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise ConformanceError(what)


class _Watch:
    """The last step a channel's threads reported, and when: a step that stays too long is a hang."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._step = "start"
        self._at = time.monotonic()
        self._hang: str | None = None

    def touch(self, step: str | None = None) -> None:
        with self._lock:
            if step is not None:
                self._step = step
            self._at = time.monotonic()

    def stale(self, limit: float) -> str | None:
        """The first hang seen, for good: the stuck thread's cleanup (a ``finally`` closing the WAL) touches the
        watch again and may hang too, and the report must still name the step that hung first."""
        with self._lock:
            idle = time.monotonic() - self._at
            if self._hang is None and idle > limit:
                self._hang = f"{self.where}: no progress for {idle:.1f} s during {self._step!r} (hang?)"
            return self._hang


def _start(errors: list[BaseException], fn: Callable[..., None], *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            fn(*args)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True, name=f"conformance-{getattr(fn, '__name__', 'task')}")
    t.start()
    return t


class WALImplsConformance:
    """One run of the kit against one backend builder.

    ``wait_timeout`` bounds every single wait (one receive, one append, one open or close); ``latest_quiet_seconds``
    is how long a ``latest`` scanner must stay silent.
    """

    def __init__(
        self,
        builder: OpenerBuilderImpls,
        *,
        message_count: int = 100,
        build_options: Mapping[str, Any] | None = None,
        channel_prefix: str = "test",
        channels: int = 3,
        terms: int = 3,
        latest_quiet_seconds: float = 1.0,
        wait_timeout: float = 30.0,
    ) -> None:
        if message_count < 4:
            raise ValueError("message_count must be at least 4")
        if channels < 1 or terms < 1:
            raise ValueError("channels and terms must be at least 1")
        self.builder = builder
        self.message_count = message_count
        self.build_options = dict(build_options or {})
        self.channel_prefix = channel_prefix
        self.channels = channels
        self.terms = terms
        self.latest_quiet_seconds = latest_quiet_seconds
        self.wait_timeout = wait_timeout
        # Backends store ticks but never assign them: the kit stamps an increasing one on every message. Real hybrid
        # ticks (physical ms << 18): above 2**53, so a backend that stores them as a double loses them.
        self._tt = itertools.count(compose_ts(int(time.time() * 1000), 0))
        self._tt_lock = threading.Lock()

    @property
    def _stale_after(self) -> float:
        return 2 * self.wait_timeout + self.latest_quiet_seconds + 1.0

    # -- entry point ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Run every check; raises :class:`ConformanceError` on the first broken one."""
        try:
            opener = self.builder.build(**self.build_options)
        except Exception as e:
            raise ConformanceError(f"builder.build({self.build_options!r}) raised {type(e).__name__}: {e}") from e
        _expect(opener is not None, "builder.build() returned None")
        errors: list[BaseException] = []
        try:
            watches = [_Watch(f"channel #{i}") for i in range(self.channels)]
            threads = [_start(errors, self._run_channel, opener, i, watches[i]) for i in range(self.channels)]
            self._join(threads, watches, errors)
            self._raise_first(errors)
        except BaseException:
            try:  # the first failure is the news: a close that fails or hangs after it must not hide it
                self._bounded(opener.close, "opener.close()")
            except Exception:
                pass
            raise
        self._bounded(opener.close, "opener.close()")

    def _join(self, threads: list[threading.Thread], watches: list[_Watch], errors: list[BaseException]) -> None:
        """Wait for ``threads``; stop early on an error or when a watch goes stale."""
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.05)
            if errors:
                return
            for w in watches:
                msg = w.stale(self._stale_after)
                if msg is not None:
                    raise ConformanceError(msg)

    @staticmethod
    def _raise_first(errors: list[BaseException]) -> None:
        if not errors:
            return
        first = errors[0]
        if isinstance(first, ConformanceError):
            raise first
        raise ConformanceError(f"unexpected error: {type(first).__name__}: {first}") from first

    def _bounded(self, fn: Callable[[], object], what: str) -> Any:
        """Call ``fn`` in a helper thread and wait at most ``wait_timeout`` for it (a close must not hang)."""
        f: Future[Any] = Future()

        def run() -> None:
            try:
                f.set_result(fn())
            except BaseException as e:
                f.set_exception(e)

        threading.Thread(target=run, daemon=True, name="conformance-bounded").start()
        try:
            return f.result(self.wait_timeout)
        except FutureTimeoutError:
            raise ConformanceError(f"{what} did not return within {self.wait_timeout} s") from None

    # -- one channel ------------------------------------------------------------------------------------------------
    def _open(self, opener: OpenerImpls, name: str, term: int, mode: AccessMode, watch: _Watch) -> WALImpls:
        where = f"{name}@{term}"
        watch.touch(f"{where}: open {mode.name}")
        try:
            w = opener.open(OpenOption(channel=PChannelInfo(name, term, mode)))
        except Exception as e:
            raise ConformanceError(f"{where}: open {mode.name} raised {type(e).__name__}: {e}") from e
        _expect(w is not None, f"{where}: open {mode.name} returned None")
        ch = w.channel
        _expect(ch.name == name, f"{where}: channel name is {ch.name!r}")
        _expect(ch.term == term, f"{where}: channel term is {ch.term}")
        _expect(ch.access_mode is mode, f"{where}: channel access mode is {ch.access_mode!r}, want {mode.name}")
        watch.touch()
        return w

    def _close(self, w: ROWALImpls | ScannerImpls, what: str, watch: _Watch) -> None:
        watch.touch(f"{what}: close")
        w.close()
        watch.touch()

    def _run_channel(self, opener: OpenerImpls, i: int, watch: _Watch) -> None:
        name = f"{self.channel_prefix}_{i}_{''.join(random.choices(string.ascii_lowercase, k=10))}"
        watch.where = f"channel {name}"
        written: list[ImmutableMessage] = []
        for term in range(1, self.terms + 1):
            w = self._open(opener, name, term, AccessMode.RW, watch)
            try:
                self._check_last_time_tick(w, written, f"{name}@{term}")
                self._read_write(opener, w, name, term, written, watch)
            finally:
                self._close(w, f"{name}@{term}", watch)
            if term > 1:
                self._check_fenced(opener, name, term, watch)
            ro = self._open(opener, name, term, AccessMode.RO, watch)
            try:
                self._check_read_only(ro, name, term, written, watch)
            finally:
                self._close(ro, f"{name}@{term} RO", watch)
        self._truncate_and_reopen(opener, name, self.terms + 1, written, watch)

    def _check_fenced(self, opener: OpenerImpls, name: str, term: int, watch: _Watch) -> None:
        """An RW open at an older term than one the channel has seen: ``FencedError`` (the term never goes back,
        so an old writer coming back cannot interleave its appends with the new one's)."""
        where = f"{name}@{term - 1} after term {term}"
        watch.touch(f"{where}: RW open at an older term")
        try:
            w = opener.open(OpenOption(channel=PChannelInfo(name, term - 1, AccessMode.RW)))
        except FencedError:
            watch.touch()
            return
        except Exception as e:
            raise ConformanceError(f"{where}: RW open raised {type(e).__name__}: {e}, want FencedError") from e
        self._close(w, where, watch)
        raise ConformanceError(f"{where}: RW open at an older term succeeded, want FencedError")

    def _check_last_time_tick(self, w: WALImpls, written: list[ImmutableMessage], where: str) -> None:
        got = w.last_time_tick()
        want = max((m.time_tick for m in written), default=0)
        last = written[-1].time_tick if written else 0
        _expect(
            got in (0, want),
            f"{where}: last_time_tick() is {got}, want {want} (the largest stored time tick) or 0 (unknown)"
            + (" (it is the last record's: records may be stored out of tick order)" if got == last else ""),
        )

    def _check_read_only(
        self, ro: WALImpls, name: str, term: int, written: list[ImmutableMessage], watch: _Watch
    ) -> None:
        where = f"{name}@{term} RO"
        watch.touch(f"{where}: refusing writes")
        for what, call in (
            ("append", lambda: ro.append(self._insert(0))),
            ("append_batch", lambda: ro.append_batch([self._insert(0)])),
            ("truncate", lambda: ro.truncate(written[-1].message_id)),
        ):
            try:
                call()
            except AccessModeError:
                continue
            except Exception as e:
                raise ConformanceError(f"{where}: {what} raised {type(e).__name__}, want AccessModeError") from e
            raise ConformanceError(f"{where}: {what} on a read-only WAL did not raise AccessModeError")
        # A read-only WAL reads everything the writers stored (through recv_batch, the scan path): in batches as
        # large as what is left, then in small ones (many batch boundaries).
        for size in (0, _SMALL_BATCH):
            sname = f"scanner_read_only_batch_{size or 'all'}"
            watch.touch(f"{where}: reading all, {sname}")
            s = ro.read(ReadOption(name=sname, deliver_policy=DeliverPolicy.all()))
            try:
                got: list[ImmutableMessage] = []
                while len(got) < len(written):
                    want = len(written) - len(got) if not size else min(size, len(written) - len(got))
                    try:
                        batch = s.recv_batch(want, self.wait_timeout)
                    except TimeoutError:
                        raise ConformanceError(
                            f"{where}: {sname} stopped after {len(got)} of {len(written)} messages (no message within "
                            f"{self.wait_timeout} s)"
                        ) from None
                    _expect(bool(batch), f"{where}: {sname}: recv_batch returned nothing")
                    _expect(len(batch) <= want, f"{where}: {sname}: recv_batch({want}) returned {len(batch)}")
                    got.extend(batch)
                    watch.touch()
                for a, b in zip(got, written, strict=True):
                    self._same(a, b, f"{where}: {sname}")
            finally:
                self._close(s, f"{where}: {sname}", watch)

    def _truncate_and_reopen(
        self, opener: OpenerImpls, name: str, term: int, written: list[ImmutableMessage], watch: _Watch
    ) -> None:
        where = f"{name}@{term}"
        w = self._open(opener, name, term, AccessMode.RW, watch)
        try:
            self._check_last_time_tick(w, written, where)
            watch.touch(f"{where}: append before truncate")
            m = self._stamp(MutableMessage(MessageType.INSERT, b"truncate", {}, "v1"))
            mid = w.append(m)
            _expect(mid is not None, f"{where}: append before truncate returned None")
            written.append(m.into_immutable(mid))
            watch.touch(f"{where}: truncate")
            w.truncate(mid)
            self._check_after_truncate(w, written, f"{where}: after truncate", watch)
        finally:
            self._close(w, where, watch)
        w = self._open(opener, name, term, AccessMode.RW, watch)
        try:
            self._check_after_truncate(w, written, f"{where}: reopened after truncate", watch)
        finally:
            self._close(w, where, watch)

    def _check_after_truncate(self, w: WALImpls, written: list[ImmutableMessage], where: str, watch: _Watch) -> None:
        """The truncation point stays readable by ``start_from`` and ``all``; what ``all`` gives before it is a
        suffix of what was written (the backend may have dropped any prefix)."""
        last = written[-1]
        watch.touch(f"{where}: start_from the truncation point")
        self._expect_sequence(
            w, "scanner_after_truncate", DeliverPolicy.start_from(last.message_id), [last], where, watch
        )
        watch.touch(f"{where}: all")
        s = w.read(ReadOption(name="scanner_all_after_truncate", deliver_policy=DeliverPolicy.all()))
        try:
            try:
                first = s.recv(self.wait_timeout)
            except TimeoutError:
                raise ConformanceError(f"{where}: scanner_all_after_truncate delivered nothing within "
                                       f"{self.wait_timeout} s (the truncation point must stay readable)") from None
            _expect(first.message_id <= last.message_id, f"{where}: all() starts after the truncation point")
            idx = next((k for k, m in enumerate(written) if m.message_id == first.message_id), None)
            _expect(idx is not None, f"{where}: all() starts at {first.message_id!r}, which was never written")
            assert idx is not None
            self._same(first, written[idx], f"{where}: scanner_all_after_truncate")
            for k, want in enumerate(written[idx + 1 :]):
                try:
                    got = s.recv(self.wait_timeout)
                except TimeoutError:
                    raise ConformanceError(
                        f"{where}: scanner_all_after_truncate stopped after {k + 1} of {len(written) - idx} messages "
                        f"(want {want.message_id!r})"
                    ) from None
                self._same(got, want, f"{where}: scanner_all_after_truncate")
                watch.touch()
        finally:
            self._close(s, f"{where}: scanner_all_after_truncate", watch)

    def _stamp(self, m: MutableMessage) -> MutableMessage:
        with self._tt_lock:
            tt = next(self._tt)
        return m.with_time_tick(tt).with_last_confirmed_use_message_id()

    def _insert(self, i: int) -> MutableMessage:
        return self._stamp(MutableMessage(MessageType.INSERT, b"payload-%d" % i, {"id": str(i), "const": "t"}, "v1"))

    def _rich_batch(self, term: int, lc: MessageID) -> list[MutableMessage]:
        """Messages with every field the adaptor stores: a transaction (begin, body, commit: txn context), a
        message on another vchannel, a time tick for every vchannel; each with the WAL term and the
        last-confirmed ID of another message (``lc``), not its own."""
        txn = TxnContext(txn_id=1000 + term, keepalive=2.5)
        out = []
        for t, vch, ctx in (
            (MessageType.BEGIN_TXN, "v1", txn),
            (MessageType.INSERT, "v1", txn),
            (MessageType.COMMIT_TXN, "v1", txn),
            (MessageType.DELETE, "v2", None),
            (MessageType.TIME_TICK, "", None),
        ):
            props = {"kind": "rich", "term": f"rich-{term}"}  # a tick's term property must not end a reader
            m = self._stamp(MutableMessage(t, b"rich-%d" % t.value, props, vch))
            out.append(m.with_last_confirmed(lc).with_txn_context(ctx).with_wal_term(term))
        assert len(out) == _RICH
        # Its begin carries a tick above every later message's (stored out of tick order, as concurrent appends
        # may be: DESIGN invariant 3), so last_time_tick() must be the largest tick stored, not the last record's.
        with self._tt_lock:
            out[0].time_tick = next(self._tt) + _TICK_JUMP
        return out

    # -- one term: a writer and two tailing readers ----------------------------------------------------------------
    def _writer(self, w: WALImpls, where: str, term: int, appended: list[ImmutableMessage], watch: _Watch) -> None:
        def one(m: MutableMessage) -> ImmutableMessage:
            mid = w.append(m)
            _expect(mid is not None, f"{where}: append returned None")
            _expect(
                mid.wal_name == self.builder.name == w.wal_name,
                f"{where}: append returned an ID of wal_name {mid.wal_name!r}, the builder is named "
                f"{self.builder.name!r} and the WAL {w.wal_name!r} (the three must be equal)",
            )
            watch.touch()
            return m.into_immutable(mid)

        # Daemon threads, not a ThreadPoolExecutor: the interpreter joins an executor's workers at exit, so an
        # append that never returns would hang the test run after the kit reported it.
        todo: queue.SimpleQueue[tuple[Future[ImmutableMessage], MutableMessage] | None] = queue.SimpleQueue()

        def work() -> None:
            while (item := todo.get()) is not None:
                f, m = item
                if not f.set_running_or_notify_cancel():
                    continue
                try:
                    f.set_result(one(m))
                except BaseException as e:
                    f.set_exception(e)

        futures: list[Future[ImmutableMessage]] = []
        for i in range(self.message_count - 1):
            futures.append(Future())
            todo.put((futures[-1], self._insert(i)))
        for _ in range(_MAX_CONCURRENT_APPENDS):
            threading.Thread(target=work, daemon=True, name="conformance-append").start()
            todo.put(None)  # after every message: a worker ends once the queue is done
        try:
            for k, f in enumerate(futures):
                try:
                    appended.append(f.result(self.wait_timeout))
                except FutureTimeoutError:
                    raise ConformanceError(
                        f"{where}: append #{k} did not return within {self.wait_timeout} s"
                    ) from None
        finally:
            for f in futures:
                f.cancel()  # those not started yet
        watch.touch(f"{where}: append_batch")
        batch = self._rich_batch(term, appended[0].message_id)
        ids = w.append_batch(batch)
        _expect(
            isinstance(ids, list) and len(ids) == len(batch),
            f"{where}: append_batch of {len(batch)} messages returned {ids!r}, want a list of {len(batch)} IDs",
        )
        for a, b in itertools.pairwise(ids):
            _expect(a < b, f"{where}: append_batch returned IDs out of order: {a!r}, {b!r}")
        appended.extend(m.into_immutable(i) for m, i in zip(batch, ids, strict=True))
        props = {"id": str(self.message_count - 1), "const": "t", "term": str(term)}
        last = self._stamp(MutableMessage(MessageType.TIME_TICK, b"", props, "v1"))
        mid = w.append(last)
        _expect(mid is not None, f"{where}: append of the final TIME_TICK returned None")
        appended.append(last.into_immutable(mid))

    def _reader(
        self, w: WALImpls, where: str, sname: str, term: int, out: list[ImmutableMessage], watch: _Watch
    ) -> None:
        s = w.read(ReadOption(name=sname, deliver_policy=DeliverPolicy.all(), read_ahead_buffer_size=128))
        try:
            _expect(s.name == sname, f"{where}: scanner name {s.name!r} != {sname!r}")
            while True:
                try:
                    m = s.recv(self.wait_timeout)
                except TimeoutError:
                    raise ConformanceError(
                        f"{where}: {sname} received nothing for {self.wait_timeout} s after {len(out)} messages "
                        "(a tailing scanner must see new appends)"
                    ) from None
                _expect(isinstance(m, ImmutableMessage), f"{where}: {sname} received {m!r}")
                _expect(not s.done().is_set(), f"{where}: {sname} is done while delivering")
                out.append(m)
                watch.touch()
                if m.message_type is MessageType.TIME_TICK:
                    t = m.properties.get("term")
                    _expect(t is not None, f"{where}: {sname} got a TIME_TICK without a term property")
                    if t == str(term):
                        return
        finally:
            s.close()

    def _read_write(
        self, opener: OpenerImpls, w: WALImpls, name: str, term: int, written: list[ImmutableMessage], watch: _Watch
    ) -> None:
        where = f"{name}@{term}"
        watch.touch(f"{where}: write and tail")
        errors: list[BaseException] = []
        appended: list[ImmutableMessage] = []
        reads: dict[str, list[ImmutableMessage]] = {"scanner1": [], "scanner2": []}
        threads = [_start(errors, self._writer, w, where, term, appended, watch)]
        threads += [_start(errors, self._reader, w, where, n, term, got, watch) for n, got in reads.items()]
        self._join(threads, [watch], errors)
        self._raise_first(errors)

        _expect(len(appended) == self.message_count + _RICH, f"{where}: {len(appended)} appends recorded")
        for sname, got in reads.items():
            for a, b in itertools.pairwise(got):
                _expect(
                    a.message_id < b.message_id,
                    f"{where}: {sname} delivered {b.message_id!r} after {a.message_id!r} (not in ID order)",
                )
        appended.sort(key=_id_key)
        written.extend(appended)
        for a, b in itertools.pairwise(written):
            _expect(
                a.message_id < b.message_id,
                f"{where}: IDs not strictly increasing: {a.message_id!r}, {b.message_id!r}",
            )
        for sname, got in reads.items():
            _expect(len(got) == len(written), f"{where}: {sname} read {len(got)} messages, wrote {len(written)}")
            for a, b in zip(got, written, strict=True):
                self._same(a, b, f"{where}: {sname}")

        idx = len(written) // 2
        mid = written[idx].message_id
        watch.touch(f"{where}: start_from")
        self._expect_sequence(
            w, "scanner_deliver_start_from", DeliverPolicy.start_from(mid), written[idx:], where, watch
        )
        watch.touch(f"{where}: start_after")
        self._expect_sequence(
            w, "scanner_deliver_start_after", DeliverPolicy.start_after(mid), written[idx + 1 :], where, watch
        )
        watch.touch(f"{where}: vchannel hint")
        self._check_vchannel_hint(w, written, where, watch)
        self._check_latest(opener, w, name, term, written, watch)
        watch.touch(f"{where}: close wakes a blocked recv")
        self._check_close_wakes(w, where)
        watch.touch(f"{where}: fast close of {_FAST_CLOSE_SCANNERS} scanners")
        self._fast_close(w, where, watch)

    def _check_vchannel_hint(self, w: WALImpls, written: list[ImmutableMessage], where: str, watch: _Watch) -> None:
        """A read hinted at vchannel "v1" delivers, in order, every message of "v1", every message for all
        vchannels ("") and every time tick; it may add or leave out messages of other vchannels."""
        s = w.read(ReadOption(name="scanner_vchannel_hint", deliver_policy=DeliverPolicy.all(), vchannel="v1"))
        try:
            want = [m for m in written if m.vchannel in ("v1", "") or m.message_type is MessageType.TIME_TICK]
            for k, expected in enumerate(want):
                while True:
                    try:
                        got = s.recv(self.wait_timeout)
                    except TimeoutError:
                        raise ConformanceError(
                            f"{where}: scanner_vchannel_hint stopped after {k} of {len(want)} messages for vchannel "
                            f"'v1', '' or time ticks (want {expected.message_id!r}, {expected.message_type.name} "
                            f"on {expected.vchannel!r}): a hint may skip only other vchannels' messages"
                        ) from None
                    if got.vchannel not in ("v1", "") and got.message_type is not MessageType.TIME_TICK:
                        continue  # another vchannel's: may be delivered
                    self._same(got, expected, f"{where}: scanner_vchannel_hint")
                    break
                watch.touch()  # a long read of a slow backend is progress, not a hang
        finally:
            s.close()

    def _check_latest(
        self, opener: OpenerImpls, w: WALImpls, name: str, term: int, written: list[ImmutableMessage], watch: _Watch
    ) -> None:
        """``latest`` scanners, on the writer and on a read-only WAL open beside it, deliver nothing old, then
        exactly the next message appended (a read-only WAL follows a live writer)."""
        where = f"{name}@{term}"
        watch.touch(f"{where}: latest")
        ro = self._open(opener, name, term, AccessMode.RO, watch)
        scanners: list[tuple[str, ScannerImpls]] = []
        try:
            for sname, on in (("scanner_deliver_latest", w), ("scanner_deliver_latest_read_only", ro)):
                scanners.append((sname, on.read(ReadOption(name=sname, deliver_policy=DeliverPolicy.latest()))))
            for sname, s in scanners:
                try:
                    old = s.recv(self.latest_quiet_seconds / len(scanners))
                except TimeoutError as e:
                    _expect(
                        isinstance(e, WALTimeoutError),
                        f"{where}: {sname}: recv timed out with {type(e).__name__}, want WALTimeoutError",
                    )
                    continue
                raise ConformanceError(f"{where}: {sname} delivered an old message {old!r}")
            watch.touch(f"{where}: latest, one new append")
            m = self._stamp(MutableMessage(MessageType.INSERT, b"after-latest", {"kind": "after-latest"}, "v1"))
            mid = w.append(m)
            _expect(mid is not None, f"{where}: append after latest returned None")
            new = m.into_immutable(mid)
            _expect(new.message_id > written[-1].message_id, f"{where}: append after latest got an older ID {mid!r}")
            written.append(new)
            for sname, s in scanners:
                try:
                    got = s.recv(self.wait_timeout)
                except TimeoutError:
                    raise ConformanceError(
                        f"{where}: {sname} did not deliver the message appended after it opened (want {mid!r})"
                    ) from None
                self._same(got, new, f"{where}: {sname}")
                watch.touch()
        finally:
            for sname, s in scanners:
                self._close(s, f"{where}: {sname}", watch)
            self._close(ro, f"{where} RO (latest)", watch)

    def _check_close_wakes(self, w: WALImpls, where: str) -> None:
        """``close`` from another thread wakes a scanner blocked in ``recv(None)``, which raises ShutdownError."""
        s = w.read(ReadOption(name="scanner_close_wakes", deliver_policy=DeliverPolicy.latest()))
        out: Future[BaseException | None] = Future()
        entering = threading.Event()

        def blocked() -> None:
            try:
                entering.set()
                s.recv(None)
            except BaseException as e:
                out.set_result(e)
            else:
                out.set_result(None)

        threading.Thread(target=blocked, daemon=True, name="conformance-blocked-recv").start()
        # Close only once the thread is about to block (then a moment more): on a busy machine a close made before
        # it called recv would be seen by recv's first check, and a backend that never wakes a blocked reader passed.
        _expect(entering.wait(self.wait_timeout), f"{where}: scanner_close_wakes: the reader thread never started")
        time.sleep(min(0.1, self.latest_quiet_seconds))
        s.close()
        try:
            err = out.result(self.wait_timeout)
        except FutureTimeoutError:
            raise ConformanceError(
                f"{where}: close() did not wake a scanner blocked in recv(None) within {self.wait_timeout} s"
            ) from None
        _expect(
            isinstance(err, ShutdownError),
            f"{where}: recv(None) woken by close() ended with {err!r}, want ShutdownError",
        )
        _expect(s.done().wait(self.wait_timeout), f"{where}: scanner_close_wakes: done() is not set after close()")

    def _expect_sequence(
        self, w: WALImpls, sname: str, policy: DeliverPolicy, want: list[ImmutableMessage], where: str, watch: _Watch
    ) -> None:
        s = w.read(ReadOption(name=sname, deliver_policy=policy))
        try:
            for k, expected in enumerate(want):
                try:
                    got = s.recv(self.wait_timeout)
                except TimeoutError:
                    raise ConformanceError(
                        f"{where}: {sname} stopped after {k} of {len(want)} messages (want {expected.message_id!r})"
                    ) from None
                self._same(got, expected, f"{where}: {sname}")
                watch.touch()  # a long read of a slow backend is progress, not a hang
        finally:
            s.close()

    def _fast_close(self, w: WALImpls, where: str, watch: _Watch) -> None:
        errors: list[BaseException] = []

        def one(i: int) -> None:
            s = w.read(ReadOption(f"scanner-fast-close-{i}", DeliverPolicy.all(), read_ahead_buffer_size=128))
            s.close()
            # Waited for: nothing says a close sets done() before it returns (it may finish in the reader's thread).
            done = s.done().wait(self.wait_timeout)
            _expect(done, f"{where}: scanner-fast-close-{i}: done() is not set after close()")

        threads = [_start(errors, one, i) for i in range(_FAST_CLOSE_SCANNERS)]
        self._join(threads, [watch], errors)
        self._raise_first(errors)

    @staticmethod
    def _same(got: ImmutableMessage, want: ImmutableMessage, where: str) -> None:
        """``got`` (delivered) is exactly ``want`` (what the writer appended, as into_immutable saw it)."""
        _expect(isinstance(got, ImmutableMessage), f"{where}: received {got!r}, not an ImmutableMessage")
        gid = got.message_id
        _expect(gid == want.message_id, f"{where}: got message {gid!r}, want {want.message_id!r}")
        _expect(got.message_type is want.message_type, f"{where}: {gid!r} has type {got.message_type!r}")
        _expect(bytes(got.payload) == bytes(want.payload), f"{where}: payload of {gid!r} differs from the appended one")
        got_props = dict(got.properties)
        _expect(
            got_props == dict(want.properties),
            f"{where}: properties of {gid!r} are {got_props!r}, want {dict(want.properties)!r}",
        )
        _expect(got.vchannel == want.vchannel, f"{where}: vchannel of {gid!r} is {got.vchannel!r}")
        _expect(
            got.time_tick == want.time_tick, f"{where}: time tick of {gid!r} is {got.time_tick}, want {want.time_tick}"
        )
        _expect(
            got.last_confirmed_message_id == want.last_confirmed_message_id,
            f"{where}: last-confirmed ID of {gid!r} is {got.last_confirmed_message_id!r}, "
            f"want {want.last_confirmed_message_id!r}",
        )
        _expect(
            got.txn_ctx == want.txn_ctx, f"{where}: txn context of {gid!r} is {got.txn_ctx!r}, want {want.txn_ctx!r}"
        )
        _expect(got.wal_term == want.wal_term, f"{where}: term of {gid!r} is {got.wal_term}, want {want.wal_term}")


def _id_key(m: ImmutableMessage) -> MessageID:
    return m.message_id
