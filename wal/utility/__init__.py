"""Scanner-side data structures: reorder buffer, txn buffer and the deadline heap of open txns, pending queue and
the write-ahead buffer."""

from ._deadline_heap import DeadlineHeap as DeadlineHeap
from ._errors import DuplicateMessageError as DuplicateMessageError
from ._errors import EvictedError as EvictedError
from ._errors import TimeTickViolationError as TimeTickViolationError
from ._message_heap import MessageHeap as MessageHeap
from ._pending_queue import PendingQueue as PendingQueue
from ._reorder_buffer import ReorderBuffer as ReorderBuffer
from ._txn_buffer import TxnBuffer as TxnBuffer
from ._wab_queue import WABQueue as WABQueue
from ._wab_queue import WABSnapshot as WABSnapshot
from ._write_ahead_buffer import WriteAheadBuffer as WriteAheadBuffer
from ._write_ahead_buffer import WriteAheadBufferReader as WriteAheadBufferReader

__all__ = [
    "DeadlineHeap",
    "DuplicateMessageError",
    "EvictedError",
    "MessageHeap",
    "PendingQueue",
    "ReorderBuffer",
    "TimeTickViolationError",
    "TxnBuffer",
    "WABQueue",
    "WABSnapshot",
    "WriteAheadBuffer",
    "WriteAheadBufferReader",
]
