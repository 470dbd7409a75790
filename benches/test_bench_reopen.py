"""Reopening a big log (1 GiB by default): the time from ``build()`` to a WAL ready to append."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import _bench_wal as walb
import pytest


@pytest.mark.benchmark(group="reopen")
@pytest.mark.parametrize("layer", ["full", "bare"])
def test_reopen_big_log(benchmark: Any, big_log: str, terms: Iterator[int], layer: str) -> None:
    """``full``: through the adaptor (recovery + first persisted time tick); ``bare``: the backend's recovery."""
    opened = walb.full_wal if layer == "full" else walb.bare_wal
    stack = ExitStack()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        stack.close()  # the previous round's WAL: closing is not what is measured
        return (), {}

    def open_() -> Any:
        return stack.enter_context(opened(big_log, term=next(terms), sync="always"))

    try:
        benchmark.extra_info["log_bytes"] = walb.du(big_log)
        w = benchmark.pedantic(open_, setup=setup, rounds=5, warmup_rounds=1)
        assert w is not None
    finally:
        stack.close()
