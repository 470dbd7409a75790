"""The time-tick interceptor: stamps every message with a time tick and a last-confirmed ID, drives
transactions (begin / body / commit / rollback) and keeps the MVCC view (Milvus ``timetick_interceptor.go``).

Batches arrive from the adaptor's single dispatcher thread, so ticks are allocated in queue order and a batch
reaches the backend in that order: persist order is time-tick order. A COMMIT_TXN or ROLLBACK_TXN is sent on
its own after the messages queued before it, so the body it waits for is already written.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import InvalidTxnStateError
from ...message import MessageID, MessageType, MutableMessage
from .._chain import batch_to_single
from .._interfaces import AppendFunc, AppendOutcome, BatchAppendFunc
from ..txn import TxnManager, TxnSession
from ._ack import Acker, AckManager
from ._mvcc import MVCCManager

__all__ = ["TimeTickInterceptor"]

_TT = MessageType.TIME_TICK
_BEGIN = MessageType.BEGIN_TXN
_COMMIT = MessageType.COMMIT_TXN
_ROLLBACK = MessageType.ROLLBACK_TXN
_END_TXN = frozenset({_COMMIT, _ROLLBACK})
_COMMIT_WAIT = 5.0


class TimeTickInterceptor:
    name = "timetick"

    def __init__(
        self, ack: AckManager, txns: TxnManager, mvcc: MVCCManager, graceful_close_timeout: float = 3.0
    ) -> None:
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
        out: list[AppendOutcome | None] = [None] * len(msgs)
        seg: list[tuple[int, MutableMessage, Acker | None, TxnSession | None]] = []
        for i, m in enumerate(msgs):
            mt = m.message_type
            if mt is _TT:  # a tick from the sync operator: its time tick is already allocated
                seg.append((i, m, None, None))
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
                    ka = m.txn_ctx.keepalive if m.txn_ctx is not None else None
                    session = self._txns.begin_new_txn(tt, ka)
                    m.with_txn_context(session.txn_ctx)
                elif m.txn_ctx is not None:
                    session = self._txns.get_session(m.txn_ctx.txn_id)
                    session.add_new_message(tt)
            except Exception as e:
                acker.ack(error=e)
                out[i] = e
                continue
            seg.append((i, m, acker, session))
        self._flush(seg, next, out)
        return out  # type: ignore[return-value]  # every slot is filled

    def _flush(
        self,
        seg: list[tuple[int, MutableMessage, Acker | None, TxnSession | None]],
        next: BatchAppendFunc,
        out: list[AppendOutcome | None],
    ) -> None:
        if not seg:
            return
        results = next([m for _, m, _, _ in seg])
        newest: dict[str, MutableMessage] = {}  # per vchannel: the MVCC only needs each one's newest write
        for (i, m, acker, s), r in zip(seg, results, strict=True):
            out[i] = r
            failed = isinstance(r, BaseException)
            if s is not None:
                if m.message_type is _BEGIN:
                    s.begin_rollback() if failed else s.begin_done()
                elif failed:
                    s.add_new_message_fail()
                else:
                    s.add_new_message_done_and_keepalive(m.time_tick)
            if acker is not None:
                if isinstance(r, BaseException):
                    acker.ack(error=r)
                else:
                    acker.ack(message=m.into_immutable(r), txn_session=s)
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
        acker.ack(message=m.into_immutable(r), txn_session=s)
        self._mvcc.update_mvcc(m)
        return r

    def graceful_close(self) -> None:
        self._txns.graceful_close(self._graceful_timeout)

    def close(self) -> None:
        pass
