"""The backend conformance kit: run it against your ``OpenerBuilderImpls`` to check the backend contract.

It ports Milvus's walimpls test framework (``milvus-tests.md`` kit A): three channels in parallel, each through
terms 1 to 3; per term a writer with up to five concurrent appends and two scanners tailing from the start, which
must see every message of every term in ID order; ``start_from``/``start_after``/``latest`` exactness;
read-only WALs refusing writes; ten scanners opened and closed at once; then truncate and reopen at term 4.

It needs no test framework::

    from wal.helper.conformance import WALImplsConformance
    WALImplsConformance(MyBuilder(), message_count=100, build_options={"url": ...}).run()

Every wait has a timeout, so a broken backend fails with :class:`ConformanceError` instead of hanging.
"""

from __future__ import annotations

import itertools
import random
import string
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from .._types import AccessMode, OpenOption, PChannelInfo
from ..errors import WALError
from ..message import ImmutableMessage, MessageID, MessageType, MutableMessage
from ..options import DeliverPolicy
from ..walimpls import OpenerBuilderImpls, OpenerImpls, ReadOption, WALImpls

__all__ = ["ConformanceError", "WALImplsConformance"]


class ConformanceError(AssertionError):
    """The backend broke the contract; the message says which check, on which channel and term."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise ConformanceError(what)


class WALImplsConformance:
    """One run of the kit against one backend builder."""

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

    # -- entry point ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        opener = self.builder.build(**self.build_options)
        _expect(opener is not None, "builder.build() returned None")
        errors: list[BaseException] = []
        try:
            threads = [
                threading.Thread(target=self._guard(errors, self._run_channel), args=(opener, i), daemon=True)
                for i in range(self.channels)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(self.wait_timeout * 10)
                _expect(not t.is_alive(), "a channel run did not finish in time (hang?)")
        finally:
            opener.close()
        if errors:
            first = errors[0]
            if isinstance(first, ConformanceError):
                raise first
            raise ConformanceError(f"unexpected error: {type(first).__name__}: {first}") from first

    @staticmethod
    def _guard(errors: list[BaseException], fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                fn(*args)
            except BaseException as e:
                errors.append(e)

        return run

    # -- one channel ------------------------------------------------------------------------------------------------
    def _run_channel(self, opener: OpenerImpls, i: int) -> None:
        name = f"{self.channel_prefix}_{i}_{''.join(random.choices(string.ascii_lowercase, k=10))}"
        written: list[ImmutableMessage] = []
        for term in range(1, self.terms + 1):
            w = opener.open(OpenOption(channel=PChannelInfo(name, term, AccessMode.RW)))
            _expect(w is not None, f"{name}@{term}: open returned None")
            _expect(w.channel.name == name, f"{name}@{term}: channel name is {w.channel.name!r}")
            _expect(w.channel.term == term, f"{name}@{term}: channel term is {w.channel.term}")
            try:
                self._read_write(w, name, term, written)
            finally:
                w.close()
            ro = opener.open(OpenOption(channel=PChannelInfo(name, term, AccessMode.RO)))
            _expect(ro is not None, f"{name}@{term}: RO open returned None")
            try:
                last = written[-1].message_id
                self._expect_raises(partial(ro.append, self._insert(0)), f"{name}@{term}: RO append")
                self._expect_raises(partial(ro.truncate, last), f"{name}@{term}: RO truncate")
            finally:
                ro.close()
        term = self.terms + 1
        w = opener.open(OpenOption(channel=PChannelInfo(name, term, AccessMode.RW)))
        try:
            mid = w.append(self._stamp(MutableMessage(MessageType.INSERT, b"truncate", {}, "v1")))
            _expect(mid is not None, f"{name}@{term}: append before truncate returned None")
            w.truncate(mid)
        finally:
            w.close()
        w = opener.open(OpenOption(channel=PChannelInfo(name, term, AccessMode.RW)))
        w.close()

    @staticmethod
    def _expect_raises(fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except WALError:
            return
        raise ConformanceError(f"{what} did not raise a WALError")

    def _stamp(self, m: MutableMessage) -> MutableMessage:
        with self._tt_lock:
            tt = next(self._tt)
        return m.with_time_tick(tt).with_last_confirmed_use_message_id()

    def _insert(self, i: int) -> MutableMessage:
        return self._stamp(MutableMessage(MessageType.INSERT, b"payload-%d" % i, {"id": str(i), "const": "t"}, "v1"))

    # -- one term: a writer and two tailing readers ----------------------------------------------------------------
    def _read_write(self, w: WALImpls, name: str, term: int, written: list[ImmutableMessage]) -> None:
        errors: list[BaseException] = []
        appended: list[ImmutableMessage] = []
        reads: dict[str, list[ImmutableMessage]] = {"scanner1": [], "scanner2": []}

        def writer() -> None:
            def one(i: int) -> ImmutableMessage:
                m = self._insert(i)
                mid = w.append(m)
                _expect(mid is not None, f"{name}@{term}: append returned None")
                return m.into_immutable(mid)

            with ThreadPoolExecutor(max_workers=5) as pool:
                appended.extend(pool.map(one, range(self.message_count - 1)))
            last = self._stamp(
                MutableMessage(
                    MessageType.TIME_TICK,
                    b"",
                    {"id": str(self.message_count - 1), "const": "t", "term": str(term)},
                    "v1",
                )
            )
            appended.append(last.into_immutable(w.append(last)))

        def reader(sname: str) -> None:
            s = w.read(ReadOption(name=sname, deliver_policy=DeliverPolicy.all(), read_ahead_buffer_size=128))
            try:
                _expect(s.name == sname, f"{name}@{term}: scanner name {s.name!r} != {sname!r}")
                while True:
                    m = s.recv(self.wait_timeout)
                    _expect(m is not None, f"{name}@{term}: {sname} received None")
                    reads[sname].append(m)
                    if m.message_type is MessageType.TIME_TICK:
                        t = m.properties.get("term")
                        _expect(t is not None, f"{name}@{term}: {sname} got a TIME_TICK without a term property")
                        if t == str(term):
                            return
            finally:
                s.close()

        threads = [threading.Thread(target=self._guard(errors, writer), daemon=True)]
        threads += [threading.Thread(target=self._guard(errors, reader), args=(n,), daemon=True) for n in reads]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.wait_timeout * 4)
            _expect(not t.is_alive(), f"{name}@{term}: writer or reader did not finish (hang?)")
        if errors:
            raise errors[0]

        _expect(len(appended) == self.message_count, f"{name}@{term}: {len(appended)} appends recorded")
        for sname, got in reads.items():
            _expect(
                all(a.message_id < b.message_id for a, b in itertools.pairwise(got)),
                f"{name}@{term}: {sname} delivered IDs out of order",
            )
        appended.sort(key=_id_key)
        written.extend(appended)
        _expect(
            all(a.message_id < b.message_id for a, b in itertools.pairwise(written)),
            f"{name}@{term}: IDs are not strictly increasing across terms",
        )
        for sname, got in reads.items():
            _expect(len(got) == len(written), f"{name}@{term}: {sname} read {len(got)} messages, wrote {len(written)}")
            for a, b in zip(got, written, strict=True):
                self._same(a, b, f"{name}@{term}: {sname}")

        idx = len(written) // 2
        mid = written[idx].message_id
        self._expect_sequence(w, "scanner_deliver_start_from", DeliverPolicy.start_from(mid), written[idx:], name, term)
        self._expect_sequence(
            w, "scanner_deliver_start_after", DeliverPolicy.start_after(mid), written[idx + 1 :], name, term
        )
        s = w.read(ReadOption(name="scanner_deliver_latest", deliver_policy=DeliverPolicy.latest()))
        try:
            try:
                m = s.recv(self.latest_quiet_seconds)
            except TimeoutError:
                pass
            else:
                raise ConformanceError(f"{name}@{term}: latest scanner delivered an old message {m!r}")
        finally:
            s.close()
        self._fast_close(w, name, term)

    def _expect_sequence(
        self, w: WALImpls, sname: str, policy: DeliverPolicy, want: list[ImmutableMessage], name: str, term: int
    ) -> None:
        s = w.read(ReadOption(name=sname, deliver_policy=policy))
        try:
            for expected in want:
                self._same(s.recv(self.wait_timeout), expected, f"{name}@{term}: {sname}")
        finally:
            s.close()

    def _fast_close(self, w: WALImpls, name: str, term: int) -> None:
        errors: list[BaseException] = []

        def one(i: int) -> None:
            opt = ReadOption(f"scanner-fast-close-{i}", DeliverPolicy.all(), read_ahead_buffer_size=128)
            s = w.read(opt)
            s.close()

        threads = [threading.Thread(target=self._guard(errors, one), args=(i,), daemon=True) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.wait_timeout)
            _expect(not t.is_alive(), f"{name}@{term}: a scanner close hung")
        if errors:
            raise errors[0]

    @staticmethod
    def _same(got: ImmutableMessage, want: ImmutableMessage, where: str) -> None:
        _expect(
            got.message_id == want.message_id,
            f"{where}: got message {got.message_id!r}, want {want.message_id!r}",
        )
        for key in ("id", "const"):
            _expect(
                got.properties.get(key) == want.properties.get(key) and key in want.properties,
                f"{where}: property {key!r} of {got.message_id!r} is {got.properties.get(key)!r}, "
                f"want {want.properties.get(key)!r}",
            )
        _expect(
            bytes(got.payload) == bytes(want.payload),
            f"{where}: payload of {got.message_id!r} differs from what was appended",
        )
        _expect(got.message_type is want.message_type, f"{where}: type of {got.message_id!r} differs")


def _id_key(m: ImmutableMessage) -> MessageID:
    return m.message_id
