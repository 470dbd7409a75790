"""Where a scanner starts (:class:`DeliverPolicy`) and what it keeps (:class:`DeliverFilter`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import InvalidArgumentError
from .message import ImmutableMessage, MessageID, MessageType

__all__ = ["DeliverFilter", "DeliverFilterKind", "DeliverPolicy", "DeliverPolicyKind", "filter_func"]


class DeliverPolicyKind(enum.IntEnum):
    ALL = 1
    LATEST = 2
    START_FROM = 3
    START_AFTER = 4


@dataclass(frozen=True, slots=True)
class DeliverPolicy:
    """The first message a scanner delivers.

    - ``all()``: from the oldest message still kept.
    - ``latest()``: only messages appended after the scanner opened (its start is fixed when ``read`` returns); a
      transaction begun before is not delivered, even when committed after (its begin was not read).
    - ``start_from(id)``: from ``id`` inclusive; ``start_after(id)``: from the message after ``id``.
    """

    kind: DeliverPolicyKind
    message_id: MessageID | None = None

    def __post_init__(self) -> None:
        # Built directly (the class is public), a policy was checked nowhere: a kind that is no DeliverPolicyKind,
        # or start_from without an ID, failed only in read() with "needs a MessageID, got None", and latest() with
        # an ID carried it along unused.
        kind = _kind(DeliverPolicyKind, self.kind, "deliver policy")
        object.__setattr__(self, "kind", kind)
        needs_id = kind in (DeliverPolicyKind.START_FROM, DeliverPolicyKind.START_AFTER)
        if needs_id and not isinstance(self.message_id, MessageID):
            raise InvalidArgumentError(f"{kind.name.lower()} needs a MessageID, got {type(self.message_id).__name__}")
        if not needs_id and self.message_id is not None:
            raise InvalidArgumentError(f"{kind.name.lower()} takes no message ID, got {self.message_id!r}")

    @classmethod
    def all(cls) -> DeliverPolicy:
        """From the first message the backend still has."""
        return cls(DeliverPolicyKind.ALL)

    @classmethod
    def latest(cls) -> DeliverPolicy:
        """Only messages appended after ``read()`` returns: a txn begun before it is not delivered."""
        return cls(DeliverPolicyKind.LATEST)

    @classmethod
    def start_from(cls, message_id: MessageID) -> DeliverPolicy:
        """From ``message_id`` on, that message included."""
        return cls(DeliverPolicyKind.START_FROM, message_id)

    @classmethod
    def start_after(cls, message_id: MessageID) -> DeliverPolicy:
        """From the message after ``message_id``."""
        return cls(DeliverPolicyKind.START_AFTER, message_id)


class DeliverFilterKind(enum.IntEnum):
    TIME_TICK_GT = 1
    TIME_TICK_GTE = 2
    MESSAGE_TYPE = 3


# A transaction's time tick is its commit's: body messages are never cut by time, so that a reader resuming from
# a last-confirmed ID with a time-tick filter gets whole transactions.
_TIME_FILTERED_IN_TXN = frozenset({MessageType.COMMIT_TXN, MessageType.TXN})


@dataclass(frozen=True, slots=True)
class DeliverFilter:
    """A predicate on delivered messages; a scanner keeps the messages that pass all its filters.

    - ``time_tick_gt(t)`` / ``time_tick_gte(t)``: apply to messages outside a transaction and to commits (and
      to whole ``TXN`` messages); other transaction members always pass.
    - ``message_type(*types)``: keeps those types; system types always pass, and naming one raises. In a ``TXN``
      message it keeps the body messages of those types: a committed txn none of whose body matches is still
      delivered, as a ``TXN`` with no ``messages`` (as in Milvus, see ``message_type``).
    """

    kind: DeliverFilterKind
    time_tick: int = 0
    message_types: frozenset[MessageType] = frozenset()

    def __post_init__(self) -> None:
        # Built directly, a filter was checked nowhere: an unknown kind kept every message, a str time tick raised a
        # bare TypeError in the reader's recv, a system type in message_types was accepted.
        kind = _kind(DeliverFilterKind, self.kind, "deliver filter")
        object.__setattr__(self, "kind", kind)
        _check_tt(self.time_tick)
        if kind is DeliverFilterKind.MESSAGE_TYPE:
            if isinstance(self.message_types, str | bytes) or not isinstance(self.message_types, Iterable):
                raise InvalidArgumentError(f"message_types must be a set of MessageType, got {self.message_types!r}")
            object.__setattr__(self, "message_types", _check_types(self.message_types))
        elif self.message_types:
            raise InvalidArgumentError(f"a {kind.name.lower()} filter takes no message types")

    @classmethod
    def time_tick_gt(cls, time_tick: int) -> DeliverFilter:
        """Keep messages (outside a txn) and commits whose time tick is above ``time_tick``."""
        return cls(DeliverFilterKind.TIME_TICK_GT, time_tick=time_tick)

    @classmethod
    def time_tick_gte(cls, time_tick: int) -> DeliverFilter:
        """Keep messages (outside a txn) and commits whose time tick is at or above ``time_tick``."""
        return cls(DeliverFilterKind.TIME_TICK_GTE, time_tick=time_tick)

    @classmethod
    def message_type(cls, *types: MessageType) -> DeliverFilter:
        """Keep messages of these types (and every system type, which this filter never drops).

        ``TXN`` is a system type: a committed transaction is always delivered, with only the body messages of these
        types, so possibly with none (``m.messages == ()``). Kept on purpose, as in Milvus (whose scanner filters
        body messages before its txn buffer builds the TXN from the commit): the empty TXN says the commit happened,
        at its ID and time tick, a checkpoint like any delivered message; a txn committed with no body comes empty
        too. Skip ``TXN`` messages whose ``messages`` is empty where only data matters.
        """
        return cls(DeliverFilterKind.MESSAGE_TYPE, message_types=_check_types(types))

    @property
    def is_time_tick_filter(self) -> bool:
        """A filter on time ticks (``time_tick_gt``/``gte``), not on message types (Milvus's ``IsTimeTickFilter``)."""
        return self.kind is not DeliverFilterKind.MESSAGE_TYPE

    def matches(self, msg: ImmutableMessage) -> bool:
        """Whether ``msg`` passes (system messages always pass a type filter)."""
        if self.kind is DeliverFilterKind.MESSAGE_TYPE:
            return msg.message_type.is_system or msg.message_type in self.message_types
        if msg.txn_ctx is not None and msg.message_type not in _TIME_FILTERED_IN_TXN:
            return True
        if self.kind is DeliverFilterKind.TIME_TICK_GT:
            return msg.time_tick > self.time_tick
        return msg.time_tick >= self.time_tick


_K = TypeVar("_K", DeliverPolicyKind, DeliverFilterKind)


def _kind(cls: type[_K], value: Any, what: str) -> _K:
    try:
        return cls(value)
    except (ValueError, TypeError):
        raise InvalidArgumentError(f"unknown {what} kind {value!r}") from None


def _check_tt(tt: int) -> int:
    if isinstance(tt, bool) or not isinstance(tt, int) or tt < 0:
        raise InvalidArgumentError(f"a time tick is a non-negative int, got {tt!r}")
    return tt


def _check_types(types: Iterable[Any]) -> frozenset[MessageType]:
    out = set()
    for t in types:
        try:
            mt = MessageType(t)
        except (ValueError, TypeError) as e:  # keep the promise that every library error is a WALError
            raise InvalidArgumentError(f"unknown message type {t!r}") from e
        if mt.is_system:
            raise InvalidArgumentError(f"cannot filter on system message type {mt.name}: it is always delivered")
        out.add(mt)
    if not out:
        raise InvalidArgumentError("message_type filter needs at least one type")
    return frozenset(out)


def filter_func(filters: Iterable[DeliverFilter]) -> Callable[[ImmutableMessage], bool]:
    """One predicate that ANDs ``filters`` (always true when there are none)."""
    fs = tuple(filters)
    if not fs:
        return lambda _m: True
    if len(fs) == 1:
        return fs[0].matches
    return lambda m: all(f.matches(m) for f in fs)
