"""Working/stopped state plus the calls in flight, so that close can wait for them (Milvus ``Lifetime``).

Why a set of per-call tokens rather than a counter: a Ctrl-C (``KeyboardInterrupt``) can be raised between any
two bytecodes of the main thread. With a counter, one landing after the increment and before the ``try`` that
undoes it leaves the call counted for ever, and ``close()`` then waits for ever. Here the call is registered
inside the ``try`` and removed in one C call (``set.discard``, a no-op if it was never added), so no point of an
interrupt leaves a finished call registered; a notify lost to an interrupt only delays ``wait`` by one poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ShutdownError

__all__ = ["Lifetime"]

_POLL = 0.1
"""``wait`` re-checks at least this often (seconds): a notify cut short by an interrupt is not waited for."""


class Lifetime:
    def __init__(self, what: str) -> None:
        self._what = what
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False
        self._calls: set[object] = set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _enter(self, token: object) -> None:
        """Register a call; raises :class:`ShutdownError` once stopped."""
        with self._cond:
            if self._stopped:
                raise ShutdownError(f"{self._what} is closed")
            self._calls.add(token)

    def _leave(self, token: object) -> None:
        self._calls.discard(token)  # first, in one C call: nothing after it can leave the call registered
        if not self._calls:
            with self._cond:
                self._cond.notify_all()

    @contextmanager
    def call(self) -> Iterator[None]:
        token = object()
        try:
            self._enter(token)
            yield
        finally:
            self._leave(token)

    def stop(self) -> bool:
        """Refuse new calls; True for the first caller only (who then owns the close)."""
        with self._cond:
            first = not self._stopped
            self._stopped = True
            return first

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no call is in flight (False if ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._calls:
                left = _POLL if deadline is None else min(deadline - time.monotonic(), _POLL)
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
