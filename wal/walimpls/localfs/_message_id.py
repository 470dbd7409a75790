"""localfs message IDs: a dense per-channel sequence (1, 2, 3...), so ordering is an integer compare."""

from __future__ import annotations

from typing import ClassVar

from ...message import IntMessageID

__all__ = ["WAL_NAME", "LocalFSMessageID", "fast_id"]

WAL_NAME = "localfs"


class LocalFSMessageID(IntMessageID):
    """The position of a message in its channel: its sequence number, starting at 1."""

    __slots__ = ()
    WAL_NAME: ClassVar[str] = WAL_NAME
    MAX_VALUE: ClassVar[int | None] = (1 << 64) - 1  # stored as an unsigned 64-bit int (``wal dump --from`` took more)


_new = object.__new__


def fast_id(value: int) -> LocalFSMessageID:
    """Build an ID read from disk without re-validating it (scans build one per message)."""
    mid: LocalFSMessageID = _new(LocalFSMessageID)
    mid.value = value
    return mid
