"""The time-tick interceptor: stamps every message with a time tick and a last-confirmed ID, drives
transactions (begin / body / commit / rollback) and keeps the MVCC view (Milvus ``timetick_interceptor.go``).

Batches arrive one at a time from the adaptor's dispatcher (run by its thread or inline by a caller, never two
at once), so ticks are allocated in queue order and a batch
reaches the backend in that order: persist order is time-tick order. A COMMIT_TXN or ROLLBACK_TXN is sent on
its own after the messages queued before it, so the body it waits for is already written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import InvalidArgumentError, InvalidTxnStateError
from ...message import ImmutableMessage, IntMessageID, MessageID, MessageType, MutableMessage
from ...utility._wab_compact import compact_written
from .._chain import all_ok, batch_to_single
from .._interfaces import AppendFunc, AppendOutcome, BatchAppendFunc
from ..txn import TxnManager, TxnSession
from ._ack import Acker, AckManager
from ._clock import HybridClock
from ._mvcc import MVCCManager

__all__ = ["TimeTickInterceptor"]

_TT = MessageType.TIME_TICK
_BEGIN = MessageType.BEGIN_TXN
_COMMIT = MessageType.COMMIT_TXN
_ROLLBACK = MessageType.ROLLBACK_TXN
_END_TXN = frozenset({_COMMIT, _ROLLBACK})
_SPECIAL = frozenset({_TT, _BEGIN, _COMMIT, _ROLLBACK})
# (index in the batch, message, its acker (a run's last message carries the run's), txn session, plain?)
_Entry = tuple[int, MutableMessage, "Acker | None", "TxnSession | None", bool]
_COMMIT_WAIT = 5.0


def _same_vchannel(m: MutableMessage, s: TxnSession) -> None:
    """A txn lives on one vchannel: a reader selecting or filtering it must see all of its messages or none (a
    body on another vchannel was dropped by a reader of the txn's, whose buffer then expired the txn early)."""
    if m.vchannel != s.vchannel:
        raise InvalidArgumentError(
            f"txn {s.txn_id} is on vchannel {s.vchannel!r}; its {m.message_type.name} is on {m.vchannel!r}"
        )


class TimeTickInterceptor:
    name = "timetick"

    def __init__(
        self,
        ack: AckManager,
        txns: TxnManager,
        mvcc: MVCCManager,
        clock: HybridClock,
        graceful_close_timeout: float = 3.0,
        compact_ids: type[IntMessageID] | None = None,
        wab: Any = None,
    ) -> None:
        self._clock = clock
        # What the write-ahead buffer takes (take_written): messages, or for a plain batch whose IDs are of class
        # ``compact_ids`` (the buffer's compact_id_class) the buffer's compact entries, built without a message.
        self._written: list[Any] = []
        self._compact_ids = compact_ids
        # The write-ahead buffer that takes ``_written``, when it may not want a batch's messages (see
        # WriteAheadBuffer.wants_messages): then a plain batch hands it nothing, at no cost per message.
        self._wab = wab if callable(getattr(wab, "wants_messages", None)) else None
        self._ack = ack
        self._txns = txns
        self._mvcc = mvcc
        self._graceful_timeout = graceful_close_timeout

    def do_append(self, msg: MutableMessage, next: AppendFunc) -> MessageID:
        def as_batch(ms: Sequence[MutableMessage]) -> list[AppendOutcome]:
            out: list[AppendOutcome] = []
            for m in ms:
                try:
                    out.append(next(m))
                except Exception as e:
                    out.append(e)
            return out

        return batch_to_single(lambda ms: self.do_append_batch(ms, as_batch))(msg)

    def do_append_batch(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        if len(msgs) == 1:  # a synchronous append
            m = msgs[0]
            if m.txn_ctx is None and not m.barrier_time_tick and m.message_type not in _SPECIAL:
                return self._append_one(msgs, next)
            return self._append_mixed(msgs, next)
        for m in msgs:
            if m.txn_ctx is not None or m.barrier_time_tick or m.message_type in _SPECIAL:
                return self._append_mixed(msgs, next)
        return self._append_plain(msgs, next) if msgs else []

    def _append_plain(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        """The common case, a batch of plain messages only (no txn, barrier or system type): one run, one acker
        (see :meth:`_stamp_run`), ticks allocated at once, no per-message bookkeeping entries.
        """
        n = len(msgs)
        if n == 1:
            return self._append_one(msgs, next)
        tt = self._clock.allocate_many(n - 1)
        acker = self._ack.allocate()
        lc = acker.last_confirmed_message_id
        last = msgs[-1]
        for m in msgs:  # with_last_confirmed, inlined
            m.time_tick = tt
            tt += 1
            m.last_confirmed_message_id = lc
            m._lc_self = False
        last.time_tick = acker.timestamp
        try:
            results = next(msgs)
        except Exception as e:  # an inner interceptor that raises must not leave the acker (and ticks) stuck
            results = [e] * n
        written = self._written
        last_ok: ImmutableMessage | None = None
        err: BaseException | None = None
        if all_ok(results):  # the usual case
            wab = self._wab
            if wab is not None and not wab.wants_messages():  # nobody reads them: none handed over
                wab.mark_gap(last.time_tick)
                last_ok = last.into_immutable(results[-1])  # type: ignore[arg-type]  # for the acker only
            elif (compact := compact_written(msgs, results, self._compact_ids, lc)) is not None:
                # every message stamped with lc; no ImmutableMessage per message: the buffer's compact entries
                written += compact
                last_ok = last.into_immutable(results[-1])  # type: ignore[arg-type]  # for the acker only
            else:
                ims = [m.into_immutable(r) for m, r in zip(msgs, results, strict=True)]  # type: ignore[arg-type]
                written.extend(ims)
                last_ok = ims[-1]
            newest = {m.vchannel: m for m in msgs}  # per vchannel, its newest message
        else:
            newest = {}
            for m, r in zip(msgs, results, strict=True):
                if isinstance(r, BaseException):
                    err = r
                    continue
                last_ok = m.into_immutable(r)
                written.append(last_ok)
                newest[m.vchannel] = m
        if last_ok is not None:
            acker.ack(message=last_ok)
        else:
            acker.ack(error=err)
        for m in newest.values():
            self._mvcc.update_mvcc(m)
        return results

    def _append_one(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        """:meth:`_append_plain` for one message (a synchronous ``append``), without its loops and comprehensions."""
        m = msgs[0]
        acker = self._ack.allocate()
        d = acker.detail
        m.time_tick = d.begin_timestamp
        m.last_confirmed_message_id = d.last_confirmed_message_id  # with_last_confirmed, inlined
        m._lc_self = False
        try:
            results = next(msgs)
        except Exception as e:  # as in _append_plain: the acker must not stay in flight
            results = [e]
        r = results[0]
        if isinstance(r, BaseException):
            acker.ack(error=r)
            return results
        im = m.into_immutable(r)
        self._written.append(im)
        acker.ack(message=im)
        self._mvcc.update_mvcc(m)
        return results

    def _append_mixed(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        out: list[AppendOutcome | None] = [None] * len(msgs)
        seg: list[_Entry] = []
        run: list[tuple[int, MutableMessage]] = []  # consecutive plain messages share one acker
        for i, m in enumerate(msgs):
            mt = m.message_type
            if m.txn_ctx is None and not m.barrier_time_tick and mt not in _SPECIAL:
                run.append((i, m))
                continue
            if run:
                self._stamp_run(run, seg)
                run = []
            if mt is _TT:  # a tick from the sync operator: its time tick is already allocated
                seg.append((i, m, None, None, False))
                continue
            if mt in _END_TXN:
                self._flush(seg, next, out)
                seg = []
                out[i] = self._end_txn(m, next)
                continue
            btt = m.barrier_time_tick
            acker = self._ack.allocate_with_barrier(btt) if btt else self._ack.allocate()
            tt = acker.timestamp
            m.time_tick = tt
            m.with_last_confirmed(acker.last_confirmed_message_id)
            session: TxnSession | None = None
            try:
                if mt is _BEGIN:
                    if not m.vchannel:  # as begin_txn("") (adaptor/_txn.py): a txn lives on one vchannel
                        raise InvalidArgumentError('a transaction needs a vchannel: its BEGIN_TXN has vchannel ""')
                    ka = m.txn_ctx.keepalive if m.txn_ctx is not None else None
                    session = self._txns.begin_new_txn(tt, ka, m.vchannel)
                    m.with_txn_context(session.txn_ctx)
                elif m.txn_ctx is not None:
                    session = self._txns.get_session(m.txn_ctx.txn_id)
                    _same_vchannel(m, session)
                    session.add_new_message(tt)
            except Exception as e:
                acker.ack(error=e)
                out[i] = e
                continue
            seg.append((i, m, acker, session, False))
        if run:
            self._stamp_run(run, seg)
        self._flush(seg, next, out)
        return out  # type: ignore[return-value]  # every slot is filled

    def _stamp_run(self, run: list[tuple[int, MutableMessage]], seg: list[_Entry]) -> None:
        """Ticks for a run of plain messages: one acker, whose tick is the last message's.

        One acker per run (not per message) keeps the ack manager's heaps small; it is exact because nothing is
        acknowledged while a batch is being stamped (one dispatcher thread), so every message of the run sees the
        same last-confirmed ID, and the run's largest ID is the one the last-confirmed ID may advance to.
        """
        clock = self._clock
        for _, m in run[:-1]:
            m.time_tick = clock.allocate()
        acker = self._ack.allocate()
        lc = acker.last_confirmed_message_id
        last = len(run) - 1
        for k, (i, m) in enumerate(run):
            if k == last:
                m.time_tick = acker.timestamp
            m.with_last_confirmed(lc)
            seg.append((i, m, acker if k == last else None, None, True))

    def take_written(self) -> list[Any]:
        """The messages (or compact entries) written since the last call, in time-tick order (what the
        write-ahead buffer takes)."""
        out, self._written = self._written, []
        return out

    def _flush(self, seg: list[_Entry], next: BatchAppendFunc, out: list[AppendOutcome | None]) -> None:
        if not seg:
            return
        results = next([e[1] for e in seg])
        newest: dict[str, MutableMessage] = {}  # per vchannel: the MVCC only needs each one's newest write
        written = self._written
        run_ok: ImmutableMessage | None = None
        run_err: BaseException | None = None
        for (i, m, acker, s, plain), r in zip(seg, results, strict=True):
            out[i] = r
            im: ImmutableMessage | None = None
            if isinstance(r, BaseException):
                failed = True
            else:
                failed = False
                if m.message_type is not _TT:
                    im = m.into_immutable(r)
                    written.append(im)
            if plain:
                if im is not None:
                    run_ok = im
                elif failed:
                    run_err = r  # type: ignore[assignment]
                if acker is not None:
                    if run_ok is not None:
                        acker.ack(message=run_ok)
                    else:
                        acker.ack(error=run_err)
                    run_ok = run_err = None
            else:
                if s is not None:
                    if m.message_type is _BEGIN:
                        s.begin_rollback() if failed else s.begin_done()
                    elif failed:
                        s.add_new_message_fail()
                    else:
                        s.add_new_message_done_and_keepalive(m.time_tick)
                if acker is not None:
                    if im is None:
                        acker.ack(error=r if isinstance(r, BaseException) else None)
                    else:
                        acker.ack(message=im, txn_session=s)
            if not failed and (m.txn_ctx is None or m.message_type is _COMMIT or m.message_type is _TT):
                newest[m.vchannel] = m
        for m in newest.values():
            self._mvcc.update_mvcc(m)

    def _end_txn(self, m: MutableMessage, next: BatchAppendFunc) -> AppendOutcome:
        acker = self._ack.allocate()
        tt = acker.timestamp
        m.time_tick = tt
        m.with_last_confirmed(acker.last_confirmed_message_id)
        commit = m.message_type is _COMMIT
        try:
            if m.txn_ctx is None:
                raise InvalidTxnStateError(f"{m.message_type.name} without a txn context")
            s = self._txns.get_session(m.txn_ctx.txn_id)
            _same_vchannel(m, s)
            if commit:
                s.request_commit_and_wait(tt, _COMMIT_WAIT)
            else:
                s.request_rollback(tt)
        except Exception as e:
            acker.ack(error=e)
            return e
        r = next([m])[0]
        if isinstance(r, BaseException):
            acker.ack(error=r)
            return r
        s.commit_done() if commit else s.rollback_done()
        im = m.into_immutable(r)
        self._written.append(im)
        acker.ack(message=im, txn_session=s)
        self._mvcc.update_mvcc(m)
        return r

    def graceful_close(self) -> None:
        self._txns.graceful_close(self._graceful_timeout)

    def close(self) -> None:
        pass
