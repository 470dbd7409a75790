"""The write-ahead buffer's compact form of a plain message: a tuple of atoms instead of two objects.

Why: the buffer keeps every recent message (up to 64 MiB, 30 s), and an :class:`ImmutableMessage` with its
message ID is two objects the cyclic garbage collector tracks. At 100 B records that is hundreds of thousands of
tracked objects, which every full collection walks, and whose creation keeps triggering collections (measured:
collections were a third of a pipelined append's cost). A tuple holding only ints, bytes and str is untracked by the
collector the first time it sees it, so a compact entry costs the collector almost nothing afterwards.

A batch compacts when every message is an exact ``ImmutableMessage`` (not a TXN message) without properties
whose message and last-confirmed IDs are of the buffer's ID class (an :class:`IntMessageID` subclass, rebuilt
from its value); otherwise it is kept as it is. (A txn context or a ``memoryview`` payload is carried in the
tuple and keeps it tracked: no gain, no harm.) Readers get an equal ``ImmutableMessage`` rebuilt on read (a
new object per read: the buffer never holds it again).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any

from ..message import ImmutableMessage, IntMessageID, MessageType, MutableMessage
from ..message._message import _EMPTY as _EMPTY_PROPS

__all__ = [
    "COMPACT_PAYLOAD",
    "COMPACT_TICK",
    "Entry",
    "compact_batch",
    "compact_written",
    "entry_size",
    "entry_time_tick",
    "entry_type",
    "expand",
    "expand_all",
    "id_class_of",
]

Entry = ImmutableMessage | tuple[Any, ...]
"""A stored message: as built, or compact ``(id, type, payload, vchannel, time tick, last-confirmed id, term, txn
context, not persisted)`` (ids as ints, the type as its value)."""

COMPACT_TICK = itemgetter(4)
"""The time tick of a compact entry (raises TypeError on an ``ImmutableMessage``: not subscriptable)."""
COMPACT_PAYLOAD = itemgetter(2)
"""The payload of a compact entry."""

_BY_VALUE: dict[int, MessageType] = {int(t): t for t in MessageType}
_new = object.__new__
_new_immutable = object.__new__
_props = attrgetter("_props")
# An entry after its ID, in the order of ``Entry``: the same names on mutable and immutable messages.
_fields = attrgetter(
    "message_type._value_", "payload", "vchannel", "time_tick", "last_confirmed_message_id.value", "wal_term",
    "txn_ctx", "not_persisted",
)


def id_class_of(msg: ImmutableMessage) -> type[IntMessageID] | None:
    """The ID class the buffer compacts (that of its first message), or None: IDs it cannot rebuild."""
    cls = msg.message_id.__class__
    if not issubclass(cls, IntMessageID):
        return None
    # Rebuilt as object.__new__ + the base's ``value`` slot: only classes that add no state of their own.
    for c in cls.__mro__[: cls.__mro__.index(IntMessageID)]:
        if vars(c).get("__slots__", None) != ():
            return None
    return cls


def compact_batch(msgs: list[Any], id_cls: type[IntMessageID] | None) -> list[Any]:
    """``msgs`` (messages, or entries already compact) as compact entries when every message qualifies, else as
    they are. The append path's batches arrive compact already (:func:`compact_written`)."""
    if id_cls is None or not msgs:
        return msgs
    classes = set(map(type, msgs))
    if classes == {tuple}:
        return msgs
    # Not a TXN message (it has more fields); no properties (the empty mapping is falsy, a lazy decoder is not).
    if not classes <= {ImmutableMessage, tuple} or any(map(_props, (m for m in msgs if m.__class__ is not tuple))):
        return msgs
    try:
        out = [
            m if m.__class__ is tuple else (m.message_id.value, *_fields(m))
            for m in msgs
            if m.__class__ is tuple
            or (m.message_id.__class__ is id_cls and m.last_confirmed_message_id.__class__ is id_cls)
        ]
    except AttributeError:  # a message type that is not a MessageType member: keep the batch as it is
        return msgs
    return out if len(out) == len(msgs) else msgs


def compact_written(
    msgs: Sequence[MutableMessage],
    ids: Sequence[object],
    id_cls: type[IntMessageID] | None,
    shared_lc: object = None,
) -> list[Any] | None:
    """The compact entries of plain messages just written under ``ids``, straight from the mutable messages
    (no ``ImmutableMessage`` built): what the time-tick interceptor hands the buffer. None when they do not
    qualify (then it builds messages). Each message's last-confirmed ID is its own, as stamped (never "self").

    ``shared_lc``: the last-confirmed ID every message was just stamped with (``_lc_self`` cleared), as the
    time-tick interceptor stamps a plain batch: its value is read once, and each message is only checked to
    still hold that very object (an inner interceptor could have restamped one: then no compact form).
    """
    if id_cls is None or not msgs:
        return None
    if shared_lc is not None:
        if shared_lc.__class__ is not id_cls:
            return None
        lcv = shared_lc.value
        try:
            out = [
                (r.value, m.message_type._value_, m.payload, m.vchannel, m.time_tick, lcv, m.wal_term, m.txn_ctx,
                 m.not_persisted)
                for m, r in zip(msgs, ids, strict=True)
                if r.__class__ is id_cls and m.last_confirmed_message_id is shared_lc and not m.properties
            ]
        except AttributeError:
            return None
        return out if len(out) == len(msgs) else None
    # Checked inline, not over the batch in C (``set(map(type, ids))``, ``any(map(attrgetter(...), msgs))``): a
    # slot read in a comprehension costs less than one through ``attrgetter``. Measured (valgrind, 1,024-message
    # batch): 1,700 instructions per message; 2,100 with those checks in C; 3,200-3,700 with the tuples built by
    # ``attrgetter`` and ``zip``.
    try:
        out = [  # ``(r.value, *_fields(m))`` spelled out
            (
                r.value,
                m.message_type._value_,
                m.payload,
                m.vchannel,
                m.time_tick,
                m.last_confirmed_message_id.value,
                m.wal_term,
                m.txn_ctx,
                m.not_persisted,
            )
            for m, r in zip(msgs, ids, strict=True)
            if r.__class__ is id_cls
            and m.last_confirmed_message_id.__class__ is id_cls
            and not m._lc_self
            and not m.properties
        ]
    except AttributeError:
        return None
    return out if len(out) == len(msgs) else None


def entry_time_tick(e: Any) -> int:
    return e[4] if e.__class__ is tuple else e.time_tick  # type: ignore[no-any-return]


def entry_size(e: Any) -> int:
    """What the buffer accounts for an entry (``estimate_size``: payload plus properties; compact: no properties)."""
    if e.__class__ is tuple:
        return len(e[2])
    return e.estimate_size() if e._props else len(e.payload)


def entry_type(e: Any) -> MessageType:
    return _BY_VALUE[e[1]] if e.__class__ is tuple else e.message_type


def expand(e: Any, id_cls: Any) -> ImmutableMessage:
    """The message an entry stands for (an ``ImmutableMessage`` entry is returned as is)."""
    if e.__class__ is not tuple:
        return e  # type: ignore[no-any-return]
    v, t, payload, vchannel, tt, lc, term, txn_ctx, not_persisted = e
    mid = _new(id_cls)
    mid.value = v
    if lc != v:
        lcid = _new(id_cls)
        lcid.value = lc
    else:
        lcid = mid
    im = _new_immutable(ImmutableMessage)
    im.message_id = mid
    im.message_type = _BY_VALUE[t]
    im.payload = payload
    im._props = _EMPTY_PROPS
    im.vchannel = vchannel
    im.time_tick = tt
    im.last_confirmed_message_id = lcid
    im.txn_ctx = txn_ctx
    im.wal_term = term
    im.not_persisted = not_persisted
    out: ImmutableMessage = im
    return out


def expand_all(entries: list[Any], id_cls: Any) -> list[ImmutableMessage]:
    if id_cls is None:
        return entries
    return [expand(e, id_cls) if e.__class__ is tuple else e for e in entries]
