"""Helpers for backend authors (milvus-tests.md §J) and the conformance kit's ability to fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from wal.errors import ShutdownError
from wal.helper import PullScanner, ScannerHelper
from wal.helper.conformance import ConformanceError, WALImplsConformance
from wal.message import ImmutableMessage, MessageID, MutableMessage
from wal.walimpls import OpenOption, WALImpls
from wal.walimpls.memory import MemoryOpener, MemoryOpenerBuilder
from wal.walimpls.memory._backend import MemoryWAL


def test_scanner_helper_close_waits_for_finish() -> None:
    h = ScannerHelper("test")
    assert h.name == "test" and not h.done().is_set() and not h.cancel.is_set()
    err = RuntimeError("E")

    def producer() -> None:
        h.cancel.wait(5)
        time.sleep(0.05)
        assert not h.done().is_set()
        h.finish(err)

    t = threading.Thread(target=producer)
    t.start()
    assert h.close(5) is err
    assert h.cancel.is_set() and h.done().is_set() and h.error() is err
    t.join()


def test_pull_scanner_bookkeeping() -> None:
    class S(PullScanner):
        def recv(self, timeout: float | None = None) -> ImmutableMessage:
            raise ShutdownError("closed")

    s = S("n")
    assert s.name == "n" and not s.done().is_set() and s.error() is None
    s.close()
    s.close()
    assert s.done().is_set() and s.error() is None and s.closed
    f = S("f")
    e = RuntimeError("x")
    assert f._fail(e) is e and f.error() is e and f.done().is_set()


def test_conformance_kit_passes_on_memory() -> None:
    WALImplsConformance(MemoryOpenerBuilder(), message_count=100, latest_quiet_seconds=0.3).run()


class _LosingWAL(MemoryWAL):
    """Drops every 7th message while acknowledging it: the kit must notice."""

    n = 0

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        out = []
        for m in msgs:
            _LosingWAL.n += 1
            if _LosingWAL.n % 7 == 0:
                out.append(super().append_batch([m])[0])
                self._log.messages.pop()  # acknowledged, then lost
            else:
                out.append(super().append_batch([m])[0])
        return out


class _LosingOpener(MemoryOpener):
    def open(self, opt: OpenOption) -> WALImpls:
        w = super().open(opt)
        w.__class__ = _LosingWAL
        return w


class _LosingBuilder(MemoryOpenerBuilder):
    def build(self, **options: Any) -> MemoryOpener:
        return _LosingOpener()


def test_conformance_kit_fails_on_a_lossy_backend() -> None:
    with pytest.raises(ConformanceError):
        WALImplsConformance(_LosingBuilder(), message_count=30, latest_quiet_seconds=0.1, wait_timeout=2.0).run()
