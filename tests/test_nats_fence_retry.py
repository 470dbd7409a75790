"""Opening a channel fences it with a publish; on a replicated stream just created, that publish can find no
stream leader yet ("no responders"). Nothing is stored then, so the fence is retried for a bounded time instead
of failing the open (seen once in CI on a 3-node cluster). No server needed: a fake JetStream context."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("nats")

import nats.errors
import nats.js.errors

from wal.walimpls.nats._naming import channel_names
from wal.walimpls.nats._options import NatsOptions
from wal.walimpls.nats._publisher import Publisher


class FakeJS:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.published: list[dict[str, str]] = []

    async def get_msg(self, stream: str, **kw: Any) -> Any:
        raise nats.js.errors.NotFoundError

    async def publish(self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(dict(headers or {}))
        return SimpleNamespace(seq=len(self.published))


def _publisher(js: FakeJS, request_timeout: float = 5.0) -> Publisher:
    names = channel_names("ch", "wal", "wal")
    return Publisher(js, names, NatsOptions(request_timeout=request_timeout), "ch", 1, "w1", False)


def test_fence_retries_while_no_stream_answers() -> None:
    js = FakeJS([nats.js.errors.NoStreamResponseError(), nats.errors.NoRespondersError()])
    pub = _publisher(js)
    asyncio.run(pub.fence(first=True))
    assert not js.failures and len(js.published) == 1  # stored once, after the two unanswered tries
    assert js.published[0]["Nats-Expected-Last-Subject-Sequence"] == "0"


def test_fence_gives_up_after_its_deadline() -> None:
    js = FakeJS([nats.js.errors.NoStreamResponseError() for _ in range(1000)])
    pub = _publisher(js, request_timeout=0.1)
    t0 = time.monotonic()
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        asyncio.run(pub.fence(first=True))
    assert time.monotonic() - t0 < 5 and not js.published


def test_other_publish_errors_are_not_retried() -> None:
    js = FakeJS([nats.errors.TimeoutError()])
    pub = _publisher(js)
    with pytest.raises(nats.errors.TimeoutError):
        asyncio.run(pub.fence(first=True))
    assert not js.published
