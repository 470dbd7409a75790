"""The ack manager: which allocated time ticks are finished, and the last-confirmed message ID.

Every append takes a time tick (an :class:`Acker`) before it reaches the backend and acknowledges it after.
Appends run concurrently, so they finish out of order. The manager tracks:

- the *all-acknowledged prefix*: every tick up to T is finished, so a time tick T can be announced; these
  details are handed to the time-tick sync (:meth:`AckManager.sync_and_get_acknowledged`);
- the *last-confirmed ID*: the newest message ID such that resuming a read from it cannot miss a message with a
  larger time tick. It never passes a message whose ack is not yet confirmed, nor the begin of an open txn.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError
from ...message import ImmutableMessage, MessageID
from ._clock import HybridClock

if TYPE_CHECKING:
    from ..txn import TxnSession

__all__ = ["AckDetail", "AckDetails", "AckManager", "Acker", "LastConfirmedManager"]


@dataclass(slots=True, eq=False)
class AckDetail:
    """What one allocated time tick became: a message (or an error, or a sync) and what it saw when allocated."""

    begin_timestamp: int
    end_timestamp: int = 0  # the newest tick allocated when it was acknowledged
    last_confirmed_message_id: MessageID | None = None
    message: ImmutableMessage | None = None
    is_sync: bool = False
    error: BaseException | None = None
    txn_session: TxnSession | None = None

    def __post_init__(self) -> None:
        if self.begin_timestamp <= 0:
            raise InvalidArgumentError(f"an ack detail needs a positive timestamp, got {self.begin_timestamp}")


class Acker:
    """One allocated time tick; acknowledge it exactly once, whatever happens to the append."""

    __slots__ = ("_acked", "_manager", "detail")

    def __init__(self, manager: AckManager, detail: AckDetail) -> None:
        self._manager = manager
        self._acked = False
        self.detail = detail

    @property
    def timestamp(self) -> int:
        return self.detail.begin_timestamp

    @property
    def last_confirmed_message_id(self) -> MessageID | None:
        return self.detail.last_confirmed_message_id

    @property
    def acknowledged(self) -> bool:
        return self._acked

    def ack(
        self,
        *,
        message: ImmutableMessage | None = None,
        error: BaseException | None = None,
        sync: bool = False,
        txn_session: TxnSession | None = None,
    ) -> None:
        self._manager._ack(self, message, error, sync, txn_session)

    def __repr__(self) -> str:
        return f"Acker(ts={self.timestamp}, acked={self._acked})"


class LastConfirmedManager:
    """Advances the last-confirmed ID over confirmed messages in ID order, holding at an open txn's messages."""

    __slots__ = ("_heap", "_seq", "current")

    def __init__(self, last_confirmed_message_id: MessageID | None) -> None:
        self.current = last_confirmed_message_id
        # The ID and txn of each message held back, not its detail: the detail holds the message, and while a txn
        # stays open every message appended after its begin is held here (a long txn beside other producers kept all
        # they wrote, payloads included, in RAM until it ended).
        self._heap: list[tuple[MessageID, int, TxnSession | None]] = []
        self._seq = itertools.count()

    def add_confirmed_details(self, details: Iterable[AckDetail], time_tick: int) -> None:
        heap = self._heap
        if not heap:
            # Fast path (the common case): nothing held back and nothing in these details holds back, so the
            # result is the largest ID; no heap traffic (each push/pop compares MessageIDs in Python).
            details = list(details)
            best = self.current
            for d in details:
                if d.is_sync or d.error is not None or d.message is None:
                    continue
                s = d.txn_session
                if s is not None and not s.is_expired_or_done(time_tick):
                    break
                mid = d.message.message_id
                if best is None or best < mid:
                    best = mid
            else:
                self.current = best
                return
        for d in details:
            if d.is_sync or d.error is not None or d.message is None:
                continue
            heapq.heappush(heap, (d.message.message_id, next(self._seq), d.txn_session))
        while heap:
            mid, _, s = heap[0]
            if s is not None and not s.is_expired_or_done(time_tick):
                break
            heapq.heappop(heap)
            if self.current is None or self.current < mid:
                self.current = mid

    def __len__(self) -> int:
        return len(self._heap)


class AckManager:
    """Allocates time ticks from ``clock`` and tracks their acknowledgement; thread-safe."""

    def __init__(self, clock: HybridClock, last_confirmed_message_id: MessageID | None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._not_acked: list[tuple[int, Acker]] = []  # min-heap by begin timestamp (unique)
        self._acked: list[tuple[int, int, Acker]] = []  # min-heap by end timestamp, then begin
        self._last_allocated = 0
        self._last_confirmed_tt = 0
        self._acknowledged: list[AckDetail] = []
        self._lc = LastConfirmedManager(last_confirmed_message_id)

    def allocate(self) -> Acker:
        with self._lock:
            return self._push(self._clock.allocate())

    def allocate_with_barrier(self, barrier_time_tick: int) -> Acker:
        """An acker whose timestamp is greater than ``barrier_time_tick``."""
        with self._lock:
            return self._push(self._clock.allocate_with_barrier(barrier_time_tick))

    def _push(self, ts: int) -> Acker:
        a = Acker(self, AckDetail(ts, last_confirmed_message_id=self._lc.current))
        heapq.heappush(self._not_acked, (ts, a))
        self._last_allocated = ts
        return a

    def _ack(
        self,
        acker: Acker,
        message: ImmutableMessage | None,
        error: BaseException | None,
        sync: bool,
        txn_session: TxnSession | None,
    ) -> None:
        with self._lock:
            if acker._acked:
                raise InvalidArgumentError(f"time tick {acker.timestamp} acknowledged twice")
            d = acker.detail
            d.message, d.error, d.is_sync, d.txn_session = message, error, sync, txn_session
            end = d.end_timestamp = self._last_allocated
            acker._acked = True
            not_acked = self._not_acked
            acked = self._acked
            if len(not_acked) == 1 and not acked and not self._lc._heap:
                # The only tick in flight (a batch of the dispatcher): it becomes the all-acknowledged point, and
                # nothing is confirmed yet (its end is not below that point) nor held back: the loops below, short.
                not_acked.clear()
                ts = d.begin_timestamp
                self._last_confirmed_tt = ts
                self._acknowledged.append(d)
                acked.append((end, ts, acker))
                return
            heapq.heappush(acked, (end, d.begin_timestamp, acker))

            while not_acked and not_acked[0][1]._acked:
                ts, a = heapq.heappop(not_acked)
                self._last_confirmed_tt = ts
                self._acknowledged.append(a.detail)

            # Finished before every tick up to last_confirmed_tt was: everything that could precede it in the
            # backend is already there, so its ID may become the last-confirmed one.
            confirmed: list[AckDetail] = []
            while acked and acked[0][0] < self._last_confirmed_tt:
                confirmed.append(heapq.heappop(acked)[2].detail)
            self._lc.add_confirmed_details(confirmed, self._last_confirmed_tt)

    def sync_and_get_acknowledged(self) -> list[AckDetail]:
        """Push the all-acknowledged point to now, then take the details acknowledged since the last call."""
        self.allocate().ack(sync=True)
        with self._lock:
            out = self._acknowledged
            self._acknowledged = []
            return out

    def sync_idle(self) -> tuple[int, list[AckDetail], MessageID | None] | None:
        """:meth:`sync_and_get_acknowledged` in one lock and without an :class:`Acker`, when no tick is in flight
        (the dispatcher thread after a batch: every tick it allocated is acknowledged). None otherwise.

        Returns the sync's timestamp, the details acknowledged since the last call (the sync's own, which never
        carries a message, is left out) and the last-confirmed ID the sync's detail would have carried.
        """
        with self._lock:
            if self._not_acked:
                return None
            ts = self._clock.allocate()
            lc = self._lc.current
            self._last_allocated = self._last_confirmed_tt = ts
            out = self._acknowledged
            self._acknowledged = []
            acked = self._acked
            if acked and acked[0][0] < ts:
                confirmed: list[AckDetail] = []
                while acked and acked[0][0] < ts:
                    confirmed.append(heapq.heappop(acked)[2].detail)
                self._lc.add_confirmed_details(confirmed, ts)
            return ts, out, lc

    @property
    def last_confirmed_message_id(self) -> MessageID | None:
        return self._lc.current

    @property
    def last_confirmed_time_tick(self) -> int:
        """Every tick up to this one is acknowledged."""
        return self._last_confirmed_tt

    @property
    def not_acked_count(self) -> int:
        return len(self._not_acked)


class AckDetails:
    """Details accumulated by the time-tick sync until a tick message carries them."""

    __slots__ = ("_details",)

    def __init__(self) -> None:
        self._details: list[AckDetail] = []

    def add_details(self, details: Sequence[AckDetail]) -> None:
        """Append details whose timestamps keep increasing strictly."""
        last = self._details[-1].begin_timestamp if self._details else 0
        for d in details:
            if d.begin_timestamp <= last:
                raise InvalidArgumentError(
                    f"ack details must have increasing timestamps: {d.begin_timestamp} after {last}"
                )
            last = d.begin_timestamp
        self._details.extend(details)

    def empty(self) -> bool:
        return not self._details

    def __len__(self) -> int:
        return len(self._details)

    def is_no_persisted_message(self) -> bool:
        """True when no detail wrote a message (only syncs and failed appends): the tick need not be stored."""
        return all(d.is_sync or d.error is not None or d.message is None for d in self._details)

    def last_all_acknowledged_timestamp(self) -> int:
        return self._details[-1].begin_timestamp

    def earliest_last_confirmed_message_id(self) -> MessageID | None:
        ids = [d.last_confirmed_message_id for d in self._details if d.last_confirmed_message_id is not None]
        return min(ids) if ids else None

    @property
    def details(self) -> list[AckDetail]:
        return list(self._details)

    def messages(self) -> list[ImmutableMessage]:
        """The messages written successfully, in time-tick order (what the write-ahead buffer takes)."""
        return [d.message for d in self._details if d.message is not None and d.error is None and not d.is_sync]

    def clear(self) -> None:
        self._details = []
