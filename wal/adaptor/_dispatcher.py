"""One thread per WAL that drains queued appends in batches (group commit) and runs periodic work.

Why one thread: a FIFO queue drained by one thread keeps a producer's order (its ``append_async`` calls are
persisted, and get time ticks, in call order), lets every batch reach the backend as one ``append_batch`` call,
and serialises the time-tick bookkeeping so it needs no lock on the hot path.

Queue entries are either one message's future (``append_async``; the message waits beside it), or a synchronous
caller's group with one :class:`~._future.GroupWaiter` (``append``/``append_messages``: no per-message future to
build and complete; the waiter's own lock, so a finished batch wakes exactly its callers). Futures are
:class:`~._future.AppendFuture`: one shared condition, settled a batch at a time; their messages wait in a
parallel deque, so a settled future never holds its message.

A group submitted without a timeout while nothing is queued or running is run inline, in the caller's thread (a
``busy`` flag keeps one batch at a time, whichever thread runs it): a synchronous ``append`` then costs no thread
hand-off and no future, which is most of the adaptor's latency at low rates. When a batch woke several
synchronous callers, the thread waits a moment for them to queue again before taking the next batch (group
commit across threads: see :meth:`AppendDispatcher._gather`).

Pipelined ``append_async`` works the same way: the producer whose message fills a batch runs it inline (see
:meth:`AppendDispatcher._may_run_inline`), and the thread leaves queued futures to their producers while they
keep queuing (at most :data:`DEFER_MAX`): it takes a lone append at once, a burst once it stops growing.
Periodic work that falls due while they do is run by the producer at the end of its inline run
(:meth:`AppendDispatcher._run_periodic`), so the thread needs no turn of its own every period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from asyncio import _get_running_loop as _running_loop
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures._base import RUNNING
from typing import Any

from .._types import AppendResult
from ..errors import PartialAppendError, ShutdownError, WALError, WALTimeoutError
from ..message import MessageType, MutableMessage
from ._future import (
    Appended,
    AppendFuture,
    GroupWaiter,
    complete_all,
    complete_appended,
    future_class,
    invoke_callbacks,
    new_condition,
)

__all__ = ["AppendDispatcher", "BatchProcessor", "FuturesProcessor"]

log = logging.getLogger(__name__)

DEFER_STEP = 0.0002
"""How long the thread waits at a time while producers are still queuing futures (see ``AppendDispatcher._run``)."""

DEFER_MAX = 0.002
"""The longest the thread leaves queued futures to their producers before it takes them itself."""

DEFER_TICK_MAX = 0.02
"""The longest the thread leaves due periodic work to producers that keep queuing futures (see ``_run``)."""

GATHER_SECONDS = 0.0005
"""How long the thread waits, after waking several synchronous callers, for them to queue again."""

BatchProcessor = Callable[[Sequence[MutableMessage], Sequence[int]], list[AppendResult | BaseException]]
"""Appends a batch and returns one outcome per message; must not raise (failures are per message). The second
argument splits the batch into its callers' units, in order, as message counts (empty: every message is one):
a synchronous caller's group is written whole or not at all, so that its caller, who gets one error for the
group, never leaves part of it stored (a retry would store that part twice)."""

FuturesProcessor = Callable[[Sequence[MutableMessage]], list[AppendResult | BaseException] | Appended]
"""Appends a batch of futures only (every message its own unit, see :data:`BatchProcessor`); may return
:class:`~._future.Appended` (every message succeeded; the futures build their results when read)."""


def _accept_any(msg: object) -> object:
    return msg


def _group_outcome(got: Sequence[object]) -> Sequence[object] | BaseException:
    """What a synchronous group's caller gets: its results, the error when nothing of it was stored, or a
    :class:`~wal.errors.PartialAppendError` carrying every outcome when some of it was."""
    err = next((o for o in got if isinstance(o, BaseException)), None)
    if err is None:
        return got
    stored = sum(1 for o in got if not isinstance(o, BaseException))
    if not stored:
        return err
    p = PartialAppendError(f"{stored} of {len(got)} messages of the group were stored, the others refused: {err}",
                           list(got))
    p.__cause__ = err
    return p


_live: weakref.WeakSet[AppendDispatcher] = weakref.WeakSet()
"""Every dispatcher of this process, for :func:`_disarm_in_child`."""


def _disarm_in_child() -> None:
    """In a forked child: every dispatcher copied refuses appends at once and closes without waiting.

    The child has none of the parent's threads: a queued append waited for ever for the append thread, and
    ``close()`` waited for ever for it to end (review: a forked worker's ``w.close()`` hung). Fresh locks, since
    another thread may have held the copied ones at the fork; the queue and the count in flight are the parent's.
    """
    for d in list(_live):
        d._lock = threading.RLock()
        d._has_work = threading.Condition(d._lock)
        d._has_room = threading.Condition(d._lock)
        d._queue = deque()
        d._inflight = d._groups = d._room_waiters = 0
        d._busy = d._waits_for_inline = False
        d._forked = d._closing = True
        d._room = 0
        # The futures' shared condition too; a future still pending refuses to wait (AppendFuture._wait_finished).
        d._fcond = d._future_cls._condition = new_condition()
        d._future_cls._forked = True


os.register_at_fork(after_in_child=_disarm_in_child)


def _interrupted() -> WALError:
    """The outcome of an append whose batch an interrupt (Ctrl-C) cut short."""
    return WALError("append interrupted while its batch was written: it may or may not be persisted")


# One message of append_async: its future; a synchronous caller's group: (messages, its GroupWaiter)
# (``run_group``). The queue holds each entry followed by its message (None for a group): one ``extend`` per
# entry, which a signal cannot split, and a future never holds its message.
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
        check: Callable[[object], object] = _accept_any,
        checked_types: frozenset[MessageType] = frozenset(),
        process_futures: FuturesProcessor | None = None,
        on_interrupt: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._name = name
        self._process = process
        self._process_futures: FuturesProcessor = (
            (lambda msgs: process(msgs, ())) if process_futures is None else process_futures
        )
        self._check = check  # raises for a message submit_one must refuse (called unless the usual kind)
        self._checked_types = checked_types  # message types always given to check (the rest: when unusual)
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._ready = ready
        self._periodic = periodic
        self._period = period
        self._on_interrupt = on_interrupt
        self._lock = threading.RLock()  # not a Lock: docs/ARCHITECTURE.md, "Interrupts"
        self._has_work = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._queue: deque[Any] = deque()  # entry, message, entry, message... (see _Entry)
        self._batch_len = 2 * max_batch  # the queue's length when it holds a full batch of futures
        self._groups = 0  # entries of the queue that are groups (none: a batch is taken without a Python loop)
        self._fcond = new_condition()  # shared by every future of this dispatcher
        self._future_cls = future_class(self._fcond)
        self._inflight = 0  # messages queued or being processed
        self._idle = False  # the thread waits for work (producers notify only then)
        self._busy = False  # a batch or the periodic work is running (in the thread, or inline in a caller)
        self._waits_for_inline = False  # the thread waits (with no deadline) for an inline batch to end
        self._room_waiters = 0
        self._notify_mark = 0  # queue length when a producer last woke the thread
        self._inline_runs = 0  # batches of futures run by their producers (the thread defers only after one)
        self._next_tick = float("inf")  # when the periodic work is due next (set once ready; moved by whoever runs it)
        self._runner_ticks = False  # the caller running inline is a producer of futures: it runs due periodic work
        self._unclaimed = False  # a producer left a full batch it may not run (an asyncio loop's thread)
        self._room = max_inflight  # submit_one's bound: 0 once closing (one test for both on the hot path)
        self._wake_at = 1  # queue length at which a producer wakes the idle thread (more while it gathers)
        self._closing = False
        self._forked = False  # this is a forked child's copy (see _disarm_in_child)
        self._died_of: BaseException | None = None  # what ended the thread early (a bug: see _run)
        self._abort = False
        self._triggered: bool | None = None  # a sync asked for out of period; True = persisted
        # Set as the thread ends. Closers wait for it, not join(): in 3.11 a join that a Ctrl-C cuts short marks
        # the thread ended, and every later join (a close finishing the one cut short) returns at once.
        self._exited = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wal-append-{name}", daemon=True)
        self._future_cls._settler = self._thread  # result() refuses to wait for itself there (see AppendFuture)
        try:
            self._thread.start()
        except RuntimeError as e:  # a bare RuntimeError escaped the open, where every error is a WALError
            raise WALError(
                f"wal {name}: cannot start its append thread ({e}): each WAL open for writing has one, so this "
                "process has reached its thread limit; close WALs, or raise the limit (ulimit -u, the cgroup's "
                "pids.max)"
            ) from e
        _live.add(self)

    # -- producers ----------------------------------------------------------------------------------------------
    def _admit(self, n: int, deadline: float | None) -> None:
        """Wait (lock held) until ``n`` more messages fit; a group larger than the bound is let in alone. The
        thread itself (a done callback that appends) is let in at once: only it could free the room."""
        while (
            not self._closing
            and self._inflight
            and self._inflight + n > self._max_inflight
            and threading.current_thread() is not self._thread
        ):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WALTimeoutError(f"append: {self._inflight} appends in flight, no room in time")
            self._room_waiters += 1
            try:
                self._has_room.wait(left)
            finally:
                self._room_waiters -= 1
        if self._closing:
            raise self._closed_error()

    def _closed_error(self) -> WALError:
        if self._forked:
            return ShutdownError(
                f"wal {self._name} was opened by the parent of this forked process, whose append thread it cannot use: "
                "open the channel in this process"
            )
        if self._died_of is None:
            return ShutdownError("wal is closed")
        err = WALError(f"the append thread failed ({type(self._died_of).__name__}: {self._died_of}): reopen the wal")
        err.__cause__ = self._died_of
        return err

    def run_group(self, msgs: Sequence[MutableMessage], timeout: float | None = None) -> list[AppendResult]:
        """Append ``msgs`` together, in order, and wait for their results (raising the first error), without a
        future: run inline when it can be (see the module doc), else queued with a :class:`GroupWaiter`.
        """
        n = len(msgs)
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = GroupWaiter() if timeout is not None else None  # built before anything is counted
        owned = False  # this call set _busy to run inline (no call between the two: a signal cannot split them)
        try:
            with self._lock:
                if self._closing or (self._inflight and self._inflight + n > self._max_inflight):
                    self._admit(n, deadline)
                # The thread itself (a done callback that appends) runs its group inline, once no producer runs
                # a batch: queued, it would wait for itself.
                in_thread = threading.current_thread() is self._thread
                while in_thread and self._busy:
                    self._has_work.wait(0.01)
                # Not inline while the thread waits for an inline batch to end (periodic work is due): it takes
                # this one, else back-to-back inline callers would wake it once per batch without it ever getting
                # a turn.
                if not self._busy and (
                    in_thread
                    or (waiter is None and not self._queue and not self._waits_for_inline and self._ready.is_set())
                ):
                    self._inflight += n
                    self._busy = owned = True
                    self._runner_ticks = False
                else:
                    if waiter is None:
                        waiter = GroupWaiter()
                    self._inflight += n
                    self._groups += 1  # before the extend (a call): an interrupt after it leaves both counted
                    self._queue.extend(((msgs, waiter), None))
                    if self._idle and len(self._queue) >= 2 * self._wake_at:  # one wake-up (see submit_one)
                        self._idle = False
                        self._has_work.notify()
            if owned:
                try:
                    outcomes: object = self._process(msgs, (n,))
                except BaseException as e:  # the processor promised not to raise
                    outcomes = [e] * n
                    self._cut_short(e)
        finally:
            if owned:
                self._busy = False  # first, one store: an interrupt below must not leave the turn taken for good
                with self._lock:
                    self._inflight -= n
                    self._end_inline()
        if owned:
            outcome = _group_outcome(outcomes)  # type: ignore[arg-type]
            if isinstance(outcome, BaseException):
                raise outcome
        else:
            assert waiter is not None
            outcomes = waiter.wait(None if deadline is None else deadline - time.monotonic())
            if isinstance(outcomes, BaseException):
                raise outcomes
        return outcomes  # type: ignore[return-value]  # a list of AppendResult

    def submit_one(self, msg: MutableMessage) -> Future[AppendResult]:
        """Queue one message: the whole of ``WAL.append_async`` (the adaptor binds it as that method, a call less
        per append). Blocks while too many appends are in flight; a message the ``check`` given at construction
        refuses raises; a closed WAL gives a failed future. The call whose message fills a batch may run it (see
        :meth:`_may_run_inline`).
        """
        # The usual case: one test per attribute, else the full check. The same test as in
        # WALAdaptor.append_messages: spelled out in both, since a call per message costs more than the test.
        if (
            msg.__class__ is not MutableMessage
            or msg.message_type.__class__ is not MessageType
            or msg.message_type in self._checked_types
            or msg.vchannel.__class__ is not str
            or not msg.vchannel.isascii()
            or msg.payload.__class__ is not bytes
            or msg.txn_ctx is not None
            or msg.properties
            or msg.not_persisted
            or msg.barrier_time_tick
        ):
            self._check(msg)
        fut: AppendFuture[AppendResult] = self._future_cls()  # new_future(), spelled out
        fut._state = RUNNING
        fut._x = None
        if self._inflight >= self._room and self._queue:  # full: run queued batches here rather than wait
            self._run_queued_inline()
        # The lock taken as acquire/release, not ``with``: 190 against 70 ns here (``with`` on a C lock binds
        # __enter__ and __exit__ anew each time, and __exit__ takes a tuple), a tenth of the adaptor's cost per
        # pipelined append. Ctrl-C safe as ``with`` is (docs/ARCHITECTURE.md, "Interrupts"): an interrupt
        # raised as acquire() returns is inside the try, one raised in a blocked acquire() leaves the lock not held
        # (release() then refuses), and the finally makes no call before release(): CPython acts on a signal after
        # a call returns, so a test such as ``_is_owned()`` there left the lock held for good (seen: a close hung).
        lock = self._lock
        try:
            lock.acquire()
            if self._inflight >= self._room:  # still full, or closing
                try:
                    self._admit(1, None)
                except Exception as e:  # closed: the error travels in the future, as every append_async error
                    failed: Future[AppendResult] = Future()
                    failed.set_exception(e)
                    return failed
            self._inflight += 1  # before the extend: an interrupt after it leaves the entry queued and counted
            queue = self._queue
            queue.extend((fut, msg))  # one call: entry and message go in together
            if len(queue) < self._batch_len or self._busy or not self._may_run_inline():
                if len(queue) >= self._batch_len and not self._busy:
                    self._unclaimed = True  # a full batch no producer here may run: the thread takes it at once
                if self._idle:  # one wake-up: until the thread runs, later producers see it as not idle
                    self._idle = False
                    self._notify_mark = len(queue)
                    self._has_work.notify()
                return fut
        finally:
            try:
                lock.release()  # one call: an interrupt is acted on only after it has released (as ``with``'s exit)
            except RuntimeError:
                pass  # not held: the interrupt struck while acquire() waited
        self._run_queued_inline()
        return fut

    def _run_queued_inline(self) -> None:
        """Run what is queued (futures only) in this producer's thread, a batch at a time, if it may.

        Ctrl-C can strike after any call returns: the queue is taken by swapping it for a new one and marked as
        this call's (``owned``) with no call in between, and everything after is in the try, so that no future
        taken stays pending for ever.
        """
        owned = False
        done = [0]  # futures of the taken queue counted out of _inflight by their batch (see _run_batch)
        callbacks: list[AppendFuture[Any]] = []
        try:
            with self._lock:
                if not self._queue or not self._may_run_inline():
                    return
                fresh: deque[Any] = deque()
                self._inline_runs += 1
                taken = self._queue
                self._queue = fresh
                self._busy = owned = True
                self._runner_ticks = True
            self._run_taken(taken, callbacks, done)
            if self._periodic is not None and (now := time.monotonic()) >= self._next_tick:
                self._run_periodic(False, now)
        except BaseException:
            if owned:
                self._fail_taken(taken, done[0], callbacks)
            raise
        finally:
            if owned:
                self._busy = False  # first, one store: an interrupt below must not leave the turn taken for good
                with self._lock:
                    self._end_inline()
                invoke_callbacks(callbacks)  # after the batch is over: a callback may append, or close the WAL

    def _end_inline(self) -> None:
        """A caller's inline run is over and its turn freed (``_busy`` cleared just before, without the lock: a
        Ctrl-C landing in this call or while it waits for the lock must not leave the turn taken for good). Lock
        held: wake who waits for room, and the thread if it has queued work, is owed its turn, or has periodic work
        due that this run did not do (it waited for the run to do it: see ``_run``), else it sleeps on."""
        if self._room_waiters:
            self._has_room.notify_all()
        if self._idle and (self._queue or self._waits_for_inline or time.monotonic() >= self._next_tick):
            self._idle = False
            self._has_work.notify()

    def _run_taken(self, taken: deque[Any], callbacks: list[AppendFuture[Any]], done: list[int]) -> None:
        """Run the futures a producer took (entries and messages, interleaved), a batch at a time."""
        items = list(taken)
        step = self._batch_len
        for i in range(0, len(items), step):
            chunk = items[i : i + step]
            batch: list[_Entry] = chunk[0::2]
            self._run_batch(batch, chunk[1::2], len(batch), False, callbacks, done, inline=True)

    def _fail_taken(self, taken: deque[Any], done: int, callbacks: list[AppendFuture[Any]]) -> None:
        """After an interrupt: fail the taken futures not settled (their callbacks left in ``callbacks``, run once
        the turn is free), and count out of ``_inflight`` those no batch counted out (``done`` of them were)."""
        items = list(taken)
        self._fail_unsettled(items[0::2], callbacks)
        with self._fcond.lock:  # wake result() waiters even if an interrupted settle skipped its notify
            self._fcond.notify_all()
        with self._lock:
            self._inflight -= len(items) // 2 - done
            if self._room_waiters:
                self._has_room.notify_all()

    def _take(self, queue: deque[Any]) -> list[Any]:
        """Up to one batch of a queue of futures only: entries and messages, interleaved (lock held)."""
        if len(queue) <= self._batch_len:
            items = list(queue)
            queue.clear()
            return items
        popleft = queue.popleft
        return [popleft() for _ in range(self._batch_len)]

    def _fail_unsettled(self, batch: list[Any], callbacks: list[AppendFuture[Any]]) -> None:
        """Fail the futures of ``batch`` still running; their done callbacks are left in ``callbacks`` (the caller
        holds the turn: a callback may append, or close the WAL, which waits for the turn)."""
        left = [f for f in batch if isinstance(f, AppendFuture) and f._state == RUNNING]
        if left:
            err = _interrupted()
            complete_all(self._fcond, left, [err] * len(left), callbacks)

    def _may_run_inline(self) -> bool:
        """Whether the producer whose message fills a batch runs that batch itself (lock held), as a synchronous
        caller runs its group inline: in its own thread the messages it just built are still in its CPU's cache,
        and no thread hand-off is paid (measured: the same batches cost about 15% more CPU when another thread
        runs them). Not while a batch runs or a group is queued (the thread settles those and gathers their
        callers), nor when the thread is owed a turn or the WAL closes, nor in a thread running an asyncio event
        loop: the loop would stop for the batch's write and fdatasync.
        """
        return (
            not (self._busy or self._groups or self._waits_for_inline or self._closing)
            and self._ready.is_set()
            and _running_loop() is None
        )

    def _run_periodic(self, persisted: bool, now: float) -> None:
        """The periodic work, by whoever holds the turn (``_busy``): the thread, or a producer at the end of its
        inline run (the thread would otherwise need a turn of its own every period, and producers would stall
        while it takes it: measured, 4% of a pipelined run waiting for room, a tenth of its batches run by the
        thread). Moves the next deadline."""
        assert self._periodic is not None
        try:
            self._periodic(persisted)
        except Exception:  # a failed tick must not kill appends; the next one retries
            pass
        except BaseException as ex:  # Ctrl-C, SystemExit: the tick's bookkeeping may be cut short
            self._cut_short(ex)
            if not self.in_thread():
                raise  # a producer's run: the interrupt is its caller's; the thread lives on to fail what comes
        finally:
            self._next_tick = now + self._period

    def _cut_short(self, ex: BaseException) -> None:
        """``ex`` escaped the processor or the periodic work. One that is not an ``Exception`` (Ctrl-C,
        SystemExit) may have cut their bookkeeping short (a time tick allocated and never acknowledged holds every
        later one back), so the owner is told (the WAL stops writing, see ``WALAdaptor._on_interrupt``)."""
        if self._on_interrupt is not None and not isinstance(ex, Exception):
            self._on_interrupt(ex)

    def trigger(self, persisted: bool) -> None:
        """Run the periodic work now (``persisted`` is passed on; a True request wins over a False one)."""
        with self._lock:
            self._triggered = persisted or bool(self._triggered)
            self._has_work.notify()

    # -- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as ex:  # logged, not raised: the WAL reports it (is_available(), its appends' errors)
            log.error("wal %s: the append thread failed; the wal stops", self._name, exc_info=ex)
            self._died(ex)
        finally:
            self._exited.set()

    def _died(self, ex: BaseException) -> None:
        """The thread ends on an error of its own (a bug; a Ctrl-C lands only in the main thread): nothing would
        take queued appends any more, and their callers would wait for ever. Fail them and every later append with
        an error caused by ``ex``, and tell the owner (the WAL stops, as after an interrupt)."""
        with self._lock:
            self._died_of = ex
            self._closing = True
            self._room = 0
            called = self._fail_queued()
        invoke_callbacks(called)
        if self._on_interrupt is not None:
            self._on_interrupt(ex)

    def _serve(self) -> None:
        while not self._ready.is_set():
            if self._ready.wait(0.05):
                break
            with self._lock:
                failed = self._fail_queued() if self._closing else None
            if failed is not None:
                invoke_callbacks(failed)
                return
        self._next_tick = time.monotonic() + self._period
        seen_inline = 0  # _inline_runs when the thread last took a batch
        aborted: list[AppendFuture[Any]] = []
        while True:
            with self._lock:
                # Queued futures (no group): their producers run full batches themselves (see submit_one). The
                # thread takes them once no producer has queued any since it last looked (a lone append_async at
                # once: none since the one that woke it), or after DEFER_MAX.
                mark = -1  # the queue's length when the thread last looked (-1: not looked yet)
                since = 0.0
                while True:
                    left: float | None = None  # None: until woken
                    queue = self._queue  # read again after every wait: a producer may have swapped it
                    if not self._busy:
                        if self._closing or self._triggered is not None:
                            break
                        if queue:
                            now = time.monotonic()
                            # No waiting when producers will not run these batches: a group is queued, the thread
                            # is owed its turn or its periodic work is due (producers may not run inline then), or
                            # none ran a batch since the thread's last one and no full batch waits for them. (A
                            # producer that finds no room runs queued batches itself: see submit_one.)
                            # Periodic work due while producers run batches: the one that fills the next batch
                            # runs it too (see _run_queued_inline), as long as the queue keeps growing.
                            due = now >= self._next_tick
                            idle_producers = self._inline_runs == seen_inline
                            if (
                                self._groups
                                or self._unclaimed
                                or self._waits_for_inline
                                or (due and idle_producers)
                                or (idle_producers and len(queue) < self._batch_len)
                            ):
                                break
                            if mark < 0:
                                mark, since = self._notify_mark, now
                            if len(queue) == mark or now - since >= (DEFER_TICK_MAX if due else DEFER_MAX):
                                break  # not grown: no producer at work
                            mark = len(queue)
                            self._has_work.wait(DEFER_STEP)  # not idle: producers do not wake it meanwhile
                            continue
                        mark = -1
                        left = self._next_tick - time.monotonic()
                        if left <= 0:
                            break
                    else:  # a caller runs a batch inline: wait for its end when the thread has work of its own
                        mark = -1
                        left = self._next_tick - time.monotonic()
                        if self._closing or self._triggered is not None:
                            left = None
                        elif left <= 0:  # periodic work due: a producer of futures runs it at the end of its run
                            left = self._period if self._runner_ticks else None
                    self._idle = True
                    self._waits_for_inline = left is None
                    # Never without a deadline: a notify cut short by a signal in the notifier (Condition.notify
                    # is Python code) would otherwise be lost for good.
                    self._has_work.wait(self._period if left is None else left)
                    self._idle = False
                self._waits_for_inline = False
                self._unclaimed = False
                self._busy = True
                self._runner_ticks = False
                if self._abort:
                    aborted = self._fail_queued()
                    break  # out of the loop, lock released, to run their callbacks
                seen_inline = self._inline_runs
                groups = self._groups
                batch, msgs, n = self._take_batch(queue)
                stop = self._closing and not queue
                trig, self._triggered = self._triggered, None
            callbacks: list[AppendFuture[Any]] = []
            try:
                try:
                    woken = self._run_batch(batch, msgs, n, groups > 0, callbacks) if batch else 0
                except Exception:  # a bug, not an append's failure: fail the batch, keep the thread alive
                    self._fail_unsettled(batch, callbacks)
                    woken = 0
                if woken >= 2:
                    self._gather(woken)
                now = time.monotonic()
                if self._periodic is not None and (trig is not None or now >= self._next_tick):
                    self._run_periodic(bool(trig), now)
                elif self._periodic is None and now >= self._next_tick:
                    self._next_tick = now + self._period  # nothing periodic to run: do not wake for it again at once
            finally:
                with self._lock:
                    self._busy = False
            self._thread_callbacks(callbacks)  # after the batch is over: a callback may append, or close the WAL
            if stop:
                return
        self._thread_callbacks(aborted)

    def _take_batch(self, queue: deque[Any]) -> tuple[list[_Entry], list[Any], int]:
        """Up to one batch of the queue (lock held): its entries, their messages in order, the message count."""
        if not self._groups:  # futures only (append_async): one message each, taken in C
            items = self._take(queue)
            batch: list[_Entry] = items[0::2]
            return batch, items[1::2], len(batch)
        batch = []
        msgs: list[Any] = []
        n = 0
        while queue and n < self._max_batch:
            e = queue.popleft()
            m = queue.popleft()
            batch.append(e)
            if m is not None:  # a future's message
                msgs.append(m)
                n += 1
            else:
                msgs.extend(e[0])
                n += len(e[0])
                self._groups -= 1
        return batch, msgs, n

    def _drain_in_thread(self) -> None:
        """``close()`` from a done callback, in the thread: run what was accepted now. The thread would drain it
        only after the callback returns, and by then the WAL has closed the backend under it (the accepted appends
        failed with ShutdownError, where a close from any other thread stores them)."""
        callbacks: list[AppendFuture[Any]] = []
        while True:
            with self._lock:
                while self._busy:
                    self._has_work.wait(0.005)
                if not self._queue:
                    break
                groups = self._groups
                batch, msgs, n = self._take_batch(self._queue)
                self._busy = True
            try:
                try:
                    self._run_batch(batch, msgs, n, groups > 0, callbacks)
                except Exception:  # a bug, not an append's failure: fail the batch, as the thread's loop does
                    self._fail_unsettled(batch, callbacks)
            finally:
                with self._lock:
                    self._busy = False
        self._thread_callbacks(callbacks)

    def _thread_callbacks(self, futs: list[AppendFuture[Any]]) -> None:
        """Run done callbacks in the thread. A ``SystemExit`` raised by one (``sys.exit()``) ends nothing but that
        callback: the thread serves every WAL caller, so it is logged, as ``Future`` logs an ``Exception``."""
        try:
            invoke_callbacks(futs)
        except BaseException as e:
            log.error("wal %s: a done callback of append_async raised %s", self._name, type(e).__name__, exc_info=e)

    def _run_batch(
        self,
        batch: list[_Entry],
        msgs: list[MutableMessage],
        n: int,
        maybe_groups: bool = True,
        callbacks: list[AppendFuture[Any]] | None = None,
        done: list[int] | None = None,
        inline: bool = False,
    ) -> int:
        """Run one batch (``msgs``: its messages, in order) and settle it; returns how many synchronous callers
        (group waiters) it woke. ``maybe_groups`` False: every entry is a future.

        ``callbacks``: the futures whose done callbacks are due are put there, to be run once the batch is over
        (a callback may append, or close the WAL); ``done[0]`` grows by ``n`` with the in-flight count going down;
        ``inline`` (a producer runs the batch): an interrupt (Ctrl-C) raised in the backend fails the batch's
        futures with a :class:`WALError` caused by it, then reaches the producer."""
        interrupt: BaseException | None = None
        waiters: list[tuple[GroupWaiter, object]] = []
        try:
            groups = maybe_groups and any(e.__class__ is tuple for e in batch)
            try:
                if groups:
                    units = [len(e[0]) if e.__class__ is tuple else 1 for e in batch]
                    outcomes = self._process(msgs, units)
                else:
                    outcomes = self._process_futures(msgs)
            except BaseException as ex:  # the processor promised not to raise; fail the batch, do not hang callers
                outcomes = [ex] * len(msgs)
                if not isinstance(ex, Exception):  # Ctrl-C, SystemExit: never raised in another thread's result()
                    self._cut_short(ex)
                    if inline:
                        interrupt = ex
                    failed = _interrupted()
                    failed.__cause__ = ex
                    outcomes = [failed] * len(msgs)
            if not groups:  # only single messages (the append_async case): outcomes map one to one
                futs: list[AppendFuture[Any]] = batch  # type: ignore[assignment]  # all futures
                settled: list[object] = outcomes  # type: ignore[assignment]
            else:
                futs = []
                settled = []
                i = 0
                for e in batch:
                    if e.__class__ is not tuple:  # a future
                        futs.append(e)  # type: ignore[arg-type]
                        settled.append(outcomes[i])
                        i += 1
                        continue
                    group, waiter = e
                    got = outcomes[i : i + len(group)]
                    i += len(group)
                    waiters.append((waiter, _group_outcome(got)))
            if outcomes.__class__ is Appended:  # futures only, all succeeded
                complete_appended(self._fcond, batch, outcomes, callbacks)  # type: ignore[arg-type]
            elif futs:
                complete_all(self._fcond, futs, settled, callbacks)
        finally:
            with self._lock:
                self._inflight -= n
                if done is not None:  # no call since the line above: the two cannot be split
                    done[0] += n
                if self._room_waiters:
                    self._has_room.notify_all()
        for w, o in waiters:
            w.settle(o)
        if interrupt is not None:
            raise interrupt
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
            while len(self._queue) < 2 * want and not self._closing:  # two items per entry
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake_at = want
                self._idle = True
                self._has_work.wait(left)
                self._idle = False
            self._wake_at = 1

    def _fail_queued(self) -> list[AppendFuture[Any]]:
        """Fail what is queued (lock held); returns the futures whose done callbacks are due, for the caller to run
        once the lock is released (a callback may close the WAL, which takes it)."""
        err = self._closed_error()
        futs: list[AppendFuture[Any]] = []
        waiters: list[GroupWaiter] = []
        self._groups = 0
        while self._queue:
            e = self._queue.popleft()
            self._queue.popleft()  # its message
            if e.__class__ is not tuple:  # a future
                futs.append(e)
                self._inflight -= 1
                continue
            m, waiter = e
            waiters.append(waiter)
            self._inflight -= len(m)
        called: list[AppendFuture[Any]] = []
        complete_all(self._fcond, futs, [err] * len(futs), called)
        for w in waiters:
            w.settle(err)
        self._has_room.notify_all()
        return called

    def close(self, drain: bool = True) -> None:
        """Stop accepting; finish what is queued (``drain``) or fail it with ShutdownError; join the thread."""
        if self._forked:
            return  # a forked child's copy: no thread to wait for, nothing of its own queued
        with self._lock:
            self._closing = True
            self._room = 0
            self._abort = not drain
            self._has_work.notify_all()
            self._has_room.notify_all()
        if not self.in_thread():
            self._exited.wait()
            return
        # A done callback run by the thread closes the WAL: the thread ends only after this returns, so wait here
        # for a producer's inline run (a batch, a tick) to end before the WAL goes on to close what it uses, and
        # run what was accepted. Producers start no new run once closing. (The thread runs callbacks only without
        # the turn.)
        if drain:
            self._drain_in_thread()
        with self._lock:
            while self._busy:
                self._has_work.wait(0.005)

    @property
    def forked(self) -> bool:
        """Whether this is a forked child's copy (see :func:`_disarm_in_child`)."""
        return self._forked

    def in_thread(self) -> bool:
        """Whether the caller is this dispatcher's thread (running a done callback)."""
        return threading.current_thread() is self._thread
