"""Time ticks: the hybrid clock, the ack manager (last-confirmed IDs) and per-vchannel MVCC."""

from ._ack import AckDetail as AckDetail
from ._ack import AckDetails as AckDetails
from ._ack import Acker as Acker
from ._ack import AckManager as AckManager
from ._ack import LastConfirmedManager as LastConfirmedManager
from ._clock import HybridClock as HybridClock
from ._mvcc import MVCCManager as MVCCManager

__all__ = [
    "AckDetail",
    "AckDetails",
    "AckManager",
    "Acker",
    "HybridClock",
    "LastConfirmedManager",
    "MVCCManager",
]
