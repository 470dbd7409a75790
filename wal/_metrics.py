"""Optional Prometheus metrics: real collectors when ``prometheus_client`` is importable, no-ops otherwise.

The library must never depend on ``prometheus_client``: a program that does not install it pays one attribute
lookup and one empty call per update. Call sites stay one line::

    from wal._metrics import metrics
    metrics.appends.inc(len(batch))
    metrics.append_bytes.inc(nbytes)
    metrics.fsync_seconds.observe(elapsed)

Collectors register in ``prometheus_client``'s default registry (what ``start_http_server`` and most exporters
serve). Set ``WAL_METRICS=0`` in the environment to keep them off even when the package is installed.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "metrics"]

# Appends and fsyncs take micro- to milliseconds; scanner lag spans milliseconds to minutes.
_FSYNC_BUCKETS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)
_LAG_BUCKETS = (1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0)


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def observe(self, amount: float) -> None: ...


class _Noop:
    """Stands in for every collector when metrics are off."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NOOP = _Noop()


class Metrics:
    """The library's collectors. ``enabled`` says whether they are real.

    ``registry`` (a ``prometheus_client.CollectorRegistry``) defaults to the global one; tests pass their own so
    that several instances can coexist.
    """

    appends: Counter
    append_bytes: Counter
    fsync_seconds: Histogram
    scanner_lag_seconds: Histogram
    segments: Gauge

    def __init__(self, enabled: bool | None = None, registry: Any = None) -> None:
        prom = _import_prometheus() if enabled is not False else None
        if enabled and prom is None:
            raise RuntimeError("metrics requested but prometheus_client is not importable")
        self.enabled = prom is not None
        self.registry: Any = None
        if prom is None:
            self.appends = self.append_bytes = _NOOP
            self.fsync_seconds = self.scanner_lag_seconds = _NOOP
            self.segments = _NOOP
            return
        reg = registry if registry is not None else prom.REGISTRY
        self.registry = reg
        self.appends = prom.Counter("wal_appends", "Messages appended (acknowledged by the backend).", registry=reg)
        self.append_bytes = prom.Counter(
            "wal_append_bytes", "Payload bytes of the messages appended (headers and properties not counted).",
            registry=reg,
        )
        self.fsync_seconds = prom.Histogram(
            "wal_fsync_seconds", "Duration of each fdatasync/fsync of a log file.", buckets=_FSYNC_BUCKETS,
            registry=reg,
        )
        self.scanner_lag_seconds = prom.Histogram(
            "wal_scanner_lag_seconds", "Time between a message's append and its delivery by a scanner.",
            buckets=_LAG_BUCKETS, registry=reg,
        )
        self.segments = prom.Gauge("wal_segments", "Segment files currently kept.", registry=reg)


def _import_prometheus() -> Any:
    if os.environ.get("WAL_METRICS", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import prometheus_client
    except ImportError:
        return None
    return prometheus_client


metrics = Metrics()
