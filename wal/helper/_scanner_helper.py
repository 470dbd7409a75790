"""Scanner bookkeeping shared by backends: cancellation, the done event, the final error, idempotent close."""

from __future__ import annotations

import threading

from ..walimpls import ScannerImpls

__all__ = ["PullScanner", "ScannerHelper"]


class ScannerHelper:
    """The life of a scanner whose messages come from a producer thread (Milvus ``helper.ScannerHelper``).

    ``close()`` sets :attr:`cancel` first, then waits until the producer calls :meth:`finish`, and returns the
    error it finished with. A close is not an error: producers that stop because of ``cancel`` finish with None.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self.cancel = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None

    @property
    def name(self) -> str:
        return self._name

    def done(self) -> threading.Event:
        return self._done

    def error(self, timeout: float | None = 0.0) -> BaseException | None:
        """The producer's final error (None while it runs, or when it stopped cleanly).

        Returns at once by default, as :meth:`ScannerImpls.error` must; pass a ``timeout`` (None = for ever) to wait
        for the producer to finish first, as Milvus's blocking ``Error()`` does.
        """
        if timeout is None or timeout > 0:
            self._done.wait(timeout)
        return self._error

    def finish(self, error: BaseException | None) -> None:
        """Called once by the producer when it stops."""
        if self._done.is_set():
            return
        self._error = error
        self._done.set()

    def close(self, timeout: float | None = None) -> BaseException | None:
        """Cancel, then wait (up to ``timeout``) for the producer's :meth:`finish`; returns its error."""
        self.cancel.set()
        self._done.wait(timeout)
        return self._error


class PullScanner(ScannerImpls):
    """Base of scanners that read in the caller's thread (no producer thread): ``close`` finishes at once.

    Subclasses implement ``recv`` and call :meth:`_fail` when they hit an error that ends the scanner; they wake
    their own waiters in :meth:`_on_close`.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    def done(self) -> threading.Event:
        return self._done

    def error(self) -> BaseException | None:
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    def _fail(self, error: BaseException) -> BaseException:
        if not self._done.is_set():
            self._error = error
            self._closed = True
            self._done.set()
            self._on_close()
        return error

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._done.set()
        self._on_close()

    def _on_close(self) -> None:
        """Wake threads blocked in ``recv`` (override)."""
