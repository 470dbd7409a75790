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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, RUNNING
from typing import Any, TypeVar

from .._types import AppendResult
from ..errors import ShutdownError, WALError, WALTimeoutError

_log = logging.getLogger("concurrent.futures")  # where Future logs a failing callback

__all__ = [
    "AllSucceeded",
    "AppendFuture",
    "Appended",
    "GroupWaiter",
    "SharedCondition",
    "complete_all",
    "complete_appended",
    "future_class",
    "invoke_callbacks",
    "new_condition",
    "new_future",
]

T = TypeVar("T")

_new = object.__new__


class _Lazy:
    """The ``_result`` of a future settled by :func:`complete_appended` until ``result()`` builds it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not built yet>"


_LAZY: Any = _Lazy()


class SharedCondition(threading.Condition):
    """The condition shared by the futures of one WAL, with its reentrant lock (``concurrent.futures.wait``
    needs that) as ``lock``: the WAL's own code enters ``with cond.lock``, whose C ``__enter__``/``__exit__`` a
    Ctrl-C cannot split, where ``with cond`` runs Python ones that it can (leaving the lock held for good)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        super().__init__(self.lock)


def new_condition() -> SharedCondition:
    """The condition shared by the futures of one WAL."""
    return SharedCondition()


class AppendFuture(Future[T]):
    """Built by :func:`future_class`'s class, whose ``_condition`` is the WAL's shared condition."""

    # Slots: with every field in a slot no per-instance __dict__ is built. ``_x``: None, or [waiters, callbacks]
    # made on first use (most appends never have either). ``_id``/``_tt``/``_lc``/``_txn``: the fields of the
    # result of a future settled by :func:`complete_appended` (``_result`` is ``_LAZY`` until ``result()``).
    __slots__ = ("_exception", "_id", "_lc", "_result", "_state", "_tt", "_txn", "_x")
    _condition: SharedCondition  # a class attribute of the WAL's future class
    _settler: threading.Thread | None = None  # the WAL's append thread (a class attribute too, set by the WAL)
    _forked = False  # a forked child's copy of the class: pending futures settle in the parent only

    # ``_result``/``_exception`` are set when it is settled (both, by :func:`complete_all` or
    # :func:`complete_appended`): read only after.
    _result: Any
    _exception: BaseException | None
    _id: Any
    _tt: int
    _lc: Any
    _txn: Any

    def __init__(self) -> None:  # no super().__init__(): it builds a Condition
        self._state = RUNNING
        self._x: list[list[Any]] | None = None

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]  # concurrent.futures.wait/as_completed append to it under the condition
        x = self._x
        if x is None:
            x = self._x = [[], []]
        return x[0]

    @property
    def _done_callbacks(self) -> list[Callable[[Future[T]], object]]:  # Future.add_done_callback appends to it
        x = self._x
        if x is None:
            x = self._x = [[], []]
        return x[1]

    def _invoke_callbacks(self) -> None:
        """``Future._invoke_callbacks``, except that a callback raising ``SystemExit`` or ``KeyboardInterrupt``
        does not skip the later ones (an ``asyncio.wrap_future`` of this future would wait for ever): they all
        run, then the first such exception is raised. An ``Exception`` is logged, as ``Future`` does."""
        x = self._x
        if x is None:
            return
        first: BaseException | None = None
        for callback in x[1]:
            try:
                callback(self)
            except Exception:
                _log.exception("exception calling callback for %r", self)
            except BaseException as e:
                if first is None:
                    first = e
        if first is not None:
            raise first

    def _wait_finished(self, timeout: float | None) -> None:
        """Return once finished (lock not held on return); TimeoutError after ``timeout``."""
        if threading.current_thread() is self._settler and self._state == RUNNING:
            # A done callback (they run in the append thread) waiting for another append of its WAL: only this
            # thread would run it, so the wait would last for ever (or its whole timeout, stalling every producer).
            raise WALError(
                "result() of a pending append_async called in the WAL's append thread (in a done callback) would "
                "wait for itself: chain another add_done_callback instead"
            )
        if self._forked and self._state == RUNNING:
            raise ShutdownError(
                "this append was pending when the process was forked: it settles in the parent only (the child has "
                "none of its threads)"
            )
        with self._condition.lock:
            deadline = None
            while self._state != FINISHED:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                if timeout is not None:
                    if deadline is None:
                        deadline = time.monotonic() + timeout
                    left = deadline - time.monotonic()
                    if left <= 0:
                        # "Queued or being written": on a stalled disk it is in a write or sync that has not
                        # returned, and "still queued" sent the reader looking for a stuck queue.
                        raise WALTimeoutError(  # a TimeoutError, as a stock Future raises, and a WALError
                            f"append_async not settled within {timeout} s: it is queued or being written (a write or "
                            "sync that has not returned), and may still be stored"
                        )
                    self._condition.wait(left)
                else:
                    self._condition.wait()

    def result(self, timeout: float | None = None) -> T:
        if self._state != FINISHED:  # _state is written last by complete_all: FINISHED means the fields are set
            self._wait_finished(timeout)
        if self._exception is not None:
            raise self._exception
        r = self._result
        if r is _LAZY:  # built on first read, in the reader's thread (two racing readers build equal ones)
            r = _new(AppendResult)  # AppendResult.__init__, spelled out (a call less)
            r.message_id = self._id
            r.time_tick = self._tt
            r.last_confirmed_message_id = self._lc
            r.txn_ctx = self._txn
            r.extra = None
            self._result = r
        return r  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        if self._state == FINISHED and self._exception is None:
            self.result()  # built, so that it shows the result's type as a stock future does
        return super().__repr__()

    def set_result(self, result: T) -> None:
        raise InvalidStateError("the future of an append is settled by the WAL")

    def set_exception(self, exception: BaseException | None) -> None:
        raise InvalidStateError("the future of an append is settled by the WAL")

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._wait_finished(timeout)
        return self._exception


class Appended(list[Any]):
    """The message IDs of a batch of ``append_async`` futures that all succeeded, with ``msgs``, the messages as
    written (stamped): :func:`complete_appended` settles the futures from both without building any result.

    Why: an :class:`AppendResult` built per message while the batch is settled lives as long as its future, and
    thousands of them wait in a pipelining caller's window: each is one more object the garbage collector walks
    in every young collection, and which pushes the next one sooner. Built on ``result()``, it is usually freed
    at once with its future.
    """

    __slots__ = ("msgs",)

    def __init__(self, ids: Sequence[object], msgs: Sequence[Any]) -> None:
        super().__init__(ids)
        self.msgs = msgs


class AllSucceeded(list[Any]):
    """Outcomes known to hold no exception (the adaptor's usual batch): :func:`complete_all` then skips the
    per-future exception test."""

    __slots__ = ()


def future_class(cond: SharedCondition) -> type[AppendFuture[Any]]:
    """The future class of one WAL: :class:`AppendFuture` with ``cond`` as the condition all its futures share
    (a class attribute: nothing to store per future).

    Its ``__init__`` is ``object.__init__`` (a C call, half the cost of a Python ``__init__`` per append): who
    builds one sets ``_state`` and ``_x`` as :meth:`AppendFuture.__init__` does, or uses :func:`new_future`.
    """
    fields = {"__slots__": (), "_condition": cond, "__init__": object.__init__, "__module__": __name__}
    return type("AppendFuture", (AppendFuture,), fields)


def new_future(cls: type[AppendFuture[T]]) -> AppendFuture[T]:
    """A running future of ``cls`` (a :func:`future_class`): what the dispatcher's hot path spells out."""
    f = cls()
    AppendFuture.__init__(f)
    return f


def complete_all(
    cond: SharedCondition,
    futs: Sequence[AppendFuture[Any]],
    outcomes: Sequence[object],
    callbacks: list[AppendFuture[Any]] | None = None,
) -> None:
    """Settle ``futs[i]`` with ``outcomes[i]`` (an exception instance fails it) under one lock, one notify.

    ``cond`` is the futures' shared condition. Futures already finished are skipped (not checked when
    ``outcomes`` is :class:`AllSucceeded`: a batch's own futures); done callbacks run after the lock is released,
    as ``Future.set_result`` runs them, or, given ``callbacks``, are left to the caller: the futures whose
    callbacks are due are appended to it.
    """
    called: list[AppendFuture[Any]] = []
    with cond.lock:
        if outcomes.__class__ is AllSucceeded:  # the usual batch
            # No exception to test for, and every future is still running: an append's future is settled only
            # here, once (set_result raises, cancel() is refused), and a batch's futures left the queue together.
            special: list[AppendFuture[Any]] = []
            for f, o in zip(futs, outcomes, strict=True):
                f._result = o
                f._exception = None
                f._state = FINISHED
                if f._x is not None:  # rare: waited on, or with callbacks
                    special.append(f)
            _tell_waiters(special, called)
        else:
            for f, o in zip(futs, outcomes, strict=True):
                if f._state != RUNNING:
                    continue
                if isinstance(o, BaseException):
                    f._result = None
                    f._exception = o
                    f._state = FINISHED  # last: result() reads the fields once it sees FINISHED, without the lock
                    if f._x is not None:
                        for w in f._x[0]:
                            w.add_exception(f)
                else:
                    f._result = o
                    f._exception = None
                    f._state = FINISHED
                    if f._x is not None:
                        for w in f._x[0]:
                            w.add_result(f)
                if f._x is not None and f._x[1]:
                    called.append(f)
        cond.notify_all()
    _run_callbacks(called, callbacks)


def complete_appended(
    cond: SharedCondition,
    futs: Sequence[AppendFuture[Any]],
    appended: Appended,
    callbacks: list[AppendFuture[Any]] | None = None,
) -> None:
    """:func:`complete_all` for a batch that all succeeded: each future keeps its result's fields (its message's
    time tick, last-confirmed ID (its own ID when None) and txn context) and builds the result when read.
    A batch's futures are all still running (see :func:`complete_all`)."""
    called: list[AppendFuture[Any]] = []
    with cond.lock:
        special: list[AppendFuture[Any]] = []
        for f, m, o in zip(futs, appended.msgs, appended, strict=True):
            f._id = o
            f._tt = m.time_tick
            f._lc = o if (lc := m.last_confirmed_message_id) is None else lc
            f._txn = m.txn_ctx
            f._result = _LAZY
            f._exception = None
            f._state = FINISHED  # last: result() reads the fields once it sees FINISHED, without the lock
            if f._x is not None:  # rare: waited on, or with callbacks
                special.append(f)
        _tell_waiters(special, called)
        cond.notify_all()
    _run_callbacks(called, callbacks)


def _tell_waiters(succeeded: list[AppendFuture[Any]], called: list[AppendFuture[Any]]) -> None:
    """For futures just settled with a result (condition held) that someone waits on or has callbacks for: tell
    the ``concurrent.futures.wait``/``as_completed`` waiters, and put those with callbacks in ``called``."""
    for f in succeeded:
        for w in f._x[0]:  # type: ignore[index]
            w.add_result(f)
        if f._x[1]:  # type: ignore[index]
            called.append(f)


def _run_callbacks(called: list[AppendFuture[Any]], callbacks: list[AppendFuture[Any]] | None) -> None:
    """Run the done callbacks of ``called`` (condition released), or leave them to the caller in ``callbacks``."""
    if callbacks is not None:
        callbacks += called
        return
    invoke_callbacks(called)


def invoke_callbacks(futs: list[AppendFuture[Any]]) -> None:
    """Run the done callbacks of settled futures whose callbacks were left to the caller (see ``callbacks``).

    A callback that raises an ``Exception`` is logged by ``Future`` and the others run. One that raises
    ``SystemExit`` or ``KeyboardInterrupt`` must not skip the callbacks of the other futures either (an
    ``asyncio.wrap_future`` awaiter would then wait for ever on a finished future): they all run, then the first
    such exception is raised.
    """
    first: BaseException | None = None
    for f in futs:
        try:
            f._invoke_callbacks()
        except BaseException as e:
            if first is None:
                first = e
    if first is not None:
        raise first


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
