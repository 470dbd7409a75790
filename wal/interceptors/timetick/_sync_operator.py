"""The time-tick sync (Milvus ``timetick_sync_operator.go``): turns acknowledged appends into a tick.

Called by whoever holds the WAL's append turn (the dispatcher thread, or a caller running a batch inline:
see ``wal/adaptor/_dispatcher.py``), one at a time, in three modes:

- ``BATCH`` after every appended batch: a not-persisted tick that hands the batch to the write-ahead buffer, so
  tailing readers see a message as soon as its append is acknowledged;
- ``PERIODIC`` every ``time_tick_interval``: persisted when data was written since the last persisted tick (so
  catch-up and RO readers can release what they hold), otherwise not persisted (an idle WAL does not grow);
- ``FORCE``: always persisted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ...message import ImmutableMessage, MessageID, MutableMessage
from ...utility import WriteAheadBuffer
from ..txn import TxnManager
from ._ack import AckDetail, AckDetails, AckManager
from ._message import new_time_tick_message
from ._mvcc import MVCCManager

__all__ = ["SyncMode", "TimeTickSyncOperator"]


class SyncMode(enum.Enum):
    BATCH = 1
    PERIODIC = 2
    FORCE = 3


class TimeTickSyncOperator:
    """``append_persisted`` writes a tick through the interceptor chain to the backend and returns its ID;
    ``take_written`` hands over the messages written since its last call (else the ack details' messages are
    used, which needs one acker per message).
    """

    def __init__(
        self,
        ack: AckManager,
        txns: TxnManager,
        mvcc: MVCCManager,
        wab: WriteAheadBuffer,
        append_persisted: Callable[[MutableMessage], MessageID],
        take_written: Callable[[], list[ImmutableMessage]] | None = None,
    ) -> None:
        self._take = take_written
        self._msgs: list[ImmutableMessage] = []
        self._ack = ack
        self._txns = txns
        self._mvcc = mvcc
        self._wab = wab
        self._append = append_persisted
        self._details = AckDetails()
        self._dirty = False  # data persisted since the last persisted tick
        self.persisted_ticks = 0

    @property
    def write_ahead_buffer(self) -> WriteAheadBuffer:
        return self._wab

    def sync(self, mode: SyncMode) -> ImmutableMessage | None:
        """Make (and return) the next tick; None when a stuck append keeps the tick from advancing."""
        if mode is SyncMode.BATCH and self._sync_idle():
            return self._wab.last_time_tick_message
        return self._sync(mode)

    def sync_batch(self) -> None:
        """``sync(SyncMode.BATCH)`` without returning the tick (the adaptor after every batch): on the fast path
        the tick is then never built unless a tailing reader asks for it.
        """
        if not self._sync_idle():
            self._sync(SyncMode.BATCH)

    def _sync_idle(self) -> bool:
        """The per-batch tick when no tick is in flight and nothing is held back (the usual case): False when
        :meth:`_sync` has to do it."""
        if self._take is None or not self._details.empty():
            return False
        idle = self._ack.sync_idle()
        if idle is None:
            return False
        self._sync_batch(*idle)
        return True

    def _sync(self, mode: SyncMode) -> ImmutableMessage | None:
        details = self._details
        if self._take is not None:
            self._msgs.extend(self._take())
        got = self._ack.sync_and_get_acknowledged()
        if got:
            details.add_details(got)
        if details.empty():
            return None
        if not details.is_no_persisted_message():
            self._dirty = True
        ts = details.last_all_acknowledged_timestamp()
        lc = details.earliest_last_confirmed_message_id()
        persist = mode is SyncMode.FORCE or (mode is SyncMode.PERIODIC and self._dirty)
        msg = new_time_tick_message(ts, lc, persist)
        if persist:
            mid = self._append(msg)  # on failure the details stay and the next sync retries
            self._dirty = False
            self.persisted_ticks += 1
        else:
            assert lc is not None, "the ack manager starts from the first tick's ID"
            mid = lc
        tick = msg.into_immutable(mid)
        self._wab.append(self._msgs if self._take is not None else details.messages(), tick)
        self._msgs = []
        details.clear()
        self._txns.cleanup_txn_until(ts)
        self._mvcc.update_mvcc(msg)
        return tick

    def _sync_batch(self, ts: int, got: list[AckDetail], lc: MessageID | None) -> None:
        """The per-batch tick, the hot path of every append: the same tick :meth:`sync` makes in ``BATCH`` mode
        (not persisted, its ID its last-confirmed ID), handed to the write-ahead buffer as its two fields (built
        there only if a reader asks), without the accumulated :class:`AckDetails` and the mutable message it goes
        through otherwise.
        """
        msgs = self._msgs
        msgs.extend(self._take())  # type: ignore[misc]  # the caller checked it
        for d in got:
            dlc = d.last_confirmed_message_id
            if dlc is not None and (lc is None or dlc < lc):
                lc = dlc
            if not self._dirty and not d.is_sync and d.error is None and d.message is not None:
                self._dirty = True
        assert lc is not None, "the ack manager starts from the first tick's ID"
        try:
            self._wab.append_batch_tick(msgs, ts, lc)
        except BaseException:
            self._details.add_details(got)  # as sync() keeps them on failure: the next sync carries them
            raise
        self._msgs = []
        self._txns.cleanup_txn_until(ts)
        self._mvcc.update_time_tick(ts)
