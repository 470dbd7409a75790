"""The interceptor chain and the redo interceptor (milvus-tests §I.1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from wal.interceptors import AppendOutcome, ChainedInterceptor
from wal.interceptors.redo import RedoError, RedoInterceptor
from wal.message import IntMessageID, MessageID, MessageType, MutableMessage


class ID(IntMessageID):
    WAL_NAME = "chaintest"


def msg() -> MutableMessage:
    return MutableMessage(MessageType.INSERT, b"x", vchannel="v1")


class Plain:
    def __init__(self, log: list[str], tag: str) -> None:
        self.log, self.tag, self.closed = log, tag, False

    def do_append(self, m: MutableMessage, nxt: Any) -> MessageID:
        self.log.append(f"{self.tag}>")
        try:
            return nxt(m)
        finally:
            self.log.append(f"<{self.tag}")

    def close(self) -> None:
        self.closed = True


class Named(Plain):
    @property
    def name(self) -> str:
        return self.tag


class WithReady(Plain):
    def __init__(self, log: list[str], tag: str) -> None:
        super().__init__(log, tag)
        self.ev = threading.Event()

    def ready(self) -> threading.Event:
        return self.ev


def test_a_chain_that_cannot_start_its_ready_thread_raises_a_wal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 17b: at the process's thread limit (hundreds of channels open) the chain's wait for its interceptors'
    ``ready`` raised a bare ``RuntimeError: can't start new thread`` out of the WAL's open; every error of the
    library is a ``WALError``."""
    from wal.errors import WALError

    def start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(WALError, match="thread limit"):
        ChainedInterceptor([WithReady([], "r")])


@pytest.mark.parametrize("n", range(5))
def test_nesting_single_and_batch(n: int) -> None:
    log: list[str] = []
    ics = [Plain(log, str(i)) for i in range(n)]
    chain = ChainedInterceptor(ics)
    assert chain.ready().wait(1)
    finals: list[int] = []

    def final(m: MutableMessage) -> MessageID:
        log.append("final")
        finals.append(1)
        return ID(7)

    assert chain.do_append(msg(), final) == ID(7)
    want = [f"{i}>" for i in range(n)] + ["final"] + [f"<{i}" for i in reversed(range(n))]
    assert log == want
    log.clear()

    def final_batch(ms: Sequence[MutableMessage]) -> list[AppendOutcome]:
        log.append("final")
        return [ID(i) for i in range(len(ms))]

    # Interceptors with only do_append are called once per message; the batch still ends in order.
    out = chain.do_append_batch([msg(), msg()], final_batch)
    assert out == [ID(0), ID(0)] if n else out == [ID(0), ID(1)]
    chain.close()
    assert all(ic.closed for ic in ics)


def test_named_interceptors_are_timed() -> None:
    log: list[str] = []
    ics = [Named(log, f"n{i}") for i in range(5)]
    chain = ChainedInterceptor(ics)
    chain.do_append(msg(), lambda m: ID(1))
    assert set(chain.timings) == {f"n{i}" for i in range(5)}
    assert all(calls == 1 and ns > 0 for calls, ns in chain.timings.values())


def test_ready_waits_for_every_interceptor_in_order() -> None:
    log: list[str] = []
    ics = [WithReady(log, str(i)) for i in range(5)]
    chain = ChainedInterceptor(ics)
    for ic in ics:
        assert not chain.ready().wait(0.1)
        ic.ev.set()
    assert chain.ready().wait(1)


def test_closed_chain_never_becomes_ready() -> None:
    ic = WithReady([], "x")
    chain = ChainedInterceptor([ic])
    chain.close()
    ic.ev.set()
    assert not chain.ready().wait(0.5)


def test_per_message_failures_in_a_batch() -> None:
    class Refuse:
        def do_append(self, m: MutableMessage, nxt: Any) -> MessageID:
            if m.properties.get("bad"):
                raise ValueError("refused")
            return nxt(m)

        def close(self) -> None:
            pass

    chain = ChainedInterceptor([Refuse()])
    ms = [msg(), MutableMessage(MessageType.INSERT, b"", {"bad": "1"}), msg()]
    out = chain.do_append_batch(ms, lambda b: [ID(i) for i in range(len(b))])
    assert out[0] == ID(0) and isinstance(out[1], ValueError) and out[2] == ID(0)


def test_redo_retries_with_a_fresh_pass() -> None:
    calls = [0]

    def flaky(ms: Sequence[MutableMessage]) -> list[AppendOutcome]:
        calls[0] += 1
        return [RedoError("again") if calls[0] < 3 else ID(5) for _ in ms]

    redo = RedoInterceptor()
    assert redo.do_append_batch([msg()], flaky) == [ID(5)]
    assert calls[0] == 3

    n = [0]

    def single(m: MutableMessage) -> MessageID:
        n[0] += 1
        if n[0] < 2:
            raise RedoError("again")
        return ID(1)

    assert redo.do_append(msg(), single) == ID(1)


def test_chain_timing_includes_inner_time() -> None:
    ic = Named([], "outer")
    chain = ChainedInterceptor([ic])

    def slow(m: MutableMessage) -> MessageID:
        time.sleep(0.01)
        return ID(1)

    chain.do_append(msg(), slow)
    assert chain.timings["outer"][1] >= 10_000_000


class _Failing:
    def build(self, param: Any) -> Any:
        raise RuntimeError("cannot build")


class _Holding:
    """Builds interceptors that record whether they were closed."""

    def __init__(self) -> None:
        self.built: list[Plain] = []

    def build(self, param: Any) -> Any:
        ic = Plain([], "h")
        self.built.append(ic)
        return ic


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_an_open_failing_in_an_interceptor_builder_closes_those_already_built(tmp_path: Any, backend: str) -> None:
    """An interceptor builder that raised left the interceptors built before it open for good: the open raised, so
    no WAL and no close ever reached them (each failed open leaked whatever they held: a thread, a connection)."""
    from wal import OpenOption, PChannelInfo, registry

    holding = _Holding()
    kw: dict[str, Any] = {}
    if backend == "localfs":
        kw = {"root": str(tmp_path), "sync": "never", "segment_bytes": 1 << 20}
    with registry.must_get_builder(backend, holding, _Failing()).build(**kw) as op:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="cannot build"):
                op.open(OpenOption(channel=PChannelInfo(name="c", term=1)))
        assert len(holding.built) == 3
        assert all(ic.closed for ic in holding.built)
        # The channel is free again (localfs: its lock was released) and opens without the failing builder.
    with registry.must_get_builder(backend, holding).build(**kw) as op, op.open(
        OpenOption(channel=PChannelInfo(name="c", term=1))
    ) as w:
        w.append(msg())
