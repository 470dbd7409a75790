"""Message IDs: the backend's total order of a channel, and the registry that turns their text back into IDs.

A backend defines one :class:`MessageID` subclass and registers an unmarshaler for its name. IDs of one backend
compare with ``<``/``<=``/``==`` and hash; comparing IDs of two different backends is a programming error and
raises ``TypeError`` (equality just answers False).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import InvalidArgumentError, InvalidMessageIDError, UnknownBackendError

__all__ = [
    "IntMessageID",
    "MessageID",
    "register_message_id_unmarshaler",
    "unmarshal_message_id",
]


class MessageID(ABC):
    """A position in one channel of one backend. Immutable, hashable, totally ordered."""

    __slots__ = ()

    @property
    @abstractmethod
    def wal_name(self) -> str:
        """The name of the backend that made this ID (``"localfs"``, ``"memory"``...)."""

    @abstractmethod
    def marshal(self) -> str:
        """A compact text form; ``unmarshal_message_id(self.wal_name, s) == self``."""

    @abstractmethod
    def _order_key(self) -> Any:
        """A value whose natural order is the log order (an int, or a tuple of ints)."""

    def _check(self, other: object) -> MessageID:
        if not isinstance(other, MessageID):
            raise TypeError(f"cannot compare {type(self).__name__} with {type(other).__name__}")
        if other.wal_name != self.wal_name:
            raise TypeError(f"cannot compare message IDs of {self.wal_name!r} and {other.wal_name!r}")
        return other

    def __lt__(self, other: object) -> bool:
        o = self._check(other)
        return bool(self._order_key() < o._order_key())

    def __le__(self, other: object) -> bool:
        o = self._check(other)
        return bool(self._order_key() <= o._order_key())

    def __gt__(self, other: object) -> bool:
        o = self._check(other)
        return bool(self._order_key() > o._order_key())

    def __ge__(self, other: object) -> bool:
        o = self._check(other)
        return bool(self._order_key() >= o._order_key())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageID) or other.wal_name != self.wal_name:
            return False
        return bool(self._order_key() == other._order_key())

    def __hash__(self) -> int:
        return hash((self.wal_name, self._order_key()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.marshal()!r})"

    def __str__(self) -> str:
        return f"{self.wal_name}:{self.marshal()}"


class IntMessageID(MessageID):
    """A message ID that is one non-negative integer (an offset or a sequence), marshalled in decimal.

    Backends with integer positions subclass it and set ``WAL_NAME``; comparisons are integer comparisons.
    """

    __slots__ = ("value",)
    WAL_NAME: ClassVar[str] = ""
    MAX_VALUE: ClassVar[int | None] = None  # the largest the backend can store (None: no bound)

    def __init__(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidMessageIDError(f"{self.WAL_NAME} message ID must be a non-negative int, got {value!r}")
        if self.MAX_VALUE is not None and value > self.MAX_VALUE:
            raise InvalidMessageIDError(f"{self.WAL_NAME} message ID {value} is above the largest, {self.MAX_VALUE}")
        self.value = value

    @property
    def wal_name(self) -> str:
        return self.WAL_NAME

    def marshal(self) -> str:
        return str(self.value)

    def _order_key(self) -> int:
        return self.value

    # Fast paths: the generic versions cost a method call per side; scans compare IDs a lot.
    def __lt__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.value < other.value
        return super().__lt__(other)

    def __le__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.value <= other.value
        return super().__le__(other)

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.value == other.value
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash((self.WAL_NAME, self.value))

    @classmethod
    def parse(cls, data: str) -> IntMessageID:
        """The unmarshaler to register for the subclass's backend."""
        if not isinstance(data, str) or not data.isascii() or not data.isdigit():
            raise InvalidMessageIDError(f"invalid {cls.WAL_NAME} message ID: {data!r}")
        return cls(int(data))


Unmarshaler = Callable[[str], MessageID]
_unmarshalers: dict[str, Unmarshaler] = {}
_lock = threading.Lock()


def register_message_id_unmarshaler(wal_name: str, fn: Unmarshaler) -> None:
    """Register how to parse the IDs of backend ``wal_name``; a second registration of a name raises."""
    with _lock:
        if wal_name in _unmarshalers:
            raise InvalidArgumentError(f"message ID unmarshaler already registered: {wal_name!r}")
        _unmarshalers[wal_name] = fn


def unmarshal_message_id(wal_name: str, data: str) -> MessageID:
    """Parse ``data`` as a message ID of backend ``wal_name``: the text of ``marshal()``, or of ``str(id)``
    (``"<wal_name>:<marshalled>"``, the form an ID prints in).

    Raises :class:`~wal.errors.UnknownBackendError` (a ``KeyError``) for an unregistered name and
    :class:`~wal.errors.InvalidMessageIDError` (a ``ValueError``) for bad data.
    """
    if not isinstance(wal_name, str):  # a list raised a bare "unhashable type" TypeError (review 13b)
        raise UnknownBackendError(f"a backend name is a str, got {wal_name!r}")
    fn = _unmarshalers.get(wal_name)
    if fn is None:
        # A backend registered through an entry point (nats) registers its unmarshaler when it is loaded, which
        # only a builder lookup did: a consumer that parsed its saved checkpoint before building its opener got
        # "no unmarshaler registered" for an installed backend.
        from ..registry._registry import load_entry_points

        load_entry_points()
        fn = _unmarshalers.get(wal_name)
    if fn is None:
        known = ", ".join(sorted(_unmarshalers)) or "none"
        raise UnknownBackendError(f"no message ID unmarshaler registered for {wal_name!r} (known: {known})")
    if not isinstance(data, str):
        raise InvalidMessageIDError(f"a marshalled message ID is a str, got {type(data).__name__}")
    if data.startswith(wal_name) and data[len(wal_name) : len(wal_name) + 1] == ":":
        data = data[len(wal_name) + 1 :]
    try:
        return fn(data)
    except InvalidMessageIDError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise InvalidMessageIDError(f"invalid {wal_name} message ID {data!r}: {e}") from e
