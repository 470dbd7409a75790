"""A private asyncio event loop on a daemon thread: nats-py is asyncio-only, the walimpls API is synchronous."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ...errors import ShutdownError, WALTimeoutError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for t in pending:
                    t.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise ShutdownError("nats: the opener is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait; a timeout cancels it and raises :class:`WALTimeoutError`."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("nats: blocking call made from the client's own event loop")
        f = self.submit(coro)
        try:
            return f.result(timeout)
        except concurrent.futures.TimeoutError:
            if f.done():  # the coroutine's own TimeoutError (a WALTimeoutError): not ours to relabel
                raise
            f.cancel()
            raise WALTimeoutError(f"nats: operation did not finish within {timeout}s") from None

    def call_soon(self, fn: Any, *args: Any) -> None:
        if not self._closed:
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop already closed
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
