"""The backend conformance kit: run it against your ``OpenerBuilderImpls`` to check the backend contract.

It ports Milvus's walimpls test framework (``milvus-tests.md`` kit A): three channels in parallel, each through
terms 1 to 3; per term a writer with up to five concurrent appends and two scanners tailing from the start, which
must see every message of every term in ID order; ``start_from``/``start_after``/``latest`` exactness;
read-only WALs refusing writes (and reading everything); ten scanners opened and closed at once; then truncate
and reopen at term 4, where messages at and after the truncation point must stay readable.

Beyond Milvus it checks that what a scanner delivers is exactly what was appended (type, payload, properties,
vchannel, time tick, last-confirmed ID) and that ``last_time_tick()`` is 0 or the largest stored tick.

It needs no test framework::

    from wal.helper.conformance import WALImplsConformance
    WALImplsConformance(MyBuilder(), message_count=100, build_options={"url": ...}).run()

Every wait has a timeout and a watchdog names the step a thread is stuck in, so a broken backend fails with
:class:`ConformanceError` instead of hanging the test run.
"""

from __future__ import annotations

import itertools
import random
import string
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from .._types import AccessMode, OpenOption, PChannelInfo
from ..errors import AccessModeError
from ..message import ImmutableMessage, MessageID, MessageType, MutableMessage
from ..options import DeliverPolicy
from ..walimpls import OpenerBuilderImpls, OpenerImpls, ReadOption, ROWALImpls, ScannerImpls, WALImpls

__all__ = ["ConformanceError", "WALImplsConformance"]

_MAX_CONCURRENT_APPENDS = 5
_FAST_CLOSE_SCANNERS = 10


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

    def touch(self, step: str | None = None) -> None:
        with self._lock:
            if step is not None:
                self._step = step
            self._at = time.monotonic()

    def stale(self, limit: float) -> str | None:
        with self._lock:
            idle = time.monotonic() - self._at
            return f"{self.where}: no progress for {idle:.1f} s during {self._step!r} (hang?)" if idle > limit else None


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
        # Backends store ticks but never assign them: the kit stamps an increasing one on every message.
        self._tt = itertools.count(1)
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
                self._read_write(w, name, term, written, watch)
            finally:
                self._close(w, f"{name}@{term}", watch)
            ro = self._open(opener, name, term, AccessMode.RO, watch)
            try:
                self._check_read_only(ro, name, term, written, watch)
            finally:
                self._close(ro, f"{name}@{term} RO", watch)
        self._truncate_and_reopen(opener, name, self.terms + 1, written, watch)

    def _check_last_time_tick(self, w: WALImpls, written: list[ImmutableMessage], where: str) -> None:
        got = w.last_time_tick()
        want = max((m.time_tick for m in written), default=0)
        _expect(
            got in (0, want),
            f"{where}: last_time_tick() is {got}, want {want} (the largest stored time tick) or 0 (unknown)",
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
        # A read-only WAL reads everything the writers stored (through recv_batch, the scan path).
        watch.touch(f"{where}: reading all")
        s = ro.read(ReadOption(name="scanner_read_only", deliver_policy=DeliverPolicy.all()))
        try:
            got: list[ImmutableMessage] = []
            while len(got) < len(written):
                batch = s.recv_batch(len(written) - len(got), self.wait_timeout)
                _expect(bool(batch), f"{where}: recv_batch returned nothing")
                _expect(len(batch) <= len(written) - len(got), f"{where}: recv_batch returned too many messages")
                got.extend(batch)
                watch.touch()
            for a, b in zip(got, written, strict=True):
                self._same(a, b, f"{where}: scanner_read_only")
        finally:
            self._close(s, f"{where}: scanner_read_only", watch)

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
        self._expect_sequence(w, "scanner_after_truncate", DeliverPolicy.start_from(last.message_id), [last], where)
        watch.touch(f"{where}: all")
        s = w.read(ReadOption(name="scanner_all_after_truncate", deliver_policy=DeliverPolicy.all()))
        try:
            first = s.recv(self.wait_timeout)
            _expect(first.message_id <= last.message_id, f"{where}: all() starts after the truncation point")
            idx = next((k for k, m in enumerate(written) if m.message_id == first.message_id), None)
            _expect(idx is not None, f"{where}: all() starts at {first.message_id!r}, which was never written")
            assert idx is not None
            self._same(first, written[idx], f"{where}: scanner_all_after_truncate")
            for want in written[idx + 1 :]:
                self._same(s.recv(self.wait_timeout), want, f"{where}: scanner_all_after_truncate")
                watch.touch()
        finally:
            self._close(s, f"{where}: scanner_all_after_truncate", watch)

    def _stamp(self, m: MutableMessage) -> MutableMessage:
        with self._tt_lock:
            tt = next(self._tt)
        return m.with_time_tick(tt).with_last_confirmed_use_message_id()

    def _insert(self, i: int) -> MutableMessage:
        return self._stamp(MutableMessage(MessageType.INSERT, b"payload-%d" % i, {"id": str(i), "const": "t"}, "v1"))

    # -- one term: a writer and two tailing readers ----------------------------------------------------------------
    def _writer(self, w: WALImpls, where: str, term: int, appended: list[ImmutableMessage], watch: _Watch) -> None:
        def one(m: MutableMessage) -> ImmutableMessage:
            mid = w.append(m)
            _expect(mid is not None, f"{where}: append returned None")
            watch.touch()
            return m.into_immutable(mid)

        pool = ThreadPoolExecutor(max_workers=_MAX_CONCURRENT_APPENDS, thread_name_prefix="conformance-append")
        try:
            futures = [pool.submit(one, self._insert(i)) for i in range(self.message_count - 1)]
            for k, f in enumerate(futures):
                try:
                    appended.append(f.result(self.wait_timeout))
                except FutureTimeoutError:
                    raise ConformanceError(
                        f"{where}: append #{k} did not return within {self.wait_timeout} s"
                    ) from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
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

    def _read_write(self, w: WALImpls, name: str, term: int, written: list[ImmutableMessage], watch: _Watch) -> None:
        where = f"{name}@{term}"
        watch.touch(f"{where}: write and tail")
        errors: list[BaseException] = []
        appended: list[ImmutableMessage] = []
        reads: dict[str, list[ImmutableMessage]] = {"scanner1": [], "scanner2": []}
        threads = [_start(errors, self._writer, w, where, term, appended, watch)]
        threads += [_start(errors, self._reader, w, where, n, term, got, watch) for n, got in reads.items()]
        self._join(threads, [watch], errors)
        self._raise_first(errors)

        _expect(len(appended) == self.message_count, f"{where}: {len(appended)} appends recorded")
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
        self._expect_sequence(w, "scanner_deliver_start_from", DeliverPolicy.start_from(mid), written[idx:], where)
        watch.touch(f"{where}: start_after")
        self._expect_sequence(
            w, "scanner_deliver_start_after", DeliverPolicy.start_after(mid), written[idx + 1 :], where
        )
        watch.touch(f"{where}: latest")
        s = w.read(ReadOption(name="scanner_deliver_latest", deliver_policy=DeliverPolicy.latest()))
        try:
            try:
                m = s.recv(self.latest_quiet_seconds)
            except TimeoutError:
                pass
            else:
                raise ConformanceError(f"{where}: a latest scanner delivered an old message {m!r}")
        finally:
            self._close(s, f"{where}: scanner_deliver_latest", watch)
        watch.touch(f"{where}: fast close of {_FAST_CLOSE_SCANNERS} scanners")
        self._fast_close(w, where, watch)

    def _expect_sequence(
        self, w: WALImpls, sname: str, policy: DeliverPolicy, want: list[ImmutableMessage], where: str
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
        finally:
            s.close()

    def _fast_close(self, w: WALImpls, where: str, watch: _Watch) -> None:
        errors: list[BaseException] = []

        def one(i: int) -> None:
            s = w.read(ReadOption(f"scanner-fast-close-{i}", DeliverPolicy.all(), read_ahead_buffer_size=128))
            s.close()
            _expect(s.done().is_set(), f"{where}: scanner-fast-close-{i}: done() is not set after close()")

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


def _id_key(m: ImmutableMessage) -> MessageID:
    return m.message_id
