"""The queue of messages a scanner has released and not yet handed to its consumer."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ..message import ImmutableMessage

__all__ = ["PendingQueue"]


class PendingQueue:
    """FIFO of ready messages with their total estimated size (for back-pressure). Not thread-safe."""

    __slots__ = ("_bytes", "_q")

    def __init__(self) -> None:
        self._q: deque[tuple[ImmutableMessage, int]] = deque()
        self._bytes = 0

    def add(self, msgs: Iterable[ImmutableMessage]) -> None:
        q = self._q
        for m in msgs:
            size = m.estimate_size()
            q.append((m, size))
            self._bytes += size

    def add_one(self, msg: ImmutableMessage) -> None:
        size = msg.estimate_size()
        self._q.append((msg, size))
        self._bytes += size

    def next(self) -> ImmutableMessage:
        """The head, left in place; ``IndexError`` when empty."""
        return self._q[0][0]

    def unsafe_advance(self) -> None:
        """Drop the head (call only after :meth:`next` returned it)."""
        _, size = self._q.popleft()
        self._bytes -= size

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)
