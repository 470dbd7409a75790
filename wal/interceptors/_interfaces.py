"""What an interceptor is, and the optional capabilities the chain looks for.

An interceptor wraps the append path of one WAL (Milvus ``interceptors/interceptor.go``). Appends reach the chain
in batches (the adaptor's dispatcher drains queued appends and the backend stores each batch as one group
commit), so an interceptor may implement :meth:`InterceptorWithBatch.do_append_batch` natively; one that only
implements :meth:`Interceptor.do_append` is called once per message and still works.

Capabilities are runtime-checkable protocols, so a user interceptor is any object with the right methods: no base
class to inherit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._types import PChannelInfo
from ..message import MessageID, MutableMessage

if TYPE_CHECKING:
    from .._interfaces import WAL

__all__ = [
    "AppendFunc",
    "AppendOutcome",
    "BatchAppendFunc",
    "Interceptor",
    "InterceptorBuildParam",
    "InterceptorBuilder",
    "InterceptorWithBatch",
    "InterceptorWithGracefulClose",
    "InterceptorWithName",
    "InterceptorWithReady",
]

AppendFunc = Callable[[MutableMessage], MessageID]
"""The rest of the chain for one message: returns its ID or raises."""

AppendOutcome = MessageID | BaseException
"""Per-message result of a batch: the ID, or the exception that failed that message alone."""

BatchAppendFunc = Callable[[Sequence[MutableMessage]], list[AppendOutcome]]
"""The rest of the chain for a batch: one outcome per message, in order."""


@runtime_checkable
class Interceptor(Protocol):
    def do_append(self, msg: MutableMessage, next: AppendFunc) -> MessageID:
        """Do something around ``next(msg)`` (stamp the message, refuse it, retry it...)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class InterceptorWithBatch(Protocol):
    def do_append_batch(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        """The batch form of ``do_append``: must call ``next`` with messages in the order given."""
        ...


@runtime_checkable
class InterceptorWithReady(Protocol):
    def ready(self) -> threading.Event:
        """Set when the interceptor can take appends; appends wait for it (reads never do)."""
        ...


@runtime_checkable
class InterceptorWithGracefulClose(Protocol):
    def graceful_close(self) -> None:
        """Called before the WAL starts refusing appends (e.g. to let open transactions finish)."""
        ...


@runtime_checkable
class InterceptorWithName(Protocol):
    """An interceptor with a name gets its time inside the chain measured (``ChainedInterceptor.timings``)."""

    @property
    def name(self) -> str: ...


@dataclass
class InterceptorBuildParam:
    """What a builder gets to build one WAL's interceptor.

    ``wal`` is completed with the WAL once it is constructed, so an interceptor may call back into it (never from
    inside ``do_append``: the dispatcher thread would wait for itself).
    """

    channel: PChannelInfo
    wal: Future[WAL] = field(default_factory=Future)
    initialized_time_tick: int = 0
    initialized_message_id: MessageID | None = None
    write_ahead_buffer: Any = None
    mvcc_manager: Any = None
    ack_manager: Any = None
    txn_manager: Any = None
    clock: Any = None
    options: Any = None


@runtime_checkable
class InterceptorBuilder(Protocol):
    """Builds the interceptor of each WAL; shared by every WAL of an opener, so it must be thread-safe."""

    def build(self, param: InterceptorBuildParam) -> Interceptor: ...
