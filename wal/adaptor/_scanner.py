"""Scanner adaptor: catch-up from the backend, tailing from the write-ahead buffer, in time-tick order.

Everything runs in the caller's thread (``recv`` pulls a batch from the current source, runs it through the
reorder and txn buffers and serves the result), so there is no thread hop per message and no thread per
scanner. Sources switch as Milvus's switchable scanner does:

- *catch-up* reads the backend from a deliver policy, skipping ``tt <= exclusive_start``; on a persisted
  TIME_TICK ``T`` it asks the write-ahead buffer for a reader after ``T`` and, if the buffer still holds it,
  switches to *tailing*.
- *tailing* reads the write-ahead buffer; when the reader is evicted it falls back to catch-up from the last
  consumed message's last-confirmed ID with ``exclusive_start = its tt``: nothing is lost, and what is read twice
  is dropped by the reorder buffer (by ID) or by the ``tt`` bound.

An RO WAL has no write-ahead buffer: its scanners only catch up (and follow the backend's tail).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .._checks import seconds
from .._interfaces import Scanner
from .._metrics import metrics
from .._types import PChannelInfo, ReadOption
from ..errors import (
    CorruptedError,
    InvalidArgumentError,
    InvalidMessageError,
    InvalidMessageIDError,
    ShutdownError,
    UnknownBackendError,
    WALError,
    WALIOError,
    WALTimeoutError,
)
from ..message import ImmutableMessage, MessageID, MessageType, physical_ms
from ..options import DeliverPolicy, DeliverPolicyKind, filter_func
from ..utility import (
    EvictedError,
    ReorderBuffer,
    TxnBuffer,
    WriteAheadBuffer,
    WriteAheadBufferReader,
)
from ..walimpls import ReadOption as ImplsReadOption
from ..walimpls import ROWALImpls, ScannerImpls
from . import _reaper

_LAG_SAMPLE = 64  # scanner-lag metric: one observation per this many deliveries (a prometheus observe is ~3 us)
RETRY_WARNING_EVERY = 60.0
"""Seconds between warnings while backend reads keep failing: a scanner retries such a read for ever (an I/O error
or a file it may not read can be fixed while it waits), and says so at the first failure, then at most this often,
so that a follower is never stuck in silence."""

log = logging.getLogger(__name__)

__all__ = ["ScannerAdaptor"]

BATCH = 512
WAKE_SLICE = 0.1  # a tailing recv re-checks for close this often
_ASYNC_YIELD_EVERY = 256  # async for lets the event loop run other tasks after this many released messages
_TT = MessageType.TIME_TICK


# Errors of a backend's read() that no retry can fix: the scanner ends with them instead of retrying for ever.
# (UnknownBackendError: a message ID whose backend registered no unmarshaler.)
_NOT_TRANSIENT = (CorruptedError, InvalidArgumentError, InvalidMessageError, InvalidMessageIDError, UnknownBackendError)


def _transient(e: Exception) -> bool:
    """Whether a backend read error may pass, so the read is retried with backoff: an I/O error or a broker away
    (a ``WALError`` or an ``OSError``). Anything else is a bug in the backend (a decoder that raises on a stored
    message, an ID with no unmarshaler): the same read would fail again, so the scanner ends with it, loudly,
    instead of reopening for ever."""
    return isinstance(e, WALError | OSError) and not isinstance(e, _NOT_TRANSIENT)


def _nothing() -> None:
    pass


_live: weakref.WeakSet[ScannerAdaptor] = weakref.WeakSet()
"""Every scanner of this process, for :func:`_end_in_child`."""


def _release(backend: ScannerImpls | None, done: threading.Event) -> None:
    """What ``close()`` does for a scanner collected without it (run by the reaper)."""
    if backend is not None:
        backend.close()
    done.set()


def _end_in_child() -> None:
    """In a forked child: every scanner copied is ended (``recv`` raises at once, ``close`` waits for nothing).

    The child has none of the parent's threads and no WAL writing to it: nothing can ever arrive, and a ``recv(None)``
    or ``async for`` waited for ever (review 10e); another thread may also have held its locks at the fork.
    """
    for s in list(_live):
        s._turn_lock = threading.RLock()
        s._turn_cond = threading.Condition(s._turn_lock)
        s._backend_lock = threading.Lock()
        s._receiving = False
        s._backend = None  # the parent's reader (its copy's maps are freed with the child)
        s._executor = None  # its thread is the parent's
        s._pending.clear()
        s._error = ShutdownError(
            f"scanner {s._name} was opened by the parent of this forked process: read the channel from a WAL opened "
            "in this process"
        )
        s._closing = threading.Event()
        s._closing.set()
        s._done = threading.Event()
        s._done.set()
        s._cleanup = _nothing  # it took the WAL copy's scanner lock, which a parent thread may have held at the fork


os.register_at_fork(after_in_child=_end_in_child)


class ScannerAdaptor(Scanner):
    def __init__(
        self,
        *,
        name: str,
        impls: ROWALImpls,
        channel: PChannelInfo,
        opt: ReadOption,
        wab: WriteAheadBuffer | None,
        cleanup: Callable[[], None],
    ) -> None:
        self._name = name
        self._impls = impls
        self._channel = channel
        self._vchannel = opt.vchannel or ""
        # None when there are no filters: the common case then costs no call per message.
        self._filter: Callable[[ImmutableMessage], bool] | None = (
            filter_func(opt.deliver_filters) if opt.deliver_filters else None
        )
        self._cleanup = cleanup
        self._wab = wab
        self._pending: deque[ImmutableMessage] = deque()
        self._lag_countdown = 1  # deliveries until the next lag sample
        self._reorder = ReorderBuffer()
        self._txn = TxnBuffer(self._filter)
        self._last_delivered_tt = 0
        # One thread pulls from the source at a time (recv's turn): a flag under a condition, so that a waiting
        # recv(timeout) keeps its timeout (a plain lock's acquire has no timeout that survives a Ctrl-C safely).
        self._turn_lock = threading.RLock()  # entered as ``with self._turn_lock``: docs/ARCHITECTURE.md, "Interrupts"
        self._turn_cond = threading.Condition(self._turn_lock)
        self._receiving = False
        self._done = threading.Event()
        self._closing = threading.Event()
        self._error: BaseException | None = None
        # catch-up state
        self._policy: DeliverPolicy = opt.deliver_policy
        self._exclusive_start = 0
        self._backend: ScannerImpls | None = None
        self._backend_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # async for's worker (see _aiter)
        self._last_backend: ImmutableMessage | None = None
        # The scanner has read every message up to this ID (at least; a not-persisted tick carries a last-confirmed
        # ID): a stretch a backend reader passed over below it, after an eviction, lost this scanner nothing.
        self._read_to: MessageID | None = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._failing_since: float | None = None  # when backend reads started failing (None: they work)
        self._warned_at: float | None = None  # the last "failed" warning (any stretch: see _retry_later)
        self._stretch_warned = False  # whether the current stretch of failures was warned of
        _live.add(self)
        _reaper.ensure_running()
        self.read_attempts = 0
        self.stats = {"to_tailing": 0, "to_catchup": 0}
        # tailing state
        self._tail: WriteAheadBufferReader | None = None
        self._last_consumed: ImmutableMessage | None = None
        self._tail_from: int | None = None  # open a tailing reader after this tt (latest() on an RW WAL)
        if wab is not None and opt.deliver_policy.kind is DeliverPolicyKind.LATEST:
            tick = wab.last_time_tick_message
            self._last_consumed = tick
            self._tail_from = tick.time_tick
        else:
            # Fixes latest() now, so a failure raises here: retried later, latest() would start later and lose
            # what was appended in between. Any other policy is retried by recv, with backoff.
            self._open_backend(retry=opt.deliver_policy.kind is not DeliverPolicyKind.LATEST)

    # -- public -----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    @property
    def mode(self) -> str:
        """``"tailing"`` or ``"catchup"`` (for tests and tools)."""
        return "tailing" if (self._tail is not None or self._tail_from is not None) else "catchup"

    def done(self) -> threading.Event:
        return self._done

    def __repr__(self) -> str:
        err = self._error
        state = "reading" if not self._done.is_set() else "closed" if err is None else f"failed: {err!r}"
        return f"<Scanner {self._name!r} of {self._channel}: {state}>"

    def error(self) -> BaseException | None:
        return self._error

    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        # Fast path: a message already released. deque.popleft is atomic, so this needs no lock: messages only
        # leave _pending here, and whichever thread pops one delivers it, once. A close empties _pending.
        try:
            m = self._pending.popleft()
        except IndexError:
            return self._recv_wait(timeout)
        self._lag_countdown -= 1
        if self._lag_countdown <= 0:
            self._observe_lag(m)
        return m

    def _take_released(self) -> ImmutableMessage | None:
        """Pop a released message (None: none), counted for the lag metric: ``recv``'s fast path, spelled out."""
        try:  # not ``if pending: popleft()``: the lock-free fast path in recv may pop in between
            m = self._pending.popleft()
        except IndexError:
            return None
        self._lag_countdown -= 1
        if self._lag_countdown <= 0:
            self._observe_lag(m)
        return m

    def _observe_lag(self, m: ImmutableMessage) -> None:
        # Lag from the message's hybrid time tick (its append) to now, sampled on the first delivery and then one
        # in _LAG_SAMPLE: observing every message cost a fifth of a catch-up scan.
        self._lag_countdown = _LAG_SAMPLE
        if metrics.enabled:
            lag = time.time() - physical_ms(m.time_tick) / 1000
            metrics.scanner_lag_seconds.observe(max(0.0, lag))

    def _recv_wait(self, timeout: float | None) -> ImmutableMessage:
        m = self._wait(timeout, take=True)
        assert m is not None
        return m

    def _wait(self, timeout: float | None, take: bool) -> ImmutableMessage | None:
        """Pull from the current source until a message is released; pop and return it (``take``), or return None
        leaving it released (an ``async for`` pops it in the event loop's thread: a cancelled task then loses
        nothing). Only one thread pulls at a time; the others wait their turn within their own timeout."""
        deadline = None if timeout is None else time.monotonic() + seconds(timeout, "recv timeout", zero=True)
        owned = False
        try:
            with self._turn_lock:
                while self._receiving:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WALTimeoutError(f"scanner {self._name}: no message within {timeout}s")
                    # Bounded: a notify that a Ctrl-C cut short in the notifier must not leave this waiting for ever.
                    self._turn_cond.wait(WAKE_SLICE if left is None else min(left, WAKE_SLICE))
                self._receiving = owned = True  # no call between the two: a signal cannot split them
            return self._pull_until_released(deadline, timeout, take)
        finally:
            if owned:
                self._receiving = False  # first, one store: a Ctrl-C below must not leave the turn taken for good
                with self._turn_lock:
                    self._turn_cond.notify()

    def _pull_until_released(
        self, deadline: float | None, timeout: float | None, take: bool
    ) -> ImmutableMessage | None:
        pending = self._pending
        tried = False  # recv(0) still looks once at what the source already has
        while True:
            if self._closing.is_set():
                if self._error is not None:  # a failed scanner delivers what it had released, then its error
                    if pending and not take:
                        return None
                    try:
                        return pending.popleft()
                    except IndexError:
                        pass
                    raise self._error  # as stored: its cause intact
                pending.clear()  # a close drops what was released (a concurrent pull may have added some)
                raise ShutdownError(f"scanner {self._name} is closed")
            if take:
                m = self._take_released()
                if m is not None:
                    return m
            elif pending:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if tried:
                    raise WALTimeoutError(f"scanner {self._name}: no message within {timeout}s")
                left = 0.0
            tried = True
            try:
                if self._tail is not None or self._tail_from is not None:
                    self._pull_tailing(left)
                else:
                    self._pull_catchup(left)
            except TimeoutError:  # a WALTimeoutError, or a backend's builtin one
                continue  # re-checks close and the deadline
            except ShutdownError:
                if not self._closing.is_set():
                    self.close()  # the WAL (or its buffer) closed under us
            except Exception as e:  # corruption, or a bug: the scanner ends with this error
                self._fail(e)

    def _async_worker(self) -> ThreadPoolExecutor:
        with self._backend_lock:
            if self._closing.is_set():  # close() shuts the worker down: none may be made after it
                raise ShutdownError(f"scanner {self._name} is closed")
            ex = self._executor
            if ex is None:
                ex = self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"wal-scanner-{self._name}")
            return ex

    def __aiter__(self) -> AsyncIterator[ImmutableMessage]:
        return _AsyncMessages(self)

    def close(self) -> None:
        # Every step may run again, and no close waits for another: a close a Ctrl-C cut short (between these
        # steps) is finished by the next one, where waiting for it to set ``_done`` would wait for ever.
        self._closing.set()
        if self._error is None:  # closed: recv raises ShutdownError now, not after what was released (a failed
            self._pending.clear()  # scanner delivers that first, then its error: see _fail)
        with self._backend_lock:
            b, self._backend = self._backend, None
            ex, self._executor = self._executor, None
        if b is not None:
            b.close()
        if ex is not None:
            ex.shutdown(wait=False)  # its thread ends after its current wait (at most 0.2 s)
        self._done.set()
        self._cleanup()

    def __del__(self) -> None:
        # Dropped without close() (``for m in w.read(...): break``): the WAL holds its scanners weakly, so this runs;
        # the backend reader is closed in the reaper's thread (see _reaper for why not here). The async worker needs
        # nothing: its executor ends its thread once collected.
        closing = getattr(self, "_closing", None)  # None: __init__ failed before making it (nothing to close)
        if closing is None or closing.is_set():
            return
        try:
            _reaper.put(partial(_release, getattr(self, "_backend", None), self._done))
        except Exception:  # at interpreter exit, once module globals are gone: nothing left to close for
            pass

    def _fail(self, e: BaseException) -> None:
        if self._error is None and not self._closing.is_set():
            self._error = e
        self.close()

    # -- catch-up ---------------------------------------------------------------------------------------------
    def _open_backend(self, retry: bool = True) -> None:
        self.read_attempts += 1
        try:
            opt = ImplsReadOption(name=self._name, deliver_policy=self._policy, vchannel=self._vchannel or None)
            b = self._impls.read(opt)
        except Exception as e:
            if not retry or isinstance(e, ShutdownError) or not _transient(e):
                raise  # retrying cannot help: the scanner ends with it (see _recv_wait)
            self._retry_later(e)  # an I/O error, a broker away
            return
        with self._backend_lock:
            if self._closing.is_set():
                b.close()
                return
            self._backend = b

    def _retry_later(self, error: Exception) -> None:
        """Open the backend again after a backoff that doubles (20 ms to 2 s) while reads fail and no message comes
        (a reader that opens and then fails at once would otherwise reopen thousands of times a second), and warn:
        at the first failure, then every :data:`RETRY_WARNING_EVERY` seconds while they go on. That period bounds
        every stretch of failures together, not each one: a backend that fails and works by turns starts a stretch
        each time (a batch resets the backoff, so up to 50 a second), and a warning per stretch would flood the log.
        """
        now = time.monotonic()
        since = self._failing_since
        if since is None:
            since = self._failing_since = now
            self._stretch_warned = False
        if self._warned_at is None or now - self._warned_at >= RETRY_WARNING_EVERY:
            lasted = f" (failing for {now - since:.0f} s)" if self._stretch_warned else ""
            log.warning("scanner %r on %s: reading the backend failed%s: %s: %s; retrying every 2 s at most until it "
                        "works (or the scanner is closed)", self._name, self._channel.name, lasted,
                        type(error).__name__, error)
            self._warned_at = now
            self._stretch_warned = True
        self._backoff = min(max(self._backoff * 2, 0.02), 2.0)
        self._next_attempt = time.monotonic() + self._backoff

    def _reads_work(self) -> None:
        """A backend read that did not fail ends a stretch of failures (said when the stretch was). Not only a batch
        does: at the end of a quiet channel no batch may come for hours, and the stretch went on meanwhile, so the
        next failure was said to have lasted all that time, and its end was never said."""
        since = self._failing_since
        if since is not None:
            self._failing_since = None
            if not self._stretch_warned:
                return
            log.warning("scanner %r on %s: reading the backend works again, after %.0f s", self._name,
                        self._channel.name, time.monotonic() - since)

    def _drop_backend(self) -> None:
        with self._backend_lock:
            b, self._backend = self._backend, None
        if b is not None:
            b.close()

    def _restart_catchup(self, policy: DeliverPolicy, exclusive_start: int) -> None:
        self._drop_backend()
        self._policy = policy
        self._exclusive_start = exclusive_start
        self._open_backend()

    def _pull_catchup(self, left: float | None) -> None:
        b = self._backend
        if b is None:
            wait = max(0.0, self._next_attempt - time.monotonic())
            if left is not None and wait > left:
                self._closing.wait(left)
                raise WALTimeoutError("backend read not open yet")
            if not self._closing.wait(wait):
                self._open_backend()
            return
        try:
            batch = b.recv_batch(BATCH, left)  # close() closes the backend reader, which wakes this
        except TimeoutError:
            self._reads_work()  # read to the end, nothing new: a quiet channel's reads work too
            raise
        except (ShutdownError, CorruptedError):
            raise
        except Exception as e:
            if not _transient(e):
                raise  # the scanner ends with it (see _recv_wait)
            # A transient backend failure: reopen just after what we already have, after a backoff.
            last = self._last_backend
            if last is None and self._policy.kind is DeliverPolicyKind.LATEST:
                # Where latest() started is the backend reader's secret: reopened, it would start later and skip
                # what was appended in between. A loud end, not a silent loss.
                raise WALIOError(
                    f"scanner {self._name}: the backend failed ({type(e).__name__}: {e}) before delivering its first "
                    "message, and a latest() read cannot be resumed: read again"
                ) from e
            self._drop_backend()
            if last is not None:
                self._policy = DeliverPolicy.start_after(last.message_id)
            self._retry_later(e)
            return
        if batch:
            self._backoff = 0.0  # progress: the next failure starts its backoff afresh
            self._reads_work()
            gap = b.skipped_to()
            if gap is not None and (self._read_to is None or gap > self._read_to):
                self._txn.note_gap(gap)  # deleted before this reader had them: no txn across them comes in part
            self._last_backend = self._consume(batch, self._exclusive_start, self._wab is not None)
            self._note_read(self._last_backend)

    def _note_read(self, m: ImmutableMessage) -> None:
        mid = m.message_id
        if self._read_to is None or mid > self._read_to:
            self._read_to = mid

    def _try_switch(self, tick: ImmutableMessage) -> bool:
        assert self._wab is not None
        try:
            reader = self._wab.read_from_exclusive_time_tick(tick.time_tick, timeout=0)
        except (EvictedError, WALTimeoutError):
            return False  # the buffer no longer (or not yet) holds it: keep catching up
        with self._backend_lock:
            b, self._backend = self._backend, None
        if b is not None:
            b.close()
        self._tail = reader
        self._last_consumed = tick
        self.stats["to_tailing"] += 1
        return True

    # -- tailing ----------------------------------------------------------------------------------------------
    def _pull_tailing(self, left: float | None) -> None:
        assert self._wab is not None
        step = WAKE_SLICE if left is None else min(left, WAKE_SLICE)
        try:
            if self._tail is None:
                assert self._tail_from is not None
                self._tail = self._wab.read_from_exclusive_time_tick(self._tail_from, timeout=step)
                self._tail_from = None
            batch = self._tail.next_batch(BATCH, step)
        except EvictedError:
            last = self._last_consumed
            assert last is not None
            self._tail = None
            self._tail_from = None
            self.stats["to_catchup"] += 1
            self._restart_catchup(DeliverPolicy.start_from(last.last_confirmed_message_id), last.time_tick)
            return
        if batch:
            self._last_consumed = self._consume(batch, -1, False)
            self._note_read(self._last_consumed)

    # -- shared: reorder, txn assembly, delivery ------------------------------------------------------------------
    def _consume(self, batch: list[ImmutableMessage], start: int, may_switch: bool) -> ImmutableMessage:
        """Run one batch from the current source through the buffers; returns the last message consumed.

        Skips messages with ``tt <= start``. Data messages that pass the filters are gathered into runs and pushed
        to the reorder buffer a run at a time (one call per run, not per message); a time tick first pushes the
        run before it, then releases. With ``may_switch`` (catch-up on a writable WAL) a persisted tick may switch
        the scanner to tailing: the rest of the batch comes again from the write-ahead buffer, where duplicates are
        dropped.
        """
        v = self._vchannel
        filt = self._filter
        run: list[ImmutableMessage] = []
        for m in batch:
            tt = m.time_tick
            if tt <= start:
                continue
            if m.message_type is _TT:
                if run:
                    self._reorder.push_many(run)
                    run = []
                self._on_tick(m, tt)
                if may_switch and not m.not_persisted and self._try_switch(m):
                    return m
                continue
            if v and m.vchannel and m.vchannel != v:
                continue
            if filt is not None and not filt(m) and (m.txn_ctx is None or m.message_type.is_system):
                continue  # a txn's body goes on to the txn buffer, which filters it (see TxnBuffer)
            run.append(m)
        if run:
            self._reorder.push_many(run)
        return batch[-1]

    def _on_tick(self, m: ImmutableMessage, tt: int) -> None:
        out = self._reorder.pop_until(tt)
        if out:
            out = self._txn.handle_immutable_messages(out, tt)
        elif len(self._txn):
            self._txn.handle_immutable_messages(out, tt)  # expire txns
        if out:
            self._pending.extend(out)
            self._last_delivered_tt = out[-1].time_tick
        elif not self._pending and tt > self._last_delivered_tt and (self._filter is None or self._filter(m)):
            self._pending.append(m)
            self._last_delivered_tt = tt


class _AsyncMessages:
    """``async for m in scanner``. Released messages are popped in the event loop's thread, with no thread hop;
    only the wait for more runs in a worker thread, and it takes none: a step cancelled while it waits (a task
    cancelled, ``asyncio.wait_for`` around ``__anext__``) loses no message, and the iterator goes on (the worker
    used to pop a message that nobody then received). The wait is short (0.2 s), so a cancelled step strands no
    thread for long.

    The worker is the scanner's own (one thread, made on first use, ended by ``close``), not the loop's default
    executor: a few scanners waiting there would starve every ``asyncio.to_thread`` of the program.
    """

    __slots__ = ("_s", "_streak")

    def __init__(self, scanner: ScannerAdaptor) -> None:
        self._s = scanner
        self._streak = 0

    def __aiter__(self) -> _AsyncMessages:
        return self

    async def __anext__(self) -> ImmutableMessage:
        s = self._s
        pending = s._pending
        while True:
            if s._closing.is_set():
                if s._error is None:
                    raise StopAsyncIteration
                try:  # a failed scanner: what it released, then its error
                    return pending.popleft()
                except IndexError:
                    pass
                raise s._error  # as stored: its cause intact
            if pending and self._streak >= _ASYNC_YIELD_EVERY:
                # A long released run must not keep the loop from its other tasks (measured: 21 ms of loop lag over
                # a 50,000-message catch-up). Before the pop: a step cancelled here has taken nothing.
                self._streak = 0
                await asyncio.sleep(0)
                continue
            m = s._take_released()
            if m is not None:
                self._streak += 1
                return m
            self._streak = 0
            try:
                waited = asyncio.get_running_loop().run_in_executor(s._async_worker(), s._wait, 0.2, False)
            except ShutdownError:
                continue
            except RuntimeError as e:  # the worker thread could not start, or close() shut the worker down
                if s._closing.is_set():
                    continue
                raise WALError(
                    f"scanner {s._name}: cannot start the thread that waits for messages for async for ({e}): this "
                    "process has reached its thread limit; close scanners or WALs, or raise the limit (ulimit -u, "
                    "the cgroup's pids.max); the scanner stays open and a later step tries again"
                ) from e
            try:
                await waited
            except TimeoutError:
                continue
            except ShutdownError:
                continue  # closed: the check above ends the iteration, or raises the error that ended it
