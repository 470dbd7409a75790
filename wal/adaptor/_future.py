"""A cheap ``concurrent.futures.Future`` for the append hot path, completed in bulk.

Why: a stock ``Future`` builds a ``Condition`` (an RLock and a waiter deque) per instance and takes it on every
``set_result``/``result``: at a thousand pipelined appends that is a large share of the adaptor's cost. An
:class:`AppendFuture` shares one ``Condition`` with every future of its WAL, is created already running (an
append in the queue cannot be withdrawn, so ``cancel()`` returns False), and :func:`complete_all` settles a whole
batch under one acquisition with one ``notify_all``.

It stays a real ``Future``: ``add_done_callback``, ``concurrent.futures.wait``/``as_completed`` and
``asyncio.wrap_future`` work, because they go through the same ``_condition``/``_waiters`` fields (the shared
condition is reentrant, as ``wait`` acquires it once per future). Only ``result``/``exception`` are redefined:
with a shared condition a wake-up may be for another future, so they wait in a loop.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from typing import Any, TypeVar

__all__ = ["AppendFuture", "GroupWaiter", "complete_all", "new_condition"]

T = TypeVar("T")


def new_condition() -> threading.Condition:
    """The condition shared by the futures of one WAL (reentrant: ``concurrent.futures.wait`` needs that)."""
    return threading.Condition(threading.RLock())


class AppendFuture(Future[T]):
    # Slots: with every field in a slot no per-instance __dict__ is built. The waiter and callback lists are
    # made on first use (most appends never have either): fewer allocations, fewer garbage collections.
    # ``msg``: the message of an ``append_async`` while it is queued (the future is the queue entry: no tuple).
    __slots__ = ("_callbacks", "_condition", "_exception", "_result", "_state", "_w", "msg")

    def __init__(self, cond: threading.Condition, msg: Any = None) -> None:  # no super().__init__(): it builds a
        self.msg = msg  # Condition
        self._condition = cond
        self._state = RUNNING
        self._result = None
        self._exception = None
        self._w: list[Any] | None = None
        self._callbacks: list[Callable[[Future[T]], object]] | None = None

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]  # concurrent.futures.wait/as_completed append to it under the condition
        w = self._w
        if w is None:
            w = self._w = []
        return w

    @property
    def _done_callbacks(self) -> list[Callable[[Future[T]], object]]:  # Future.add_done_callback appends to it
        cbs = self._callbacks
        if cbs is None:
            cbs = self._callbacks = []
        return cbs

    def _wait_finished(self, timeout: float | None) -> None:
        """Return once finished (lock not held on return); TimeoutError after ``timeout``."""
        with self._condition:
            deadline = None
            while self._state != FINISHED:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                if timeout is not None:
                    if deadline is None:
                        deadline = time.monotonic() + timeout
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError()
                    self._condition.wait(left)
                else:
                    self._condition.wait()

    def result(self, timeout: float | None = None) -> T:
        if self._state != FINISHED:  # _state is written last by complete_all: FINISHED means the fields are set
            self._wait_finished(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._wait_finished(timeout)
        return self._exception


def complete_all(cond: threading.Condition, futs: Sequence[AppendFuture[Any]], outcomes: Sequence[object]) -> None:
    """Settle ``futs[i]`` with ``outcomes[i]`` (an exception instance fails it) under one lock, one notify.

    ``cond`` is the futures' shared condition. Futures already finished are skipped; done callbacks run after
    the lock is released, as ``Future.set_result`` runs them.
    """
    called: list[AppendFuture[Any]] = []
    with cond:
        for f, o in zip(futs, outcomes, strict=True):
            f.msg = None  # done with it: a future kept by the caller does not keep the message alive
            if f._state != RUNNING:
                continue
            if isinstance(o, BaseException):
                f._exception = o
                f._state = FINISHED
                if f._w:
                    for w in f._w:
                        w.add_exception(f)
            else:
                f._result = o
                f._state = FINISHED
                if f._w:
                    for w in f._w:
                        w.add_result(f)
            if f._callbacks:
                called.append(f)
        cond.notify_all()
    for f in called:
        f._invoke_callbacks()  # type: ignore[attr-defined]


class GroupWaiter:
    """What a synchronous ``append``/``append_messages`` caller waits on when its group is queued: a private
    lock, released once by whoever settles it. Unlike futures sharing one condition, settling a batch wakes
    exactly its callers, not every thread waiting on the WAL (32 appending threads would otherwise wake about
    twice per append, half the time for another batch).
    """

    __slots__ = ("_lock", "outcome")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.outcome: object = None

    def settle(self, outcome: object) -> None:
        """Called exactly once (the entry leaves the queue once)."""
        self.outcome = outcome
        self._lock.release()

    def wait(self, timeout: float | None) -> object:
        """The outcome (an exception instance is returned, not raised); TimeoutError after ``timeout``."""
        if not self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            raise TimeoutError()
        return self.outcome
