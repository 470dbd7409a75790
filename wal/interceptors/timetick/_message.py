"""Time-tick messages (Milvus ``timetick_message.go``): for every vchannel, no payload."""

from __future__ import annotations

from ...message import MessageID, MessageType, MutableMessage

__all__ = ["new_time_tick_message"]


def new_time_tick_message(time_tick: int, last_confirmed: MessageID | None, persisted: bool) -> MutableMessage:
    """A tick at ``time_tick``; ``last_confirmed`` None means "my own ID" (the first tick of a WAL).

    A not-persisted tick never reaches the backend: it only moves tailing readers forward, and its ID is its
    last-confirmed ID.
    """
    m = MutableMessage(MessageType.TIME_TICK, b"")
    m.with_time_tick(time_tick)
    if last_confirmed is None:
        m.with_last_confirmed_use_message_id()
    else:
        m.with_last_confirmed(last_confirmed)
    if not persisted:
        m.with_not_persisted()
    return m
