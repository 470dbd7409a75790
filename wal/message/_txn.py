"""Transaction context and states (Milvus ``message/txn.go``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["NON_TXN_ID", "TxnContext", "TxnState"]

NON_TXN_ID = -1


@dataclass(frozen=True, slots=True)
class TxnContext:
    """Identity and keepalive of a transaction; carried by its begin, body, commit and rollback messages.

    ``keepalive`` is in seconds and is stored with millisecond precision.
    """

    txn_id: int
    keepalive: float

    @property
    def keepalive_ms(self) -> int:
        """The keepalive as stored, in whole milliseconds."""
        return round(self.keepalive * 1000)

    def marshal(self) -> str:
        """The compact text form stored in a message's reserved properties."""
        from ._codec import encode_int

        return f"{encode_int(self.txn_id)}.{encode_int(self.keepalive_ms)}"

    @classmethod
    def unmarshal(cls, data: str) -> TxnContext:
        """Parse :meth:`marshal`'s form."""
        from ._codec import decode_int

        tid, _, ka = data.partition(".")
        return cls(txn_id=decode_int(tid), keepalive=decode_int(ka) / 1000.0)


class TxnState(enum.IntEnum):
    """Where a transaction session is (Milvus's states): open, committing, committed, rolling back, rolled back."""

    UNKNOWN = 0
    BEGIN = 1
    IN_FLIGHT = 2
    ON_COMMIT = 3
    COMMITTED = 4
    ON_ROLLBACK = 5
    ROLLBACKED = 6
