"""The open transactions of one WAL."""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial

from ..._checks import seconds
from ...errors import InvalidArgumentError, ShutdownError, TxnExpiredError
from ...message import TxnContext
from ...utility._deadline_heap import DeadlineHeap
from ..timetick._clock import HybridClock
from ._session import TxnSession

__all__ = ["TxnManager"]




class _Closing(ShutdownError, TxnExpiredError):
    """A txn begun while the WAL closes: a ShutdownError (the WAL's contract for a closing object), and the
    TxnExpiredError Milvus's manager returns then."""

class TxnManager:
    """Creates, finds and forgets :class:`TxnSession` objects; thread-safe.

    Txn IDs are drawn from the WAL's hybrid clock: they are unique and, like time ticks, never reused after a
    restart. Sessions are forgotten when a time tick finds them expired or done (:meth:`cleanup_txn_until`).

    Why a heap of deadlines (:class:`~wal.utility.DeadlineHeap`) and a queue of finished IDs rather than a look at
    every session: the cleanup runs after every batch, so looking at every open session made each append cost
    O(open txns) (1 ms per append with 1,000 txns open, 18 ms with 10,000).
    """

    def __init__(self, clock: HybridClock, default_keepalive: float = 10.0) -> None:
        self._clock = clock
        self._default_keepalive = default_keepalive
        self._lock = threading.RLock()  # entered as ``with self._lock``: docs/ARCHITECTURE.md, "Interrupts"
        self._cond = threading.Condition(self._lock)
        self._sessions: dict[int, TxnSession] = {}
        self._deadlines = DeadlineHeap()
        self._finished: deque[int] = deque()  # IDs of sessions that ended (a cleanup each registers at its begin)
        self._closing = False
        self._cleaning = 0  # cleanup_txn_until calls running cleanups outside the lock

    def begin_new_txn(self, time_tick: int, keepalive: float | None = None, vchannel: str = "") -> TxnSession:
        """A session for a transaction whose begin message has ``time_tick``.

        ``keepalive`` None or 0 means the default; below 1 ms raises ``InvalidArgumentError``.
        """
        if not keepalive:
            keepalive = self._default_keepalive
        if seconds(keepalive, "txn keepalive") < 0.001:
            raise InvalidArgumentError(f"txn keepalive must be at least 1 ms, got {keepalive} s")
        with self._lock:
            if self._closing:
                raise _Closing("the wal is closing: no new transactions")
            s = TxnSession(TxnContext(self._clock.allocate(), keepalive), time_tick, vchannel)
            self._sessions[s.txn_id] = s
            self._deadlines.push(s.expired_time_tick, s.txn_id)
            s.register_cleanup(partial(self._finished.append, s.txn_id))  # deque.append: no lock taken
            return s

    def get_session(self, txn_id: int) -> TxnSession:
        with self._lock:
            s = self._sessions.get(txn_id)
        if s is None:
            raise TxnExpiredError(f"txn {txn_id} is unknown: expired, finished, or never begun on this WAL")
        return s

    def cleanup_txn_until(self, time_tick: int) -> None:
        """Forget every session expired or done at ``time_tick``, running its cleanups."""
        if not self._sessions:  # after every batch: no lock when there is no txn (a racing begin waits a tick)
            return
        with self._lock:
            sessions = self._sessions
            gone = []
            finished = self._finished
            while finished:
                s = sessions.get(finished.popleft())
                if s is not None and s.is_expired_or_done(time_tick):
                    del sessions[s.txn_id]
                    gone.append(s)
            deadlines = self._deadlines
            for txn_id in deadlines.due(time_tick):
                s = sessions.get(txn_id)
                if s is None:  # ended, and forgotten already
                    continue
                if s.is_expired_or_done(time_tick):
                    del sessions[txn_id]
                    gone.append(s)
                else:  # renewed since
                    deadlines.push(s.expired_time_tick, txn_id)
            if not sessions:  # what is left names ended sessions only
                finished.clear()
            deadlines.trim(len(sessions), lambda: [(s.expired_time_tick, t) for t, s in sessions.items()])
            if not gone:
                return
            self._cleaning += 1
        try:
            for s in gone:
                s.cleanup()
        finally:
            with self._lock:
                self._cleaning -= 1
                self._cond.notify_all()

    def graceful_close(self, timeout: float | None = None) -> bool:
        """Refuse new transactions, then wait until the open ones are gone; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closing = True
            while self._sessions or self._cleaning:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def __len__(self) -> int:
        return len(self._sessions)
