"""One thread per WAL that drains queued appends in batches (group commit) and runs periodic work.

Why one thread: a FIFO queue drained by one thread keeps a producer's order (its ``append_async`` calls are
persisted, and get time ticks, in call order), lets every batch reach the backend as one ``append_batch`` call,
and serialises the time-tick bookkeeping so it needs no lock on the hot path.

Queue entries are either one message's future, which carries the message (``append_async``), or a synchronous
caller's group with one :class:`~._future.GroupWaiter` (``append``/``append_messages``: no per-message future to
build and complete; the waiter's own lock, so a finished batch wakes exactly its callers). Futures are
:class:`~._future.AppendFuture`: one shared condition, settled a batch at a time.

A group submitted without a timeout while nothing is queued or running is run inline, in the caller's thread (a
``busy`` flag keeps one batch at a time, whichever thread runs it): a synchronous ``append`` then costs no thread
hand-off and no future, which is most of the adaptor's latency at low rates. When a batch woke several
synchronous callers, the thread waits a moment for them to queue again before taking the next batch (group
commit across threads: see :meth:`AppendDispatcher._gather`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._types import AppendResult
from ..errors import ShutdownError, WALTimeoutError
from ..message import MutableMessage
from ._future import AppendFuture, GroupWaiter, complete_all, new_condition

__all__ = ["AppendDispatcher", "BatchProcessor"]

GATHER_SECONDS = 0.0005
"""How long the thread waits, after waking several synchronous callers, for them to queue again."""

BatchProcessor = Callable[[Sequence[MutableMessage]], list[AppendResult | BaseException]]
"""Appends a batch and returns one outcome per message; must not raise (failures are per message)."""

# One message of append_async: its future, holding it in ``msg``; a synchronous caller's group: (messages, its
# GroupWaiter) (``run_group``).
_Entry = AppendFuture[Any] | tuple[Sequence[MutableMessage], GroupWaiter]


class AppendDispatcher:
    def __init__(
        self,
        name: str,
        process: BatchProcessor,
        *,
        max_inflight: int,
        max_batch: int,
        ready: threading.Event,
        periodic: Callable[[bool], None] | None = None,
        period: float = 0.2,
    ) -> None:
        self._process = process
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._ready = ready
        self._periodic = periodic
        self._period = period
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._queue: deque[_Entry] = deque()
        self._groups = 0  # entries of the queue that are groups (none: a batch is taken without a Python loop)
        self._fcond = new_condition()  # shared by every future of this dispatcher
        self._inflight = 0  # messages queued or being processed
        self._idle = False  # the thread waits for work (producers notify only then)
        self._busy = False  # a batch or the periodic work is running (in the thread, or inline in a caller)
        self._waits_for_inline = False  # the thread waits (with no deadline) for an inline batch to end
        self._room_waiters = 0
        self._wake_at = 1  # queue length at which a producer wakes the idle thread (more while it gathers)
        self._closing = False
        self._abort = False
        self._triggered: bool | None = None  # a sync asked for out of period; True = persisted
        self._thread = threading.Thread(target=self._run, name=f"wal-append-{name}", daemon=True)
        self._thread.start()

    # -- producers ----------------------------------------------------------------------------------------------
    def _admit(self, n: int, deadline: float | None) -> None:
        """Wait (lock held) until ``n`` more messages fit; a group larger than the bound is let in alone."""
        while not self._closing and self._inflight and self._inflight + n > self._max_inflight:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WALTimeoutError(f"append: {self._inflight} appends in flight, no room in time")
            self._room_waiters += 1
            try:
                self._has_room.wait(left)
            finally:
                self._room_waiters -= 1
        if self._closing:
            raise ShutdownError("wal is closed")

    def run_group(self, msgs: Sequence[MutableMessage], timeout: float | None = None) -> list[AppendResult]:
        """Append ``msgs`` together, in order, and wait for their results (raising the first error), without a
        future: run inline when it can be (see the module doc), else queued with a :class:`GroupWaiter`.
        """
        n = len(msgs)
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = None
        with self._lock:
            if self._closing or (self._inflight and self._inflight + n > self._max_inflight):
                self._admit(n, deadline)
            self._inflight += n
            # Not inline while the thread waits for an inline batch to end (periodic work is due): it takes this
            # one, else back-to-back inline callers would wake it once per batch without it ever getting a turn.
            inline = (
                timeout is None
                and not self._busy
                and not self._queue
                and not self._waits_for_inline
                and self._ready.is_set()
            )
            if inline:
                self._busy = True
            else:
                waiter = GroupWaiter()
                self._queue.append((msgs, waiter))
                self._groups += 1
                if self._idle and len(self._queue) >= self._wake_at:  # one wake-up (see submit_one)
                    self._idle = False
                    self._has_work.notify()
        if waiter is None:
            try:
                try:
                    outcomes: object = self._process(msgs)
                except BaseException as e:  # the processor promised not to raise
                    outcomes = [e] * n
            finally:
                with self._lock:
                    self._busy = False
                    self._inflight -= n
                    if self._room_waiters:
                        self._has_room.notify_all()
                    if self._idle and (self._queue or self._waits_for_inline):  # else it sleeps on
                        self._idle = False
                        self._has_work.notify()
            for o in outcomes:  # type: ignore[attr-defined]
                if isinstance(o, BaseException):
                    raise o
        else:
            outcomes = waiter.wait(None if deadline is None else deadline - time.monotonic())
            if isinstance(outcomes, BaseException):
                raise outcomes
        return outcomes  # type: ignore[return-value]  # a list of AppendResult

    def submit_one(self, msg: MutableMessage) -> AppendFuture[AppendResult]:
        """Queue one message (the ``append_async`` hot path); blocks while too many appends are in flight."""
        fut: AppendFuture[AppendResult] = AppendFuture(self._fcond, msg)
        with self._lock:
            if self._closing or self._inflight >= self._max_inflight:
                self._admit(1, None)
            self._queue.append(fut)
            self._inflight += 1
            if self._idle:  # one wake-up: until the thread runs, later producers see it as not idle
                self._idle = False
                self._has_work.notify()
        return fut

    def trigger(self, persisted: bool) -> None:
        """Run the periodic work now (``persisted`` is passed on; a True request wins over a False one)."""
        with self._lock:
            self._triggered = persisted or bool(self._triggered)
            self._has_work.notify()

    # -- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._ready.is_set():
            if self._ready.wait(0.05):
                break
            with self._lock:
                if self._closing:
                    self._fail_queued()
                    return
        next_tick = time.monotonic() + self._period
        queue = self._queue
        while True:
            with self._lock:
                while True:
                    left: float | None = None  # while a caller runs a batch inline: until it is done
                    if not self._busy:
                        if queue or self._closing or self._triggered is not None:
                            break
                        left = next_tick - time.monotonic()
                        if left <= 0:
                            break
                    self._idle = True
                    self._waits_for_inline = left is None
                    self._has_work.wait(left)
                    self._idle = False
                self._busy = True
                if self._abort:
                    self._fail_queued()
                    return
                groups = self._groups
                if not groups:  # futures only (append_async): one message each, taken in C
                    n = len(queue)
                    if n <= self._max_batch:
                        batch: list[_Entry] = list(queue)
                        queue.clear()
                    else:
                        n = self._max_batch
                        popleft = queue.popleft
                        batch = [popleft() for _ in range(n)]
                else:
                    batch = []
                    n = 0
                    while queue and n < self._max_batch:
                        e = queue.popleft()
                        batch.append(e)
                        if e.__class__ is AppendFuture:
                            n += 1
                        else:
                            n += len(e[0])  # type: ignore[index]
                            self._groups -= 1
                stop = self._closing and not queue
                trig, self._triggered = self._triggered, None
            try:
                if batch and (woken := self._run_batch(batch, n, groups > 0)) >= 2:
                    self._gather(woken)
                now = time.monotonic()
                if self._periodic is not None and (trig is not None or now >= next_tick):
                    try:
                        self._periodic(bool(trig))
                    except Exception:  # a failed tick must not kill appends; the next one retries
                        pass
                    next_tick = now + self._period
            finally:
                with self._lock:
                    self._busy = False
            if stop:
                return

    def _run_batch(self, batch: list[_Entry], n: int, maybe_groups: bool = True) -> int:
        """Run one batch and settle it; returns how many synchronous callers (group waiters) it woke.
        ``maybe_groups`` False: every entry is a future."""
        groups = False
        if not maybe_groups:
            msgs: list[MutableMessage] = [e.msg for e in batch]  # type: ignore[union-attr]
        else:
            msgs = []
            add = msgs.append
            for e in batch:
                if e.__class__ is AppendFuture:
                    add(e.msg)
                else:
                    msgs.extend(e[0])  # type: ignore[index]
                    groups = True
        try:
            outcomes = self._process(msgs)
        except BaseException as ex:  # the processor promised not to raise; fail the batch rather than hang callers
            outcomes = [ex] * len(msgs)
        waiters: list[tuple[GroupWaiter, object]] = []
        if not groups:  # only single messages (the append_async case): outcomes map one to one
            futs: list[AppendFuture[Any]] = batch  # type: ignore[assignment]  # all futures
            settled: list[object] = outcomes  # type: ignore[assignment]
        else:
            futs = []
            settled = []
            i = 0
            for e in batch:
                if e.__class__ is AppendFuture:
                    futs.append(e)
                    settled.append(outcomes[i])
                    i += 1
                    continue
                group, waiter = e  # type: ignore[misc]
                got = outcomes[i : i + len(group)]
                i += len(group)
                err = next((o for o in got if isinstance(o, BaseException)), None)
                waiters.append((waiter, err if err is not None else got))
        if futs:
            complete_all(self._fcond, futs, settled)
        with self._lock:
            self._inflight -= n
            if self._room_waiters:
                self._has_room.notify_all()
        for w, o in waiters:
            w.settle(o)
        return len(waiters)

    def _gather(self, woken: int) -> None:
        """After waking ``woken`` synchronous callers: give them a moment to queue their next appends, so that
        they share the next backend write and sync instead of going to it a few at a time (the thread would
        otherwise take the queue before most of them have run: it holds the interpreter while they wake).
        Bounded by :data:`GATHER_SECONDS`; callers that do not come back only cost that once.
        """
        deadline = time.monotonic() + GATHER_SECONDS
        with self._lock:
            want = min(woken, self._max_batch)
            while len(self._queue) < want and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake_at = want
                self._idle = True
                self._has_work.wait(left)
                self._idle = False
            self._wake_at = 1

    def _fail_queued(self) -> None:
        err = ShutdownError("wal is closed")
        futs: list[AppendFuture[Any]] = []
        waiters: list[GroupWaiter] = []
        self._groups = 0
        while self._queue:
            e = self._queue.popleft()
            if e.__class__ is AppendFuture:
                futs.append(e)
                self._inflight -= 1
                continue
            m, waiter = e  # type: ignore[misc]
            waiters.append(waiter)
            self._inflight -= len(m)
        complete_all(self._fcond, futs, [err] * len(futs))
        for w in waiters:
            w.settle(err)
        self._has_room.notify_all()

    def close(self, drain: bool = True) -> None:
        """Stop accepting; finish what is queued (``drain``) or fail it with ShutdownError; join the thread."""
        with self._lock:
            self._closing = True
            self._abort = not drain
            self._has_work.notify_all()
            self._has_room.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
