"""Working/stopped state plus a count of calls in flight, so that close can wait for them (Milvus ``Lifetime``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ShutdownError

__all__ = ["Lifetime"]


class Lifetime:
    def __init__(self, what: str) -> None:
        self._what = what
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False
        self._inflight = 0

    @property
    def stopped(self) -> bool:
        return self._stopped

    def add(self) -> None:
        """Enter a call; raises :class:`ShutdownError` once stopped."""
        with self._cond:
            if self._stopped:
                raise ShutdownError(f"{self._what} is closed")
            self._inflight += 1

    def done(self) -> None:
        with self._cond:
            self._inflight -= 1
            if self._inflight == 0:
                self._cond.notify_all()

    @contextmanager
    def call(self) -> Iterator[None]:
        self.add()
        try:
            yield
        finally:
            self.done()

    def stop(self) -> bool:
        """Refuse new calls; True for the first caller only (who then owns the close)."""
        with self._cond:
            first = not self._stopped
            self._stopped = True
            return first

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no call is in flight."""
        with self._cond:
            return self._cond.wait_for(lambda: self._inflight == 0, timeout)
