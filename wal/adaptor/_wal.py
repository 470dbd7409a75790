"""The WAL adaptor: lifetime, the append path (dispatcher → interceptor chain → backend group commit), scanners.

An RO WAL is :class:`ROWALAdaptor` (writes raise :class:`~wal.errors.AccessModeError`); an RW WAL is
:class:`WALAdaptor`, which on open appends the first persisted time tick (the fence and recovery point) before
taking appends.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from functools import partial

from .. import _fork
from .._checks import seconds
from .._interfaces import WAL, Scanner, Txn
from .._metrics import metrics
from .._types import AccessMode, AppendResult, PChannelInfo, ReadOption
from ..errors import (
    AccessModeError,
    FencedError,
    InvalidArgumentError,
    InvalidMessageError,
    InvalidMessageIDError,
    ShutdownError,
    WALError,
    WALIOError,
    WALLockedError,
    WALTimeoutError,
)
from ..interceptors import AppendOutcome, ChainedInterceptor, Interceptor, InterceptorBuilder, InterceptorBuildParam
from ..interceptors._chain import all_ok
from ..interceptors.redo import RedoInterceptor
from ..interceptors.timetick import AckManager, HybridClock, MVCCManager
from ..interceptors.timetick._interceptor import TimeTickInterceptor
from ..interceptors.timetick._message import new_time_tick_message
from ..interceptors.timetick._sync_operator import SyncMode, TimeTickSyncOperator
from ..interceptors.txn import TxnManager
from ..message import MessageID, MessageType, MutableMessage, TxnContext, validate_properties
from ..message._hybrid import check_barrier
from ..message._message import _own_payload, check_text
from ..utility import WriteAheadBuffer
from ..walimpls import ROWALImpls, WALImpls
from . import _reaper
from ._dispatcher import AppendDispatcher
from ._future import AllSucceeded, Appended
from ._lifetime import Lifetime
from ._options import AdaptorOptions
from ._scanner import ScannerAdaptor
from ._slow import CloseWatch
from ._truncate import truncation_point
from ._txn import TxnHandle

# ScannerAdaptor and TxnHandle are imported here, not at a WAL's first read() or begin_txn(): an import opens the
# module's file, and a process at its descriptor limit got a bare OSError naming _scanner.py from a read that needs
# no descriptor (tests/test_adaptor_resource_limits.py).

__all__ = ["ROWALAdaptor", "WALAdaptor"]

log = logging.getLogger(__name__)

_new_result = object.__new__
_WAL_ONLY_TYPES = frozenset({MessageType.TIME_TICK, MessageType.TXN, MessageType.UNKNOWN})
# Types the append paths' fast test always hands to _check_msg: those it refuses, and a BEGIN_TXN, whose vchannel it
# checks before anything of the group is stored.
_CHECKED_TYPES = _WAL_ONLY_TYPES | {MessageType.BEGIN_TXN}
_FIRST_TICK_RETRY_FOR = 5.0
# A backend refuses one message for what it is (too large, a foreign ID), before writing anything of its batch.
_REFUSED_MESSAGE = (InvalidArgumentError, InvalidMessageError, InvalidMessageIDError)
_NOT_RETRIED = (FencedError, ShutdownError, AccessModeError, InvalidArgumentError, WALLockedError)


def _retry_first_tick(fn: Callable[[], MessageID]) -> MessageID:
    """The fence tick is retried with backoff (a transient backend error must not fail the open)."""
    deadline = time.monotonic() + _FIRST_TICK_RETRY_FOR
    backoff = 0.02
    while True:
        try:
            return fn()
        except _NOT_RETRIED:
            raise
        except Exception:
            if time.monotonic() + backoff > deadline:
                raise
            time.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


def _copy_error(e: WALError) -> WALError:
    """A fresh instance of ``e`` with its cause: raising one instance again and again would pile up its traceback."""
    out = type(e)(*e.args)
    out.__cause__ = e.__cause__
    return out


def _message_list(msgs: object) -> list[MutableMessage]:
    """``append_messages``'s argument as a list: any iterable of messages is taken (a generator too, once)."""
    if isinstance(msgs, MutableMessage | str | bytes) or not isinstance(msgs, Iterable):
        raise InvalidMessageError(f"append_messages takes a list of MutableMessage, got {type(msgs).__name__}")
    return list(msgs)


class ROWALAdaptor(WAL):
    """A read-only WAL: scanners follow the backend only (catch-up), every write raises."""

    def __init__(
        self,
        impls: ROWALImpls,
        opts: AdaptorOptions,
        cleanup: Callable[[ROWALAdaptor], None] | None = None,
        reap: bool = False,
    ) -> None:
        self._impls = impls
        # reap: closed in the reaper's thread once collected unclosed, for an opener that holds it weakly (see
        # OpenerAdaptor.open). A read-only WAL only: a writer's close ends its txns and releases its channel's lock,
        # which no collection may do behind its owner's back (and its append thread keeps it alive anyway).
        self._reap: weakref.finalize[..., ROWALAdaptor] | None = None
        if reap:
            _reaper.ensure_running()
            self._reap = weakref.finalize(self, _reaper.put, impls.close)
            self._reap.atexit = False
        self._opts = opts
        self._channel = impls.channel
        self._lifetime = Lifetime(f"wal {self._channel}")
        self._unavailable = threading.Event()
        self._cleanup = cleanup
        # Weak: a scanner dropped without close() is collected and its reader closed (see _reaper); close() ends
        # the rest.
        self._scanners: weakref.WeakValueDictionary[int, ScannerAdaptor] = weakref.WeakValueDictionary()
        self._scanners_lock = threading.Lock()
        self._scanner_seq = itertools.count()
        self._closed = threading.Event()
        self._close_cut_short = False
        self._close_retry = threading.Lock()
        self._forks = _fork.generation  # a forked child's copy differs (see _close_copy)
        self._watch = CloseWatch("")  # the running close's (see _close_watched); this one is never started

    # -- ROWAL ------------------------------------------------------------------------------------------------
    @property
    def wal_name(self) -> str:
        return self._impls.wal_name

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    def is_available(self) -> bool:
        return not self._unavailable.is_set()

    def __repr__(self) -> str:
        # What a REPL shows: which WAL, and whether it can still be used (the default repr said neither).
        state = "closed" if self._lifetime.stopped else "available" if self.is_available() else "unavailable"
        if self._channel.access_mode is AccessMode.RW:
            return f"<WAL {self.wal_name} {self._channel}: {state}>"
        return f"<ROWAL {self.wal_name} {self._channel.name}: {state}>"  # no term: a read-only open's is not the log's

    def available(self) -> threading.Event:
        return self._unavailable

    def read(self, opt: ReadOption | None = None) -> Scanner:
        opt = opt if opt is not None else ReadOption()
        if not isinstance(opt, ReadOption):
            raise InvalidMessageError(f"read takes a ReadOption, got {type(opt).__name__}")
        mid = opt.deliver_policy.message_id
        if mid is not None and mid.wal_name != self.wal_name:
            raise InvalidMessageIDError(f"read from a {mid.wal_name} message ID on a {self.wal_name} wal: {mid!r}")
        with self._lifetime.call():
            seq = next(self._scanner_seq)
            name = opt.name or f"{self._channel.name}/{self._channel.term}/{seq}"
            s = ScannerAdaptor(
                name=name,
                impls=self._impls,
                channel=self._channel,
                opt=opt,
                wab=self._tailing_source(),
                cleanup=lambda: self._forget_scanner(seq),
            )
            with self._scanners_lock:
                self._scanners[seq] = s
            return s

    def _tailing_source(self) -> WriteAheadBuffer | None:
        """The write-ahead buffer scanners may tail from (None: catch-up only)."""
        return None

    def _forget_scanner(self, seq: int) -> None:
        with self._scanners_lock:
            self._scanners.pop(seq, None)

    # -- writes: refused --------------------------------------------------------------------------------------
    def _refuse(self, what: str) -> AccessModeError:
        return AccessModeError(f"{what} on read-only wal {self._channel}")

    def append(self, msg: MutableMessage, timeout: float | None = None) -> AppendResult:
        raise self._refuse("append")

    def append_async(self, msg: MutableMessage) -> Future[AppendResult]:
        raise self._refuse("append_async")

    def append_messages(self, msgs: Sequence[MutableMessage], timeout: float | None = None) -> list[AppendResult]:
        raise self._refuse("append_messages")

    def get_latest_mvcc_timestamp(self, vchannel: str) -> int:
        raise self._refuse("get_latest_mvcc_timestamp")

    def truncate(self, message_id: MessageID) -> None:
        raise self._refuse("truncate")

    def begin_txn(self, vchannel: str, keepalive: float | None = None, timeout: float | None = None) -> Txn:
        raise self._refuse("begin_txn")

    # -- close ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._forks != _fork.generation:
            self._close_copy()
            return
        if not self._lifetime.stop():
            if self._may_wait_for_close():
                self._closed.wait()
            if self._close_cut_short:  # the first close did not finish (a Ctrl-C): finish it; every step may rerun
                with self._close_retry:
                    if self._close_cut_short:
                        self._close_watched()
                        self._close_cut_short = False
            return
        try:
            self._close_watched()
        except BaseException:
            self._close_cut_short = True  # else the backend stays open, its channel locked, until the process ends
            raise
        finally:
            self._closed.set()

    def _close_watched(self) -> None:
        """``_close_inner``, logged while it waits on a backend that does not return (see ``_slow.py``): on a
        stalled disk a close waits as long as the disk does, and it said nothing."""
        with CloseWatch(f"wal {self._channel}") as self._watch:
            self._close_inner()

    def _may_wait_for_close(self) -> bool:
        """Whether a second close may wait for the first to finish (not when the first waits for this caller)."""
        return True

    def _close_copy(self) -> None:
        """Close a copy a fork made: only the backend's copy (which leaves the parent's files and lock alone).

        Nothing here waits: the calls in flight, a close under way and the threads are the parent's, and its
        threads' locks may have been held at the fork (review 10e: a child's close hung for ever when a parent
        thread was closing the WAL at the fork, in ``_closed.wait()``).
        """
        self._lifetime.stop()
        self._unavailable.set()
        if self._forks == -1:
            return  # closed already
        self._forks = -1
        if self._reap is not None:
            self._reap.detach()
        self._impls.close()
        if self._cleanup is not None:
            self._cleanup(self)

    def _close_inner(self) -> None:
        self._unavailable.set()
        self._watch.step = "calls in flight (a read's open, a truncate)"
        self._lifetime.wait()
        self._watch.step = "its scanners to close"
        self._close_scanners()
        if self._reap is not None:
            self._reap.detach()  # closed here: the reaper has nothing to do for it
        self._watch.step = "the backend to close"
        self._impls.close()
        if self._cleanup is not None:
            self._cleanup(self)

    def _close_scanners(self) -> None:
        with self._scanners_lock:
            scanners = list(self._scanners.values())
        for s in scanners:
            s.close()


class WALAdaptor(ROWALAdaptor):
    """A read-write WAL."""

    def __init__(
        self,
        impls: WALImpls,
        opts: AdaptorOptions,
        builders: Sequence[InterceptorBuilder],
        cleanup: Callable[[ROWALAdaptor], None] | None = None,
    ) -> None:
        assert impls.channel.access_mode is AccessMode.RW
        super().__init__(impls, opts, cleanup)
        self._wimpls = impls
        self._term = impls.channel.term
        # Set once this WAL writes no more: fenced by a newer term (readers go on), or an interrupt cut its append
        # bookkeeping short (its cause is that interrupt: readers end too; see _on_interrupt).
        self._write_error: WALError | None = None
        param = InterceptorBuildParam(channel=self._channel, options=opts)
        self._init_time_tick(param)
        interceptors: list[Interceptor] = []
        try:
            for b in builders:
                interceptors.append(b.build(param))
            self._init_chain(opts, interceptors)
        except BaseException:
            # The open raises, so no WAL (and no close) ever reaches the interceptors built so far: each failed
            # open (a builder that raised after others) leaked whatever they held, a thread or a connection.
            chain: ChainedInterceptor | None = getattr(self, "_chain", None)
            for close in [chain.close] if chain is not None else [ic.close for ic in interceptors]:
                try:
                    close()  # the chain's also ends its readiness thread
                except Exception:
                    log.warning("closing the interceptors of a failed open failed", exc_info=True)
            raise
        param.wal.set_result(self)

    def _init_chain(self, opts: AdaptorOptions, interceptors: list[Interceptor]) -> None:
        """The chain and the dispatcher: apart from ``__init__`` so that a failure here closes the interceptors."""
        tt_ic = next((ic for ic in interceptors if isinstance(ic, TimeTickInterceptor)), None)
        self._sync_op = TimeTickSyncOperator(
            self._ack,
            self._txns,
            self._mvcc,
            self._wab,
            self._append_tick,
            tt_ic.take_written if tt_ic is not None else None,
        )
        self._chain = ChainedInterceptor(interceptors)
        self._ready = self._chain.ready()
        self._append_chain = self._bind_chain(interceptors, tt_ic)
        self._n_appends = 0  # appends and bytes not yet added to the metrics (added by the periodic tick)
        self._n_bytes = 0
        self._units: Sequence[int] = ()  # the batch's callers' units while it runs (see _append_units)
        self._dispatcher = AppendDispatcher(
            f"{self._channel}",
            self._process_batch,
            max_inflight=opts.max_inflight_appends,
            max_batch=opts.max_append_batch,
            ready=self._chain.ready(),
            periodic=self._periodic,
            period=opts.time_tick_interval,
            check=self._check_msg,
            checked_types=_CHECKED_TYPES,
            process_futures=self._process_futures,
            on_interrupt=self._on_interrupt,
        )
        # append_async is the dispatcher's submit_one itself (the same checks and errors as the method below,
        # which stays for the class's readers): one Python call less per pipelined append.
        self.append_async = self._dispatcher.submit_one  # type: ignore[method-assign]

    # -- time-tick machinery ------------------------------------------------------------------------------------
    def _init_time_tick(self, param: InterceptorBuildParam) -> None:
        """Append the first persisted tick (fence and recovery point) and build what the interceptors share."""
        clock = HybridClock(self._wimpls.last_time_tick())
        tick = new_time_tick_message(clock.allocate(), None, True)
        tick.wal_term = self._term
        mid = _retry_first_tick(lambda: self._wimpls.append(tick))
        first = tick.into_immutable(mid)
        opts = self._opts
        self._wab = WriteAheadBuffer(
            str(self._channel),
            opts.write_ahead_buffer_bytes,
            opts.write_ahead_buffer_keepalive,
            first,
            on_demand=True,
            on_wanted=self._tick_for_reader,
        )
        self._mvcc = MVCCManager(first.time_tick)
        self._ack = AckManager(clock, mid)
        self._txns = TxnManager(clock, opts.txn_keepalive)
        param.initialized_time_tick = first.time_tick
        param.initialized_message_id = mid
        param.write_ahead_buffer = self._wab
        param.mvcc_manager = self._mvcc
        param.ack_manager = self._ack
        param.txn_manager = self._txns
        param.clock = clock

    def _bind_chain(
        self, interceptors: Sequence[object], tt_ic: TimeTickInterceptor | None
    ) -> Callable[[Sequence[MutableMessage]], list[AppendOutcome]]:
        """The chain as one function. With only the built-ins (redo outermost, then timetick) redo has nothing to
        do (only an interceptor inside timetick could ask for a redo, and there is none), so the chain is timetick
        calling the backend: two fewer layers, and no timing wrapper, per batch (``ChainedInterceptor.timings``
        stays empty for this pair; it measures user interceptors, which take the general path).
        """
        only_builtins = len(interceptors) == 2 and type(interceptors[0]) is RedoInterceptor
        if tt_ic is not None and only_builtins and interceptors[1] is tt_ic:
            return partial(tt_ic.do_append_batch, next=self._final_batch)
        return self._chain.bind_batch(self._final_batch)

    def _append_tick(self, tick: MutableMessage) -> MessageID:
        tick.wal_term = self._term
        out = self._append_chain((tick,))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _tick_for_reader(self) -> None:
        """A scanner found the write-ahead buffer's gap (nobody read it, so it kept nothing): a persisted tick now
        gives the scanner's catch-up a point to switch to the buffer at (see ``WriteAheadBuffer(on_demand=)``)."""
        d = getattr(self, "_dispatcher", None)  # None while the WAL is still being built
        if d is not None:
            d.trigger(True)

    def _periodic(self, persisted: bool) -> None:
        if self._write_error is not None and self._stopped_by_interrupt():
            self._finish_stop(self._write_error)  # repairs a stop a second Ctrl-C cut short (see _on_interrupt)
        self._flush_metrics()
        self._sync_op.sync(SyncMode.FORCE if persisted else SyncMode.PERIODIC)

    def _flush_metrics(self) -> None:
        """Counted per append, published per tick: a Prometheus ``inc`` takes a lock, too dear for every append.
        Runs like a batch (in the dispatcher thread, or after it is closed), so the counts need no lock.
        """
        if self._n_appends:
            metrics.appends.inc(self._n_appends)
            metrics.append_bytes.inc(self._n_bytes)
            self._n_appends = self._n_bytes = 0

    def _after_batch(self) -> None:
        try:
            self._sync_op.sync_batch()
        except ShutdownError:
            pass  # the buffer closed under a late batch; nothing reads it any more

    def _tailing_source(self) -> WriteAheadBuffer | None:
        if self._stopped_by_interrupt():
            raise self._refusal()
        return self._wab

    @property
    def sync_operator(self) -> TimeTickSyncOperator:
        return self._sync_op

    @property
    def txn_manager(self) -> TxnManager:
        return self._txns

    # -- append path ------------------------------------------------------------------------------------------
    def _final_batch(self, msgs: Sequence[MutableMessage]) -> list[AppendOutcome]:
        """The end of the chain: persisted messages go to the backend as one group commit; a not-persisted tick
        takes its last-confirmed ID as its ID and is never written.
        """
        if self._write_error is not None:
            return [self._refusal()] * len(msgs)
        persisted = msgs if len(msgs) == 1 and not msgs[0].not_persisted else [m for m in msgs if not m.not_persisted]
        try:
            got = self._wimpls.append_batch(persisted) if persisted else []
        except FencedError as e:
            # A newer term owns the channel: writing is over for this WAL (readers keep working).
            self._write_error = e
            self._unavailable.set()
            return [e] * len(msgs)
        except _REFUSED_MESSAGE as e:
            if len(persisted) == 1:
                return [e] * len(msgs)
            # One caller's bad message (too large, a foreign ID...) must not fail the others grouped with it: the
            # backends check every message before writing any, so nothing was written; append caller by caller.
            return self._map_outcomes(msgs, self._append_units(msgs))
        except Exception as e:
            self._check_backend()
            return [e] * len(msgs)
        try:
            n = len(got)
        except TypeError:  # not a list: a backend bug, caught below
            n = -1
        if n == len(msgs):
            return list(got)
        if n != len(persisted):
            return [self._bad_ids(got, len(persisted))] * len(msgs)
        return self._map_outcomes(msgs, list(got))

    def _bad_ids(self, got: object, n: int) -> WALError:
        """A backend's ``append_batch`` returned something else than one ID per message: a bug in the backend.
        Each caller gets an error that says so (the messages may be stored), not a ``StopIteration`` from deep
        inside the adaptor."""
        what = f"{len(got)} ID(s)" if isinstance(got, Sequence) else f"a {type(got).__name__}"
        return WALError(
            f"the {self.wal_name} backend's append_batch returned {what} for {n} messages (a bug in the backend): "
            "they may or may not be stored"
        )

    def _refusal(self) -> WALError:
        """The error of a refused append or read: a fresh copy of ``_write_error``. A WAL an interrupt stopped
        finishes stopping here (see _on_interrupt)."""
        e = self._write_error
        assert e is not None
        if self._stopped_by_interrupt():
            self._finish_stop(e)
        return _copy_error(e)

    def _stopped_by_interrupt(self) -> bool:
        c = None if self._write_error is None else self._write_error.__cause__
        return c is not None and not isinstance(c, Exception)

    def _on_interrupt(self, ex: BaseException) -> None:
        """Ctrl-C or SystemExit escaped the interceptor chain or the periodic tick (the dispatcher calls this, in
        the thread that ran them), or the append thread itself failed (``AppendDispatcher._died``). Their
        bookkeeping may be cut short anywhere: a time tick allocated and never acknowledged holds back every later
        one (appends went on being acknowledged while tailing readers never received them), and the write-ahead
        buffer may hold a batch half handed over. So this WAL is done: appends and new reads fail with this error,
        and open scanners end with it after delivering what they had released. What was acknowledged is in the
        backend; reopening the WAL (recovery) is the way back.

        One store decides it (``_write_error``, whose cause is ``ex``); the rest (:meth:`_finish_stop`) is redone by
        every refused append or read and by the periodic work, so a second Ctrl-C cutting it short is repaired
        within a tick period.
        """
        err = self._write_error
        if err is None or not self._stopped_by_interrupt():
            err = WALError(f"a {type(ex).__name__} cut this WAL's append bookkeeping short: reopen it")
            err.__cause__ = ex
            self._write_error = err
        self._finish_stop(err)

    def _finish_stop(self, err: WALError) -> None:
        """Make an interrupt's stop visible (idempotent): unavailable, scanners ended with ``err``, buffer closed."""
        if not self._unavailable.is_set():
            self._unavailable.set()
        with self._scanners_lock:
            scanners = list(self._scanners.values())
        for sc in scanners:
            sc._fail(_copy_error(err))
        self._wab.close()  # after the scanners failed: one closed under a reader first would end without the error

    def is_available(self) -> bool:
        # A forked child's copy refuses every write and read (the parent's append thread and lock are not its own),
        # so it is not available there, though nothing in the child set the event.
        return self._write_error is None and not self._unavailable.is_set() and self._forks == _fork.generation

    def available(self) -> threading.Event:
        if self._forks != _fork.generation:
            # Not the copied event: setting it could wait for a lock a parent thread held at the fork.
            gone = threading.Event()
            gone.set()
            return gone
        return self._unavailable

    def _append_units(self, msgs: Sequence[MutableMessage]) -> list[AppendOutcome]:
        """The persisted messages of a refused batch, appended again a caller's unit at a time (see
        :data:`~._dispatcher.BatchProcessor`): a group with a bad message fails whole, nothing of it written."""
        units = self._units
        if sum(units) != len(msgs):  # no units, or the chain changed the batch: every message alone
            units = [1] * len(msgs)
        out: list[AppendOutcome] = []
        i = 0
        for n in units:
            part = [m for m in msgs[i : i + n] if not m.not_persisted]
            i += n
            if part:
                out += self._append_unit(part)
        return out

    def _append_unit(self, part: Sequence[MutableMessage]) -> list[AppendOutcome]:
        if self._write_error is not None:
            return [self._refusal()] * len(part)
        try:
            return list(self._wimpls.append_batch(part))
        except FencedError as e:
            self._write_error = e
            self._unavailable.set()
            return [e] * len(part)
        except Exception as e:
            self._check_backend()
            return [e] * len(part)

    def _check_backend(self) -> None:
        """After an append the backend failed: if it stopped writing for good (``WALImpls.failure``), so does this
        WAL (unavailable, scanners ended and later appends refused with that error; a reopen recovers). Before,
        it said it was available while every append failed and its readers waited for ever."""
        f = self._wimpls.failure()
        if f is None or self._write_error is not None:
            return
        err = f if isinstance(f, WALError) else WALIOError(f"{type(f).__name__}: {f}")
        self._write_error = err
        self._finish_stop(err)

    @staticmethod
    def _map_outcomes(msgs: Sequence[MutableMessage], persisted: list[AppendOutcome]) -> list[AppendOutcome]:
        """Outcomes of the persisted messages, in order, spread back over ``msgs`` (a not-persisted tick takes its
        last-confirmed ID as its ID)."""
        outs = iter(persisted)
        out: list[AppendOutcome] = []
        for m in msgs:
            if m.not_persisted:
                lc = m.last_confirmed_message_id
                out.append(lc if lc is not None else ValueError("not-persisted tick without last-confirmed id"))
            else:
                out.append(next(outs))
        return out

    def _process_batch(
        self, msgs: Sequence[MutableMessage], units: Sequence[int] = ()
    ) -> list[AppendResult | BaseException]:
        term = self._term
        if len(msgs) == 1:  # a synchronous append: no loops, comprehensions or extra calls
            m = msgs[0]
            m.wal_term = term
            outcomes = self._append_chain(msgs)
            try:
                self._sync_op.sync_batch()  # _after_batch, inlined
            except ShutdownError:
                pass
            o = outcomes[0]
            if isinstance(o, BaseException):
                return outcomes  # type: ignore[return-value]  # one exception
            self._n_appends += 1
            self._n_bytes += len(m.payload)
            lc = m.last_confirmed_message_id
            return [AppendResult(o, m.time_tick, o if lc is None else lc, m.txn_ctx, None)]
        self._units = units  # for _final_batch, should the backend refuse the batch (one batch at a time)
        try:
            msgs, outcomes = self._run_chain(msgs)
        finally:
            self._units = ()
        if all_ok(outcomes):  # the usual case
            self._count(msgs)
            # last_confirmed_message_id None: the message's own ID. Built in place (what AppendResult's __init__
            # does, without a call per message: measured 0.18 against 0.26 us per result).
            results: list[AppendResult | BaseException] = AllSucceeded()
            add = results.append
            for m, o in zip(msgs, outcomes, strict=True):
                r: AppendResult = _new_result(AppendResult)
                r.message_id = o  # type: ignore[assignment]  # all_ok: a MessageID
                r.time_tick = m.time_tick
                r.last_confirmed_message_id = o if (lc := m.last_confirmed_message_id) is None else lc  # type: ignore[assignment]
                r.txn_ctx = m.txn_ctx
                r.extra = None
                add(r)
            return results
        return self._outcomes(msgs, outcomes)

    def _outcomes(
        self, msgs: Sequence[MutableMessage], outcomes: list[AppendOutcome]
    ) -> list[AppendResult | BaseException]:
        """One result or exception per message, for a batch where some failed."""
        out: list[AppendResult | BaseException] = []
        add = out.append
        for m, o in zip(msgs, outcomes, strict=True):
            if isinstance(o, BaseException):
                add(o)
            else:
                lc = m.last_confirmed_message_id
                add(AppendResult(o, m.time_tick, o if lc is None else lc, m.txn_ctx, None))
                self._n_appends += 1
                self._n_bytes += len(m.payload)
        return out

    def _run_chain(self, msgs: Sequence[MutableMessage]) -> tuple[Sequence[MutableMessage], list[AppendOutcome]]:
        """Stamp the term, append through the chain, feed the write-ahead buffer: the messages as written (copies
        where one object came twice) and their outcomes."""
        term = self._term
        for m in msgs:
            m.wal_term = term
        try:
            shared = len(set(msgs)) != len(msgs)  # by identity, unless a subclass defines __eq__ (then by ids)
        except TypeError:  # a subclass with __eq__ and no __hash__
            shared = len(set(map(id, msgs))) != len(msgs)
        if shared:
            msgs = self._unshare(msgs)
        outcomes = self._append_chain(msgs)
        self._after_batch()
        return msgs, outcomes

    def _process_futures(self, msgs: Sequence[MutableMessage]) -> list[AppendResult | BaseException] | Appended:
        """:meth:`_process_batch` for a batch of ``append_async`` futures: when every message succeeded, their
        IDs and the messages as written (:class:`Appended`), from which each future builds its result when read.
        """
        if len(msgs) == 1:
            return self._process_batch(msgs)
        written, outcomes = self._run_chain(msgs)
        if not all_ok(outcomes):
            return self._outcomes(written, outcomes)
        self._count(written)
        return Appended(outcomes, written)

    def _count(self, written: Sequence[MutableMessage]) -> None:
        """Count a batch that all succeeded into the append metrics (published per tick, see _flush_metrics)."""
        self._n_appends += len(written)
        # A comprehension, not map(len, map(attrgetter("payload"), ...)): a slot read in bytecode costs half of one
        # through attrgetter (timeit: 26 against 55 ns per message).
        self._n_bytes += sum([len(m.payload) for m in written])

    @staticmethod
    def _unshare(msgs: Sequence[MutableMessage]) -> list[MutableMessage]:
        """The same object appended twice in one batch: stamping is in place, so without a copy both would carry
        the later tick and the write-ahead buffer would see time go backwards. Later occurrences are copies.
        """
        seen: set[int] = set()
        out = list(msgs)
        for i, m in enumerate(out):
            if id(m) in seen:
                out[i] = m.copy()
            seen.add(id(m))
        return out

    @staticmethod
    def _check_msg(msg: object) -> MutableMessage:
        if not isinstance(msg, MutableMessage):
            raise InvalidMessageError(f"append takes a MutableMessage, got {type(msg).__name__}")
        # The constructor checks these, but they are plain attributes: set afterwards, a type that is no
        # MessageType was stored and delivered as a bare int, reserved properties reached readers (and would
        # override a string-only backend's metadata), and memory stored a non-str property value that then ended
        # every reader of the channel with a TypeError.
        if msg.message_type.__class__ is not MessageType:
            raise InvalidArgumentError(f"message_type must be a MessageType, got {msg.message_type!r}")
        if msg.vchannel.__class__ is not str:
            raise InvalidMessageError(f"vchannel must be a str, got {type(msg.vchannel).__name__}")
        # Checked in the append thread, these failed every append of the batch (other callers' too) with a bare
        # TypeError or UnicodeEncodeError; memory stored the batch's messages before the bad payload while every
        # caller got the error, and its WAL then hung its readers. A buffer assigned afterwards is copied, as the
        # constructor copies it: a change to it must not reach readers.
        check_text(msg.vchannel, "vchannel")
        if msg.payload.__class__ is not bytes:
            msg.payload = _own_payload(msg.payload)
        if msg.txn_ctx is not None and not isinstance(msg.txn_ctx, TxnContext):
            raise InvalidMessageError(f"txn_ctx must be a TxnContext, got {type(msg.txn_ctx).__name__}")
        if msg.properties:
            validate_properties(msg.properties)
        if msg.message_type in _WAL_ONLY_TYPES:
            raise InvalidArgumentError(f"{msg.message_type.name} messages are made by the WAL, not appended")
        if msg.message_type is MessageType.BEGIN_TXN and not msg.vchannel:
            # Refused by the txn rules inside the append, after the group's earlier messages were stored (a
            # PartialAppendError); it depends on nothing stored, so the whole group is refused before it.
            raise InvalidArgumentError('a transaction needs a vchannel: its BEGIN_TXN has vchannel ""')
        if msg.not_persisted:  # set on the attribute (with_not_persisted refuses it): acknowledged, never stored
            raise InvalidArgumentError(f"only the WAL's own ticks are not persisted, not a {msg.message_type.name}")
        if msg.barrier_time_tick:  # set on the attribute, not through with_barrier_time_tick
            check_barrier(msg.barrier_time_tick)
        return msg

    def append(self, msg: MutableMessage, timeout: float | None = None) -> AppendResult:
        return self.append_messages((msg,), timeout)[0]

    def append_async(self, msg: MutableMessage) -> Future[AppendResult]:
        # Shadowed per instance by the dispatcher's submit_one itself (see __init__). It checks the message with
        # _check_msg, refuses work once closing (a failed future), and the close drains what it accepted: no
        # lifetime call needed.
        return self._dispatcher.submit_one(msg)

    def append_messages(self, msgs: Sequence[MutableMessage], timeout: float | None = None) -> list[AppendResult]:
        if timeout is not None:
            timeout = seconds(timeout, "append timeout")  # 0 would always raise, with the messages stored
        if msgs.__class__ is not list and msgs.__class__ is not tuple:
            msgs = _message_list(msgs)
        for m in msgs:
            # The usual case, else the full check: the same test as AppendDispatcher.submit_one's (spelled out in
            # both, since a call per message costs more than the test).
            if (
                m.__class__ is not MutableMessage
                or m.message_type.__class__ is not MessageType
                or m.message_type in _CHECKED_TYPES
                or m.vchannel.__class__ is not str
                or not m.vchannel.isascii()
                or m.payload.__class__ is not bytes
                or m.txn_ctx is not None
                or m.properties
                or m.not_persisted
                or m.barrier_time_tick
            ):
                self._check_msg(m)
        # No lifetime call (two locks and a notify per append): as for append_async, the dispatcher refuses work
        # once closing and its close waits for what it accepted, an inline batch included.
        if self._lifetime.stopped:
            raise ShutdownError(f"wal {self._channel} is closed")
        if not msgs:
            return []
        try:
            if not self._ready.is_set():
                self._wait_ready(timeout)
            return self._dispatcher.run_group(msgs, timeout)
        except TimeoutError as e:
            if isinstance(e, WALTimeoutError):
                raise
            raise WALTimeoutError(f"append to wal {self._channel} did not finish within {timeout}s") from None

    def _wait_ready(self, timeout: float | None) -> None:
        ready = self._chain.ready()
        if ready.is_set():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready.wait(0.05):
            if self._lifetime.stopped:
                raise ShutdownError(f"wal {self._channel} is closed")
            if deadline is not None and time.monotonic() >= deadline:
                raise WALTimeoutError(f"wal {self._channel} not ready within {timeout}s")

    def get_latest_mvcc_timestamp(self, vchannel: str) -> int:
        if not isinstance(vchannel, str) or not vchannel:
            # None or "" answered for broadcast writes only (too low for a vchannel's own), quietly; a list raised
            # a bare TypeError.
            raise InvalidArgumentError(f"get_latest_mvcc_timestamp needs a vchannel name, got {vchannel!r}")
        with self._lifetime.call():
            return self._mvcc_of(vchannel)

    def _mvcc_of(self, vchannel: str) -> int:
        tt, confirmed = self._mvcc.get_mvcc_of_vchannel(vchannel)
        if not confirmed:
            self._dispatcher.trigger(False)
        return tt

    def truncate(self, message_id: MessageID) -> None:
        if not isinstance(message_id, MessageID):
            raise InvalidMessageError(f"truncate takes a MessageID, got {type(message_id).__name__}")
        with self._lifetime.call():
            # Lowered to the begin of any txn a reader still needs (issue #6 b, see _truncate.py).
            self._wimpls.truncate(truncation_point(self._wimpls, message_id, self._ack.last_confirmed_message_id))

    def begin_txn(self, vchannel: str, keepalive: float | None = None, timeout: float | None = None) -> Txn:
        return TxnHandle(self, vchannel, keepalive, timeout)

    # -- close ------------------------------------------------------------------------------------------------
    def _close_inner(self) -> None:
        self._unavailable.set()
        if self._dispatcher.forked:  # a forked child's copy: the threads, ticks and calls in flight are the parent's
            self._close_copy()  # (localfs leaves the parent's files and lock alone, see LocalFSWAL._refuse_in_child)
            return
        watch = self._watch
        watch.step = "the appends accepted before the close to be stored"
        self._dispatcher.close(drain=True)
        watch.step = "calls in flight (a truncate, a read's open)"
        self._lifetime.wait()
        watch.step = "the last time tick to be stored"
        try:
            self._sync_op.sync(SyncMode.PERIODIC)  # persist a last tick if data came after the previous one
        except Exception:
            pass
        self._flush_metrics()
        self._close_time_tick()
        watch.step = "its scanners to close"
        self._close_scanners()
        watch.step = "the backend to close (its last write and sync)"
        self._impls.close()
        watch.step = "the interceptors to close"
        self._chain.close()
        if self._cleanup is not None:
            self._cleanup(self)

    def _may_wait_for_close(self) -> bool:
        # A done callback run by the dispatcher thread while another thread closes the WAL: that close waits for
        # the thread to end, so this one must return at once.
        return not self._dispatcher.in_thread()

    def _close_time_tick(self) -> None:
        self._wab.close()

    def close(self) -> None:
        # Stopped: no txn can end any more; a forked child's copy: its txns are the parent's.
        if not self._lifetime.stopped and not self._stopped_by_interrupt() and not self._dispatcher.forked:
            try:
                self._chain.graceful_close()
            except Exception:
                pass
        super().close()
