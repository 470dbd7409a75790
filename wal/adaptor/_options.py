"""Build options the adaptor consumes (every backend accepts them); the rest go to the backend's builder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._checks import seconds
from ..errors import InvalidArgumentError
from ..interceptors import InterceptorBuilder

__all__ = ["MIN_TIME_TICK_INTERVAL", "MIN_TXN_KEEPALIVE", "AdaptorOptions", "split_options"]

MIN_TXN_KEEPALIVE = 0.001  # seconds: a keepalive is stored in whole milliseconds (TxnContext.keepalive_ms)
MIN_TIME_TICK_INTERVAL = 0.001  # seconds: the ticks' physical part counts milliseconds


@dataclass(frozen=True, slots=True)
class AdaptorOptions:
    write_ahead_buffer_bytes: int = 64 * 1024 * 1024
    write_ahead_buffer_keepalive: float = 30.0
    time_tick_interval: float = 0.2
    txn_keepalive: float = 10.0
    interceptors: tuple[InterceptorBuilder, ...] = ()
    max_inflight_appends: int = 4096
    max_append_batch: int = 1024
    # How long close() waits for open transactions to end (commit or rollback from other threads) before it closes
    # anyway, abandoning them (never delivered). 0: no wait.
    txn_close_timeout: float = 3.0


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InvalidArgumentError(f"build option {name} must be a positive int, got {v!r}")
    return v


def split_options(options: Mapping[str, Any]) -> tuple[AdaptorOptions, dict[str, Any]]:
    """Validate and take the adaptor's options out of ``options``; return them and the backend's remainder."""
    rest = dict(options)
    kw: dict[str, Any] = {}
    if "write_ahead_buffer_bytes" in rest:
        kw["write_ahead_buffer_bytes"] = _positive_int(
            "write_ahead_buffer_bytes", rest.pop("write_ahead_buffer_bytes")
        )
    for name in ("write_ahead_buffer_keepalive", "time_tick_interval", "txn_keepalive"):
        if name in rest:
            kw[name] = seconds(rest.pop(name), f"build option {name}")
    if "txn_close_timeout" in rest:
        kw["txn_close_timeout"] = seconds(rest.pop("txn_close_timeout"), "build option txn_close_timeout", zero=True)
    if kw.get("txn_keepalive", 1.0) < MIN_TXN_KEEPALIVE:
        # The default keepalive of every begin_txn, which refuses one below 1 ms: accepted here, every begin_txn
        # of every WAL of the opener then failed, far from the mistake.
        raise InvalidArgumentError(f"build option txn_keepalive must be at least 1 ms, got {kw['txn_keepalive']!r}")
    if kw.get("time_tick_interval", 1.0) < MIN_TIME_TICK_INTERVAL:
        # Ticks are milliseconds apart at best; at 1 us an idle WAL kept a core busy making ticks (review 13b).
        raise InvalidArgumentError(
            f"build option time_tick_interval must be at least 1 ms, got {kw['time_tick_interval']!r}"
        )
    for name in ("max_inflight_appends", "max_append_batch"):
        if name in rest:
            kw[name] = _positive_int(name, rest.pop(name))
    if "interceptors" in rest:
        ics = rest.pop("interceptors")
        if ics is None:
            ics = ()
        if not isinstance(ics, list | tuple):
            raise InvalidArgumentError(f"build option interceptors must be a list of builders, got {ics!r}")
        for b in ics:
            if not isinstance(b, InterceptorBuilder):
                raise InvalidArgumentError(f"interceptor builder {b!r} has no build(param) method")
        kw["interceptors"] = tuple(ics)
    return AdaptorOptions(**kw), rest
