"""One open transaction on the write side: its state machine, in-flight body count and keepalive."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ...errors import InvalidTxnStateError, TxnExpiredError, WALTimeoutError
from ...message import TxnContext, TxnState, add_physical_ms

__all__ = ["TxnSession"]


class TxnSession:
    """State machine ``BEGIN -> IN_FLIGHT -> ON_COMMIT -> COMMITTED`` (or ``-> ON_ROLLBACK -> ROLLBACKED``).

    The transaction expires when no body message arrives for ``keepalive``: a time tick at or past
    ``last body tick + keepalive`` expires it *for good*, even if an older tick comes later. A commit waits until
    every body message in flight has been written, so the commit is appended after its whole body.
    """

    __slots__ = (
        "_cleanups", "_cond", "_expired", "_in_flight", "_last_tt", "_lock", "_state", "txn_ctx", "vchannel"
    )

    def __init__(self, txn_ctx: TxnContext, time_tick: int, vchannel: str = "") -> None:
        self.txn_ctx = txn_ctx
        self.vchannel = vchannel  # every message of the txn is on it (readers select and filter by txn)
        self._lock = threading.RLock()  # entered as ``with self._lock``: docs/ARCHITECTURE.md, "Interrupts"
        self._cond = threading.Condition(self._lock)
        self._state = TxnState.BEGIN
        self._last_tt = time_tick
        self._in_flight = 0
        self._expired = False
        self._cleanups: list[Callable[[], None]] = []

    @property
    def txn_id(self) -> int:
        return self.txn_ctx.txn_id

    @property
    def state(self) -> TxnState:
        return self._state

    @property
    def expired_time_tick(self) -> int:
        return add_physical_ms(self._last_tt, self.txn_ctx.keepalive_ms)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def begin_done(self) -> None:
        """The begin message is written: body messages may come."""
        with self._lock:
            self._expect(TxnState.BEGIN, "finish its begin")
            self._state = TxnState.IN_FLIGHT

    def begin_rollback(self) -> None:
        """The begin message failed: the transaction is over."""
        with self._lock:
            self._state = TxnState.ROLLBACKED
            fns = self._take_cleanups()
        _run(fns)

    def add_new_message(self, time_tick: int) -> None:
        """A body message with ``time_tick`` is about to be written."""
        with self._lock:
            self._check_expired(time_tick)
            self._expect(TxnState.IN_FLIGHT, "add a message")
            self._in_flight += 1

    def add_new_message_done_and_keepalive(self, time_tick: int) -> None:
        with self._lock:
            if time_tick > self._last_tt:
                self._last_tt = time_tick
            self._message_finished()

    def add_new_message_fail(self) -> None:
        with self._lock:
            self._message_finished()

    def _message_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._cond.notify_all()

    def request_commit_and_wait(self, time_tick: int, timeout: float | None = None) -> None:
        """Move to ON_COMMIT, then wait until no body message is in flight."""
        with self._lock:
            self._check_expired(time_tick)
            self._expect(TxnState.IN_FLIGHT, "commit")
            self._state = TxnState.ON_COMMIT
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._in_flight > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WALTimeoutError(
                        f"txn {self.txn_id}: {self._in_flight} body message(s) still in flight after {timeout} s"
                    )
                self._cond.wait(left)

    def commit_done(self) -> None:
        with self._lock:
            self._expect(TxnState.ON_COMMIT, "finish its commit")
            self._state = TxnState.COMMITTED
            fns = self._take_cleanups()
        _run(fns)

    def request_rollback(self, time_tick: int) -> None:
        with self._lock:
            self._check_expired(time_tick)
            if self._state is not TxnState.IN_FLIGHT and self._state is not TxnState.BEGIN:
                raise InvalidTxnStateError(f"txn {self.txn_id} cannot roll back in state {self._state.name}")
            self._state = TxnState.ON_ROLLBACK

    def rollback_done(self) -> None:
        with self._lock:
            self._expect(TxnState.ON_ROLLBACK, "finish its rollback")
            self._state = TxnState.ROLLBACKED
            fns = self._take_cleanups()
        _run(fns)

    # -- expiry and cleanup ---------------------------------------------------------------------------------------
    def is_expired_or_done(self, time_tick: int) -> bool:
        """Whether the manager may forget it: expired at ``time_tick``, committed or rolled back.

        ON_COMMIT and ON_ROLLBACK sessions are kept until they finish or expire, so cleanups never run early.
        """
        with self._lock:
            return self._is_expired_or_done(time_tick)

    def _is_expired_or_done(self, time_tick: int) -> bool:
        return (
            self._state is TxnState.COMMITTED
            or self._state is TxnState.ROLLBACKED
            or self.expired_time_tick <= time_tick
        )

    def register_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once when the transaction ends (committed, rolled back or expired and cleaned up)."""
        with self._lock:
            self._cleanups.append(fn)

    def cleanup(self) -> None:
        """Run the cleanups not run yet (the manager calls it when it forgets the session)."""
        with self._lock:
            fns = self._take_cleanups()
        _run(fns)

    def _take_cleanups(self) -> list[Callable[[], None]]:
        # Cleanups run outside the lock: they may call back into the session or the manager.
        fns, self._cleanups = self._cleanups, []
        return fns

    def _check_expired(self, time_tick: int) -> None:
        if self._expired or self._is_expired_or_done(time_tick):
            self._expired = True
            raise TxnExpiredError(
                f"txn {self.txn_id} expired or finished (state {self._state.name}, time tick {time_tick})"
            )

    def _expect(self, state: TxnState, what: str) -> None:
        if self._state is not state:
            raise InvalidTxnStateError(f"txn {self.txn_id} cannot {what} in state {self._state.name}")

    def __repr__(self) -> str:
        return f"TxnSession(id={self.txn_id}, state={self._state.name}, in_flight={self._in_flight})"


def _run(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        fn()
