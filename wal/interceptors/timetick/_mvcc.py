"""Per-vchannel MVCC timestamps: the newest time tick a reader must wait for to see its own writes."""

from __future__ import annotations

import threading
from typing import Protocol

from ...message import MessageType, TxnContext

__all__ = ["MVCCManager"]


class _Stamped(Protocol):
    @property
    def time_tick(self) -> int: ...
    @property
    def message_type(self) -> MessageType: ...
    @property
    def vchannel(self) -> str: ...
    @property
    def txn_ctx(self) -> TxnContext | None: ...


class MVCCManager:
    """Tracks the pchannel's last time tick and, above it, each vchannel's newest written tick.

    ``get_mvcc_of_vchannel(v)`` is ``(tt, confirmed)``: confirmed means a time tick covers it (every write up to
    ``tt`` is visible to readers); unconfirmed means ``v`` has a write at ``tt`` that no tick has covered yet.
    A message for all vchannels (``vchannel == ""``) counts for every vchannel.
    """

    __slots__ = ("_all", "_lock", "_pchannel_tt", "_vchannels")

    def __init__(self, initial_time_tick: int) -> None:
        self._lock = threading.Lock()
        self._pchannel_tt = initial_time_tick
        self._vchannels: dict[str, int] = {}
        self._all = 0

    def get_mvcc_of_vchannel(self, vchannel: str) -> tuple[int, bool]:
        with self._lock:
            tt = max(self._vchannels.get(vchannel, 0), self._all)
            if tt > self._pchannel_tt:
                return tt, False
            return self._pchannel_tt, True

    def update_mvcc(self, msg: _Stamped) -> None:
        tt = msg.time_tick
        with self._lock:
            if tt <= self._pchannel_tt:
                return
            mt = msg.message_type
            if mt is MessageType.TIME_TICK:
                self._pchannel_tt = tt
                if self._all <= tt:
                    self._all = 0
                vcs = self._vchannels
                if vcs:  # usually every write is covered by the tick: no comprehension then
                    self._vchannels = {v: t for v, t in vcs.items() if t > tt} if max(vcs.values()) > tt else {}
                return
            if msg.txn_ctx is not None and mt is not MessageType.COMMIT_TXN:
                return  # a txn becomes visible at its commit
            v = msg.vchannel
            if not v:
                if tt > self._all:
                    self._all = tt
            elif tt > self._vchannels.get(v, 0):
                self._vchannels[v] = tt

    def update_time_tick(self, tt: int) -> None:
        """:meth:`update_mvcc` for a TIME_TICK at ``tt`` (the per-batch tick: no message built for it)."""
        with self._lock:
            if tt <= self._pchannel_tt:
                return
            self._pchannel_tt = tt
            if self._all <= tt:
                self._all = 0
            vcs = self._vchannels
            if vcs:
                self._vchannels = {v: t for v, t in vcs.items() if t > tt} if max(vcs.values()) > tt else {}

    @property
    def pchannel_time_tick(self) -> int:
        return self._pchannel_tt
