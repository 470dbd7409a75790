"""Message factories shared by the utility, timetick and txn unit tests."""

from __future__ import annotations

import itertools

from wal.message import ImmutableMessage, IntMessageID, MessageType, TxnContext

_ids = itertools.count(1_000_000)


class UID(IntMessageID):
    WAL_NAME = "test-util"


def data(tt: int, size: int = 0, *, mid: int | None = None, vchannel: str = "v1",
         txn: TxnContext | None = None, mtype: MessageType = MessageType.INSERT) -> ImmutableMessage:
    return ImmutableMessage(
        message_id=UID(next(_ids) if mid is None else mid),
        message_type=mtype,
        payload=b"x" * size,
        vchannel=vchannel,
        time_tick=tt,
        txn_ctx=txn,
    )


def tick(tt: int, persisted: bool = True, *, mid: int | None = None) -> ImmutableMessage:
    return ImmutableMessage(
        message_id=UID(next(_ids) if mid is None else mid),
        message_type=MessageType.TIME_TICK,
        payload=b"",
        time_tick=tt,
        not_persisted=not persisted,
    )


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.t += 10``)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
