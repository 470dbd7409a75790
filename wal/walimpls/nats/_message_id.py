"""The nats backend's message ID: the JetStream stream sequence of the message."""

from __future__ import annotations

from ...message import IntMessageID

__all__ = ["NatsMessageID"]


class NatsMessageID(IntMessageID):
    """A stream sequence. Sequences of one channel's data subject grow but are not contiguous (fence records and
    purges leave gaps), which is all the WAL needs: a total order.
    """

    __slots__ = ()
    WAL_NAME = "nats"
    MAX_VALUE = (1 << 64) - 1  # JetStream sequences are unsigned 64-bit
