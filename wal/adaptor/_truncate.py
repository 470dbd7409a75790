"""Where a backend may cut when the user truncates at a message ID: never inside a txn it still has to deliver.

A backend truncates by raw ID (memory exactly, localfs by whole segments, NATS by sequence), but readers see a
committed txn as one TXN message with its commit's ID, assembled from a begin and a body that lie before it. Cutting
at ``x`` between a txn's begin and its commit would delete parts of a TXN message whose ID is ``>= x`` (or of an
open txn that commits later): readers would silently lose it. So the adaptor lowers the cut to the begin of every
txn that is still unfinished at ``x``:

- it never passes the writer's last-confirmed ID (which never passes an open txn's begin, and below which every
  message is stored, so the reads here never wait for an append);
- the begin of a txn unfinished at ``x`` lies at or after the last-confirmed ID of the first message at ``x``
  (invariant 4: a message appended while a txn is open, the commit included, has a last-confirmed ID at or before
  its begin), so reading from there up to ``x`` finds every such begin. That is a short read: back to the start
  of the in-flight window, or of the longest txn around ``x``.

These reads start at or after the oldest message kept. A backend reader asked to start below it (at an ID that
``truncate`` or retention deleted) goes on at the oldest and, in localfs, logs a warning naming the IDs it missed:
right for a user's reader, noise about a probe the user never opened. So ``x`` at or before the oldest kept message
is a no-op (nothing lies wholly before it), and the txn search starts no lower than the oldest.
"""

from __future__ import annotations

from ..errors import WALTimeoutError
from ..message import MessageID, MessageType
from ..options import DeliverPolicy
from ..walimpls import ReadOption, ROWALImpls

__all__ = ["truncation_point"]

_WAIT = 10.0  # every message read here is stored already: a wait this long means the backend is stuck
_BATCH = 256


def _oldest(impls: ROWALImpls) -> MessageID:
    """The ID of the oldest message the backend keeps."""
    s = impls.read(ReadOption(name="truncate-probe", deliver_policy=DeliverPolicy.all()))
    try:
        return s.recv(_WAIT).message_id
    finally:
        s.close()


def _first_at(impls: ROWALImpls, x: MessageID) -> MessageID | None:
    """The last-confirmed ID of the first stored message at or after ``x`` (None: it has none)."""
    s = impls.read(ReadOption(name="truncate-probe", deliver_policy=DeliverPolicy.start_from(x)))
    try:
        m = s.recv(_WAIT)
    finally:
        s.close()
    lc = m.last_confirmed_message_id
    return lc if type(lc) is type(x) else None


def _unfinished_begins(impls: ROWALImpls, lo: MessageID, x: MessageID) -> list[MessageID]:
    """IDs of the begins in ``[lo, x)`` whose txn has not ended (commit or rollback) before ``x``."""
    begins: dict[int, MessageID] = {}
    s = impls.read(ReadOption(name="truncate-probe", deliver_policy=DeliverPolicy.start_from(lo)))
    try:
        while True:
            for m in s.recv_batch(_BATCH, _WAIT):
                if not m.message_id < x:
                    return list(begins.values())
                ctx = m.txn_ctx
                if ctx is None:
                    continue
                mt = m.message_type
                if mt is MessageType.BEGIN_TXN:
                    begins.setdefault(ctx.txn_id, m.message_id)
                elif mt is MessageType.COMMIT_TXN or mt is MessageType.ROLLBACK_TXN:
                    begins.pop(ctx.txn_id, None)
    finally:
        s.close()


def truncation_point(impls: ROWALImpls, x: MessageID, confirmed: MessageID | None) -> MessageID:
    """The ID to hand the backend for ``truncate(x)``: ``x`` itself unless that would cut a txn the readers still
    need, or pass ``confirmed`` (the writer's last-confirmed ID)."""
    if confirmed is None or type(confirmed) is not type(x):
        return x  # a foreign ID: the backend refuses it with its own error
    if confirmed < x:
        x = confirmed
    try:
        oldest = _oldest(impls)
        if not oldest < x:
            return x  # nothing lies before x: the backend deletes nothing
        lo = _first_at(impls, x)
        if lo is None or not lo < x:
            return x
        begins = _unfinished_begins(impls, max(lo, oldest), x)
    except WALTimeoutError as e:
        raise WALTimeoutError(f"truncate: reading the txns around {x} took over {_WAIT} s") from e
    return min(begins) if begins else x
