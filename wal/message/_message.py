"""Messages: what a caller appends (:class:`MutableMessage`) and what a scanner delivers (:class:`ImmutableMessage`).

A message is a payload plus string properties. The WAL adds its own metadata (time tick, last-confirmed ID, txn
context, term) as typed fields; :meth:`MutableMessage.wire_properties` and :meth:`ImmutableMessage.from_wire`
turn those fields into reserved ``_``-prefixed properties for backends that can only store strings (a broker's
headers), using Milvus's keys and base-36 integers. Backends with their own binary header (localfs) construct
messages from the typed fields directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, InvalidMessageError
from ._codec import RESERVED_PREFIX, decode_int, encode_int
from ._hybrid import add_physical_ms, check_barrier
from ._message_id import MessageID, unmarshal_message_id
from ._txn import TxnContext
from ._types import MessageType

if TYPE_CHECKING:
    Payload = bytes | bytearray | memoryview

__all__ = [
    "ImmutableMessage",
    "ImmutableTxnMessage",
    "ImmutableTxnMessageBuilder",
    "MutableMessage",
    "Properties",
    "validate_properties",
]

Properties = Mapping[str, str]
_EMPTY: Mapping[str, str] = MappingProxyType({})
_new_immutable = object.__new__

# Reserved property keys (Milvus's names).
K_TYPE = "_t"
K_TIME_TICK = "_tt"
K_BARRIER_TT = "_btt"
K_WAL_TERM = "_wt"
K_LAST_CONFIRMED = "_lc"
K_LAST_CONFIRMED_SELF = "_lcs"
K_VCHANNEL = "_vc"
K_TXN = "_tx"
K_NOT_PERSISTED = "_np"


def _own_payload(payload: object) -> bytes:
    """``payload`` as bytes the message owns. A ``bytearray`` or ``memoryview`` is copied: readers of the WAL
    share the stored payload object, so one the caller changed after appending showed tailing readers other bytes
    than the log holds under the same message ID."""
    if payload.__class__ is bytes:
        return payload
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidMessageError(
            f"payload must be bytes, bytearray or memoryview, got {type(payload).__name__}"
        )
    return bytes(payload)


def check_text(s: str, what: str) -> str:
    """``s`` if it can be stored as UTF-8, else :class:`~wal.errors.InvalidArgumentError` naming ``what``.

    A str with a lone surrogate (``"\\ud800"``, what ``os.fsdecode`` makes of undecodable bytes) has no UTF-8
    form: localfs raised a bare ``UnicodeEncodeError`` at append (or at ``read`` for a ``ReadOption.vchannel``)
    while memory stored it, so the same program failed on one backend only, and not with a ``WALError``.
    """
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidArgumentError(f"{what} {s!r} is not valid UTF-8 text: {e.reason} at {e.start}") from None
    return s


def validate_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """Copy user properties, refusing non-str keys/values, reserved ``_`` keys and text with no UTF-8 form."""
    if not isinstance(properties, Mapping):
        raise InvalidMessageError(f"properties must be a mapping of str to str, got {type(properties).__name__}")
    out: dict[str, str] = {}
    for k, v in properties.items():
        if not isinstance(k, str):
            raise InvalidMessageError(f"property keys must be str, got {type(k).__name__}")
        if not isinstance(v, str):
            raise InvalidMessageError(f"property {k!r}: values must be str, got {type(v).__name__}")
        if k.startswith(RESERVED_PREFIX):
            raise InvalidArgumentError(f"property key {k!r} is reserved: keys starting with '_' belong to the WAL")
        out[check_text(k, "property key")] = check_text(v, f"property {k!r}: value")
    return out


class MutableMessage:
    """A message on its way into the WAL.

    The WAL stamps it in place while appending (time tick, last-confirmed ID, txn context, term), as Milvus does:
    after ``append`` returns, ``msg.time_tick`` is the tick it was written with. Reusing a message object for a
    second append re-stamps it, but keeps its txn context (raw BEGIN/body/COMMIT appends carry theirs): a message
    once appended with a ``Txn`` handle is that txn's body, so appending it again joins that txn (refused once the
    txn ended; while it is open, acknowledged and then delivered only if the txn commits). Build a new message, or
    clear it first with ``with_txn_context(None)``.

    ``vchannel`` ``""`` (or None) means the message is for every vchannel of the pchannel. The vchannel and the
    properties' keys and values are stored as UTF-8: a str with no UTF-8 form (a lone surrogate) raises
    ``InvalidArgumentError``. A ``bytearray`` or ``memoryview`` payload is copied when the message is built: later
    changes to that buffer do not reach the WAL (a payload assigned afterwards is checked, and copied, at append).
    """

    __slots__ = (
        "_lc_self",
        "barrier_time_tick",
        "last_confirmed_message_id",
        "message_type",
        "not_persisted",
        "payload",
        "properties",
        "time_tick",
        "txn_ctx",
        "vchannel",
        "wal_term",
    )

    def __init__(
        self,
        message_type: MessageType,
        payload: bytes | bytearray | memoryview = b"",
        properties: Mapping[str, str] | None = None,
        vchannel: str | None = None,
        *,
        txn_ctx: TxnContext | None = None,
    ) -> None:
        if not isinstance(message_type, MessageType):
            try:
                message_type = MessageType(message_type)
            except (ValueError, TypeError) as e:
                raise InvalidArgumentError(f"unknown message type {message_type!r}") from e
        if vchannel is not None:
            if not isinstance(vchannel, str):
                raise InvalidMessageError(f"vchannel must be str or None, got {type(vchannel).__name__}")
            check_text(vchannel, "vchannel")
        if txn_ctx is not None and not isinstance(txn_ctx, TxnContext):
            raise InvalidMessageError(f"txn_ctx must be a TxnContext, got {type(txn_ctx).__name__}")
        self.message_type: MessageType = message_type
        self.payload: bytes | bytearray | memoryview = _own_payload(payload)
        self.properties: dict[str, str] = validate_properties(properties) if properties else {}
        self.vchannel: str = vchannel or ""
        self.txn_ctx: TxnContext | None = txn_ctx
        self.time_tick: int = 0
        self.barrier_time_tick: int = 0
        self.wal_term: int = 0
        self.last_confirmed_message_id: MessageID | None = None
        self._lc_self = False
        self.not_persisted = False

    # -- in-place stamping by the WAL (Milvus's chained setters) ------------------------------------------------
    # The WAL stamps these as it appends; a program sets none of them (what it sets is overwritten), except a
    # barrier (checked here and at append) and not-persisted (TIME_TICK only, and the WAL refuses it elsewhere).
    def with_time_tick(self, tt: int) -> MutableMessage:
        """Stamp the message's time tick (hybrid timestamp) in place; returns the message."""
        self.time_tick = tt
        return self

    def with_barrier_time_tick(self, tt: int) -> MutableMessage:
        """Ask for a time tick above ``tt`` (Milvus's barrier); returns the message. A ``tt`` that is not an int in
        [0, 2**62) (``TICK_HORIZON``), or more than ten years ahead of the wall clock, raises ``InvalidArgumentError``
        (see :func:`~wal.message._hybrid.check_barrier`)."""
        self.barrier_time_tick = check_barrier(tt)
        return self

    def with_wal_term(self, term: int) -> MutableMessage:
        """Stamp the term of the writer that appends it; returns the message."""
        self.wal_term = term
        return self

    def with_last_confirmed(self, message_id: MessageID | None) -> MutableMessage:
        """Stamp the last-confirmed ID: a reader resuming from it misses nothing at or before this message."""
        self.last_confirmed_message_id = message_id
        self._lc_self = False
        return self

    def with_last_confirmed_use_message_id(self) -> MutableMessage:
        """The last-confirmed ID of this message is its own ID (the first tick of a WAL uses this)."""
        self.last_confirmed_message_id = None
        self._lc_self = True
        return self

    @property
    def last_confirmed_is_self(self) -> bool:
        """Whether the last-confirmed ID is to be this message's own ID, once it has one."""
        return self._lc_self

    def with_txn_context(self, ctx: TxnContext | None) -> MutableMessage:
        """Make the message part of transaction ``ctx`` (None: autocommit); returns the message."""
        self.txn_ctx = ctx
        return self

    def with_not_persisted(self) -> MutableMessage:
        """Mark a time tick as not to be written to the backend (only the in-memory tail sees it)."""
        if self.message_type is not MessageType.TIME_TICK:
            raise InvalidArgumentError(f"only TIME_TICK messages can be not-persisted, not {self.message_type.name}")
        self.not_persisted = True
        return self

    def estimate_size(self) -> int:
        """Bytes the message accounts for in memory budgets (payload plus properties)."""
        return len(self.payload) + sum(len(k) + len(v) for k, v in self.properties.items())

    def copy(self) -> MutableMessage:
        """An independent copy (the payload object is shared): the WAL stamps copies when one object is appended
        twice in one batch, so each append keeps its own time tick."""
        c = MutableMessage.__new__(MutableMessage)
        for name in MutableMessage.__slots__:
            setattr(c, name, getattr(self, name))
        c.properties = dict(self.properties)
        return c

    # -- conversions ---------------------------------------------------------------------------------------------
    def into_immutable(self, message_id: MessageID) -> ImmutableMessage:
        """The message as it was stored under ``message_id`` (properties are copied, the payload is shared)."""
        # Every appended message passes here: the fields are set directly (what ``__init__`` does), which costs
        # a third of a keyword call with ten arguments.
        lc = message_id if self._lc_self else self.last_confirmed_message_id
        im = _new_immutable(ImmutableMessage)
        im.message_id = message_id
        im.message_type = self.message_type
        im.payload = self.payload
        im._props = dict(self.properties) if self.properties else _EMPTY
        im.vchannel = self.vchannel
        im.time_tick = self.time_tick
        im.last_confirmed_message_id = lc if lc is not None else message_id
        im.txn_ctx = self.txn_ctx
        im.wal_term = self.wal_term
        im.not_persisted = self.not_persisted
        return im

    def wire_properties(self) -> dict[str, str]:
        """User properties plus the WAL's metadata as reserved string properties (for string-only backends)."""
        p = dict(self.properties)
        p[K_TYPE] = self.message_type.marshal()
        if self.time_tick:
            p[K_TIME_TICK] = encode_int(self.time_tick)
        if self.barrier_time_tick:
            p[K_BARRIER_TT] = encode_int(self.barrier_time_tick)
        if self.wal_term:
            p[K_WAL_TERM] = encode_int(self.wal_term)
        if self._lc_self:
            p[K_LAST_CONFIRMED_SELF] = ""
        elif self.last_confirmed_message_id is not None:
            p[K_LAST_CONFIRMED] = self.last_confirmed_message_id.marshal()
        if self.vchannel:
            p[K_VCHANNEL] = self.vchannel
        if self.txn_ctx is not None:
            p[K_TXN] = self.txn_ctx.marshal()
        if self.not_persisted:
            p[K_NOT_PERSISTED] = ""
        return p

    def __repr__(self) -> str:
        return (
            f"MutableMessage({self.message_type.name}, {len(self.payload)} B, vchannel={self.vchannel!r}, "
            f"tt={self.time_tick})"
        )


class ImmutableMessage:
    """A message as stored in the WAL and delivered by scanners. Treat it as read-only: its attributes are not
    locked (a frozen class costs every read), but scanners may hand the same object to several readers.

    ``properties`` holds the user's properties only (reserved ``_`` keys are exposed as typed attributes).
    ``payload`` may be a ``memoryview`` into a read-only map of the log file: it stays valid while the message
    object lives; call ``bytes(m.payload)`` to keep a copy independent of it.
    """

    __slots__ = (
        "_props",
        "last_confirmed_message_id",
        "message_id",
        "message_type",
        "not_persisted",
        "payload",
        "time_tick",
        "txn_ctx",
        "vchannel",
        "wal_term",
    )

    def __init__(
        self,
        *,
        message_id: MessageID,
        message_type: MessageType,
        payload: bytes | bytearray | memoryview,
        properties: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        vchannel: str = "",
        time_tick: int = 0,
        last_confirmed_message_id: MessageID | None = None,
        txn_ctx: TxnContext | None = None,
        wal_term: int = 0,
        not_persisted: bool = False,
    ) -> None:
        self.message_id = message_id
        self.message_type = message_type
        self.payload = payload
        # A callable is decoded on first access: scanners that never look at properties never pay for them.
        self._props: Mapping[str, str] | Callable[[], Mapping[str, str]] = properties if properties else _EMPTY
        self.vchannel = vchannel
        self.time_tick = time_tick
        self.last_confirmed_message_id = (
            last_confirmed_message_id if last_confirmed_message_id is not None else message_id
        )
        self.txn_ctx = txn_ctx
        self.wal_term = wal_term
        self.not_persisted = not_persisted

    @property
    def properties(self) -> Mapping[str, str]:
        """The user's properties, read-only (decoded on first use)."""
        p = self._props
        if callable(p):
            p = self._props = MappingProxyType(dict(p()))
        elif not isinstance(p, MappingProxyType):
            p = self._props = MappingProxyType(dict(p))
        return p

    @property
    def wal_name(self) -> str:
        """The backend that stored it (its message ID's)."""
        return self.message_id.wal_name

    @property
    def is_persisted(self) -> bool:
        """False for a time tick the WAL made for tailing readers only (its ID is a last-confirmed ID)."""
        return not self.not_persisted

    def estimate_size(self) -> int:
        """Bytes this message accounts for in memory budgets (payload plus user properties)."""
        if not self._props:  # empty mapping; a lazy decoder is truthy and is decoded to be sized
            return len(self.payload)
        return len(self.payload) + sum(len(k) + len(v) for k, v in self.properties.items())

    def _fields(self) -> dict[str, Any]:
        """The constructor's keywords that make this message again (properties as held: maybe not decoded yet)."""
        return {
            "message_id": self.message_id,
            "message_type": self.message_type,
            "payload": self.payload,
            "properties": self._props,
            "vchannel": self.vchannel,
            "time_tick": self.time_tick,
            "last_confirmed_message_id": self.last_confirmed_message_id,
            "txn_ctx": self.txn_ctx,
            "wal_term": self.wal_term,
            "not_persisted": self.not_persisted,
        }

    def replace(self, **changes: Any) -> ImmutableMessage:
        """A copy with some fields changed (used to stamp txn body messages with their commit's tick)."""
        fields = self._fields()
        fields.update(changes)
        return ImmutableMessage(**fields)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a ProcessPoolExecutor worker, a multiprocessing queue) and deep-copied as plain values: the
        # read-only properties (a mappingproxy, or a decoder not run yet) and a memoryview payload into the log's
        # map cannot be pickled, and a deep copy failed on them with "cannot pickle 'mappingproxy' object".
        fields = self._fields()
        if isinstance(self.payload, memoryview):
            fields["payload"] = bytes(self.payload)
        fields["properties"] = dict(self.properties)
        return _rebuild_message, (fields,)

    @classmethod
    def from_wire(
        cls, message_id: MessageID, payload: bytes | bytearray | memoryview, properties: Mapping[str, str]
    ) -> ImmutableMessage:
        """Inverse of :meth:`MutableMessage.wire_properties`, for string-only backends.

        Raises ``ValueError`` (an :class:`~wal.errors.InvalidArgumentError`) when a reserved property is malformed.
        """
        user: dict[str, str] = {}
        mtype = MessageType.UNKNOWN
        tt = wt = 0
        lc: MessageID | None = None
        vch = ""
        txn: TxnContext | None = None
        np = False
        try:
            for k, v in properties.items():
                if not k.startswith(RESERVED_PREFIX):
                    user[k] = v
                elif k == K_TYPE:
                    mtype = MessageType.unmarshal(v)
                elif k == K_TIME_TICK:
                    tt = decode_int(v)
                elif k == K_WAL_TERM:
                    wt = decode_int(v)
                elif k == K_LAST_CONFIRMED:
                    lc = unmarshal_message_id(message_id.wal_name, v)
                elif k == K_VCHANNEL:
                    vch = v
                elif k == K_TXN:
                    txn = TxnContext.unmarshal(v)
                elif k == K_NOT_PERSISTED:
                    np = True
        except ValueError as e:
            raise InvalidArgumentError(f"malformed reserved property in message {message_id}: {e}") from e
        return cls(
            message_id=message_id,
            message_type=mtype,
            payload=payload,
            properties=user,
            vchannel=vch,
            time_tick=tt,
            last_confirmed_message_id=lc,
            txn_ctx=txn,
            wal_term=wt,
            not_persisted=np,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message_type.name}, id={self.message_id!r}, tt={self.time_tick}, "
            f"vchannel={self.vchannel!r}, {len(self.payload)} B)"
        )


class ImmutableTxnMessage(ImmutableMessage):
    """A committed transaction delivered as one message (type ``TXN``).

    Its ID, time tick and txn context are the commit's. ``messages`` holds the body in append order, each stamped
    with the commit's time tick (a transaction becomes visible at its commit). Its last-confirmed ID (and each body
    message's) is the smaller of the begin's and the commit's, so at or before the begin: resuming from it re-reads
    the whole transaction.
    """

    __slots__ = ("begin", "commit", "messages")

    def __init__(
        self, begin: ImmutableMessage, body: Sequence[ImmutableMessage], commit: ImmutableMessage
    ) -> None:
        lc = min(begin.last_confirmed_message_id, commit.last_confirmed_message_id)
        super().__init__(
            message_id=commit.message_id,
            message_type=MessageType.TXN,
            payload=b"",
            properties=None,
            vchannel=commit.vchannel,
            time_tick=commit.time_tick,
            last_confirmed_message_id=lc,
            txn_ctx=commit.txn_ctx,
            wal_term=commit.wal_term,
        )
        self.begin = begin
        self.commit = commit
        self.messages: tuple[ImmutableMessage, ...] = tuple(
            m.replace(time_tick=commit.time_tick, last_confirmed_message_id=lc) for m in body
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The body is stamped with the commit's tick and last-confirmed ID already: stamping it again is a no-op.
        return ImmutableTxnMessage, (self.begin, self.messages, self.commit)

    def size(self) -> int:
        """Number of body messages."""
        return len(self.messages)

    def __iter__(self) -> Iterator[ImmutableMessage]:
        return iter(self.messages)

    def range_over(self, fn: Callable[[ImmutableMessage], None]) -> None:
        """Call ``fn`` on each body message in order; the first exception stops the walk and propagates."""
        for m in self.messages:
            fn(m)

    def estimate_size(self) -> int:
        return sum(m.estimate_size() for m in self.messages)


def _rebuild_message(fields: dict[str, Any]) -> ImmutableMessage:
    """Unpickles an :class:`ImmutableMessage` (its ``__init__`` takes keywords only)."""
    return ImmutableMessage(**fields)


class ImmutableTxnMessageBuilder:
    """Collects a transaction's messages as a scanner reads them, until its commit arrives (or it expires)."""

    __slots__ = ("_begin", "_body", "_last_tt", "_size")

    def __init__(self, begin: ImmutableMessage) -> None:
        if begin.message_type is not MessageType.BEGIN_TXN or begin.txn_ctx is None:
            raise InvalidArgumentError(f"a txn builder starts from a BEGIN_TXN with a txn context, not {begin!r}")
        self._begin = begin
        self._body: list[ImmutableMessage] = []
        self._size = 0
        self._last_tt = begin.time_tick  # of the last message seen, kept or not: the keepalive counts from it

    @property
    def txn_ctx(self) -> TxnContext:
        """The transaction's context, from its begin."""
        assert self._begin.txn_ctx is not None
        return self._begin.txn_ctx

    def add(self, msg: ImmutableMessage, keep: bool = True) -> ImmutableTxnMessageBuilder:
        """Add a body message; ``keep`` False (a reader's filter drops it) only renews the keepalive."""
        self._last_tt = max(self._last_tt, msg.time_tick)
        if keep:
            self._body.append(msg)
            self._size += msg.estimate_size()
        return self

    def estimate_size(self) -> int:
        """Bytes the txn kept so far accounts for (begin and kept body)."""
        return self._size + self._begin.estimate_size()

    def expired_time_tick(self) -> int:
        """The time tick at which the transaction is expired: last activity plus the keepalive."""
        return add_physical_ms(self._last_tt, self.txn_ctx.keepalive_ms)

    def messages(self) -> tuple[ImmutableMessage, list[ImmutableMessage]]:
        """The begin and a copy of the list of kept body messages."""
        return self._begin, list(self._body)

    def build(self, commit: ImmutableMessage) -> ImmutableTxnMessage:
        """The one TXN message a reader gets for the committed txn."""
        if commit.message_type is not MessageType.COMMIT_TXN:
            raise InvalidArgumentError(f"a txn is built from its COMMIT_TXN, not {commit.message_type.name}")
        return ImmutableTxnMessage(self._begin, self._body, commit)
