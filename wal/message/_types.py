"""Message types, with the numbers Milvus uses on the wire so that logs stay comparable."""

from __future__ import annotations

import enum

__all__ = ["SYSTEM_TYPES", "MessageType"]


class MessageType(enum.IntEnum):
    """The kind of a message. Numbers match Milvus's ``messages.proto``.

    System types (:attr:`is_system`) are produced by the WAL itself; clients may append ``BEGIN_TXN``,
    ``COMMIT_TXN`` and ``ROLLBACK_TXN`` to drive a transaction, and type filters never drop system types.
    """

    UNKNOWN = 0
    TIME_TICK = 1
    INSERT = 2
    DELETE = 3
    FLUSH = 4
    CREATE_COLLECTION = 5
    DROP_COLLECTION = 6
    CREATE_PARTITION = 7
    DROP_PARTITION = 8
    MANUAL_FLUSH = 9
    CREATE_SEGMENT = 10
    IMPORT = 11
    SCHEMA_CHANGE = 12
    BEGIN_TXN = 900
    COMMIT_TXN = 901
    ROLLBACK_TXN = 902
    TXN = 999

    @property
    def is_system(self) -> bool:
        """True for the types the WAL manages itself: time ticks and the four transaction types."""
        return self in SYSTEM_TYPES

    @property
    def is_valid(self) -> bool:
        """Not ``UNKNOWN`` (what an unparsable stored type reads as)."""
        return self is not MessageType.UNKNOWN

    def marshal(self) -> str:
        """The decimal form used in the ``_t`` property."""
        return str(int(self))

    @classmethod
    def unmarshal(cls, data: str) -> MessageType:
        """Parse the decimal form; anything unparsable or unknown reads as ``UNKNOWN`` (as Milvus does)."""
        try:
            return cls(int(data))
        except ValueError:
            return cls.UNKNOWN


SYSTEM_TYPES: frozenset[MessageType] = frozenset(
    {
        MessageType.TIME_TICK,
        MessageType.BEGIN_TXN,
        MessageType.COMMIT_TXN,
        MessageType.ROLLBACK_TXN,
        MessageType.TXN,
    }
)
