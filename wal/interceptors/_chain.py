"""The interceptor chain: interceptors nest, the first one outermost (Milvus ``chain_interceptor.go``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from ..errors import WALError
from ..message import MessageID, MutableMessage
from ._interfaces import (
    AppendFunc,
    AppendOutcome,
    BatchAppendFunc,
    Interceptor,
    InterceptorWithBatch,
    InterceptorWithGracefulClose,
    InterceptorWithName,
    InterceptorWithReady,
)

__all__ = ["ChainedInterceptor", "all_ok", "batch_to_single"]

_BatchStep = Callable[[Sequence[MutableMessage], BatchAppendFunc], list[AppendOutcome]]
_SingleStep = Callable[[MutableMessage, AppendFunc], MessageID]


def all_ok(outcomes: Sequence[object]) -> bool:
    """No exception among ``outcomes`` (the usual batch): one pass in C over the types, then a few checks."""
    for t in set(map(type, outcomes)):  # noqa: SIM110  # a loop: all() over a generator costs more here
        if issubclass(t, BaseException):
            return False
    return True


def batch_to_single(next: BatchAppendFunc) -> AppendFunc:
    """``next`` called with one message, raising that message's error."""

    def call(msg: MutableMessage) -> MessageID:
        out = next((msg,))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    return call


def _per_message(ic: Interceptor) -> _BatchStep:
    """The batch form of an interceptor that only knows ``do_append``: one call per message."""

    def step(msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        single = batch_to_single(next)
        out: list[AppendOutcome] = []
        for m in msgs:
            try:
                out.append(ic.do_append(m, single))
            except Exception as e:
                out.append(e)
        return out

    return step


class ChainedInterceptor:
    """Runs appends through every interceptor; also the chain's readiness, graceful close and close.

    ``timings`` maps the name of each named interceptor to ``[calls, total_ns]`` (time spent inside it, inner
    interceptors included).
    """

    def __init__(self, interceptors: Sequence[Interceptor]) -> None:
        self._interceptors = tuple(interceptors)
        self._closed = threading.Event()
        self._ready = threading.Event()
        self.timings: dict[str, list[int]] = {}
        self._batch_steps: list[_BatchStep] = []
        self._single_steps: list[_SingleStep] = []
        for ic in self._interceptors:
            b: _BatchStep = ic.do_append_batch if isinstance(ic, InterceptorWithBatch) else _per_message(ic)
            s: _SingleStep = ic.do_append
            if isinstance(ic, InterceptorWithName):
                rec = self.timings.setdefault(ic.name, [0, 0])
                b, s = _timed_batch(b, rec), _timed_single(s, rec)
            self._batch_steps.append(b)
            self._single_steps.append(s)
        waits = [ic.ready() for ic in self._interceptors if isinstance(ic, InterceptorWithReady)]
        if waits:
            try:
                threading.Thread(target=self._wait_ready, args=(waits,), name="wal-chain-ready", daemon=True).start()
            except RuntimeError as e:  # a bare RuntimeError escaped the open, where every error is a WALError
                raise WALError(
                    f"cannot start the thread that waits for the interceptors to be ready ({e}): this process has "
                    "reached its thread limit; close WALs, or raise the limit (ulimit -u, the cgroup's pids.max)"
                ) from e
        else:
            self._ready.set()

    def _wait_ready(self, events: list[threading.Event]) -> None:
        for ev in events:
            while not ev.wait(0.05):
                if self._closed.is_set():
                    return
        if not self._closed.is_set():
            self._ready.set()

    def ready(self) -> threading.Event:
        """Set once every interceptor with a ``ready`` is ready; never set if the chain closes first."""
        return self._ready

    def do_append(self, msg: MutableMessage, final: AppendFunc) -> MessageID:
        fn = final
        for step in reversed(self._single_steps):
            fn = _bind_single(step, fn)
        return fn(msg)

    def do_append_batch(self, msgs: Sequence[MutableMessage], final: BatchAppendFunc) -> list[AppendOutcome]:
        return self.bind_batch(final)(msgs)

    def bind_batch(self, final: BatchAppendFunc) -> BatchAppendFunc:
        """The whole chain ending in ``final``, as one function: build it once and call it for every batch."""
        fn = final
        for step in reversed(self._batch_steps):
            fn = _bind_batch(step, fn)
        return fn

    def graceful_close(self) -> None:
        for ic in self._interceptors:
            if isinstance(ic, InterceptorWithGracefulClose):
                ic.graceful_close()

    def close(self) -> None:
        self._closed.set()
        for ic in self._interceptors:
            ic.close()


def _bind_single(step: _SingleStep, nxt: AppendFunc) -> AppendFunc:
    return lambda m: step(m, nxt)


def _bind_batch(step: _BatchStep, nxt: BatchAppendFunc) -> BatchAppendFunc:
    return lambda ms: step(ms, nxt)


def _timed_batch(step: _BatchStep, rec: list[int]) -> _BatchStep:
    def timed(msgs: Sequence[MutableMessage], nxt: BatchAppendFunc) -> list[AppendOutcome]:
        t0 = time.perf_counter_ns()
        try:
            return step(msgs, nxt)
        finally:
            rec[0] += 1
            rec[1] += time.perf_counter_ns() - t0

    return timed


def _timed_single(step: _SingleStep, rec: list[int]) -> _SingleStep:
    def timed(msg: MutableMessage, nxt: AppendFunc) -> MessageID:
        t0 = time.perf_counter_ns()
        try:
            return step(msg, nxt)
        finally:
            rec[0] += 1
            rec[1] += time.perf_counter_ns() - t0

    return timed
