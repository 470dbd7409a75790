"""Assembles transactions on the read side: body messages wait until their commit, then leave as one TXN."""

from __future__ import annotations

from collections.abc import Callable

from ..message import ImmutableMessage, ImmutableTxnMessageBuilder, MessageID, MessageType
from ._deadline_heap import DeadlineHeap

__all__ = ["TxnBuffer"]

GAPS_KEPT = 64
"""Stretches of deleted messages a reader remembers (each one is rare, and logged by the backend): a txn open across
more of them than this, in one reader, is the only one that could still be delivered in part."""


class TxnBuffer:
    """Open transactions of one scanner, keyed by txn ID. Not thread-safe.

    A transaction whose begin was never seen (the scanner started in its middle) is dropped: its commit's
    last-confirmed ID lies at or before the begin, so a reader that needs it starts earlier.

    ``body_filter``: which body messages the delivered TXN keeps (the scanner's deliver filters). Every body message
    must still come here, filtered or not: each one renews the transaction's keepalive, and a buffer that saw only
    some of them expired the transaction before its commit arrived.

    Expiry looks at a :class:`DeadlineHeap`, not at every open transaction: it runs at every time tick, so a look at
    each made a reader's cost per message O(open txns) (3 s for 3,000 messages with 10,000 txns open).
    """

    __slots__ = ("_builders", "_deadlines", "_gaps", "_keep")

    def __init__(self, body_filter: Callable[[ImmutableMessage], bool] | None = None) -> None:
        self._builders: dict[int, ImmutableTxnMessageBuilder] = {}
        self._deadlines = DeadlineHeap()
        self._keep = body_filter
        self._gaps: list[MessageID] = []  # where the reader went on after skipping deleted messages (note_gap)

    def note_gap(self, last_missed: MessageID) -> None:
        """The reader passed over messages deleted before it read them (a truncate or retention under a slow reader),
        up to ``last_missed``. A txn whose begin is at or before it and whose commit after it may have lost body
        messages in the stretch: it is not delivered, rather than delivered in part (a follower delivered such a TXN
        with the body messages it had read before the stretch, as if the txn had been that)."""
        gaps = self._gaps
        if gaps and gaps[-1] == last_missed:
            return
        gaps.append(last_missed)
        del gaps[:-GAPS_KEPT]

    def _broken(self, begin: MessageID, commit: MessageID) -> bool:
        return any(begin <= g < commit for g in self._gaps)

    def handle_immutable_messages(self, msgs: list[ImmutableMessage], time_tick: int) -> list[ImmutableMessage]:
        """Return what is deliverable from ``msgs`` (time-tick ordered), then drop txns expired at ``time_tick``.

        With no open transaction and no txn message in ``msgs`` (a plain catch-up), ``msgs`` itself is returned.
        """
        builders = self._builders
        if not builders:
            for m in msgs:
                if m.txn_ctx is not None:
                    break
            else:
                return msgs
        out: list[ImmutableMessage] = []
        for m in msgs:
            ctx = m.txn_ctx
            if ctx is None:
                out.append(m)
                continue
            mt = m.message_type
            if mt is MessageType.BEGIN_TXN:
                if ctx.txn_id not in builders:
                    nb = builders[ctx.txn_id] = ImmutableTxnMessageBuilder(m)
                    self._deadlines.push(nb.expired_time_tick(), ctx.txn_id)
            elif mt is MessageType.COMMIT_TXN:
                b = builders.pop(ctx.txn_id, None)
                if b is not None and not (self._gaps and self._broken(b.messages()[0].message_id, m.message_id)):
                    out.append(b.build(m))
            elif mt is MessageType.ROLLBACK_TXN:
                builders.pop(ctx.txn_id, None)
            elif mt is MessageType.TXN:
                out.append(m)  # already assembled upstream
            else:
                b = builders.get(ctx.txn_id)
                if b is not None:
                    b.add(m, self._keep is None or self._keep(m))
        deadlines = self._deadlines
        for tid in deadlines.due(time_tick):
            open_txn = builders.get(tid)
            if open_txn is None:  # committed or rolled back
                continue
            at = open_txn.expired_time_tick()
            if at <= time_tick:
                del builders[tid]
            else:  # renewed since
                deadlines.push(at, tid)
        deadlines.trim(len(builders), lambda: [(b.expired_time_tick(), tid) for tid, b in builders.items()])
        return out

    @property
    def bytes(self) -> int:
        return sum(b.estimate_size() for b in self._builders.values())

    def __len__(self) -> int:
        return len(self._builders)
