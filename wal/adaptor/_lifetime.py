"""Working/stopped state plus the calls in flight, so that close can wait for them (Milvus ``Lifetime``).

Why no lock and a set of per-call tokens: a Ctrl-C (``KeyboardInterrupt``) can be raised between any two
bytecodes of the main thread, and also inside ``Condition.__enter__``/``__exit__`` (Python code): with a counter
under a condition, one landing after the increment and before the ``try`` left the call counted, and one landing
inside the condition left its lock held; either way ``close()`` then waited for ever. Here a call is registered
and removed by one C call each (``set.add``, ``set.discard``: a no-op if it was never added), both inside the
``try``, and nothing takes a lock; ``wait`` polls. A call that registers after ``stop`` sees the flag and backs
out, and ``stop`` sets the flag before anyone waits, so no call slips past a close.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ShutdownError

__all__ = ["Lifetime"]

_POLL = 0.01
"""How often ``wait`` looks at the calls in flight (seconds): only a close waits, and only for calls in flight."""


class Lifetime:
    def __init__(self, what: str) -> None:
        self._what = what
        self._stopped = False
        self._first = threading.Lock()  # taken by the first stop(): its caller owns the close
        self._calls: set[object] = set()

    @property
    def stopped(self) -> bool:
        return self._stopped

    @contextmanager
    def call(self) -> Iterator[None]:
        """Run a call; raises :class:`ShutdownError` once stopped."""
        token = object()
        try:
            self._calls.add(token)  # registered first, then the flag read: stop() sets it before waiting
            if self._stopped:
                raise ShutdownError(f"{self._what} is closed")
            yield
        finally:
            self._calls.discard(token)

    def stop(self) -> bool:
        """Refuse new calls; True for the first caller only (who then owns the close)."""
        self._stopped = True
        return self._first.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no call is in flight (False if ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._calls:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True
