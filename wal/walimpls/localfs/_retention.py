"""Where retention may cut: only at a segment boundary that no transaction straddles.

Retention (``retention_bytes`` / ``retention_seconds``) deletes the oldest sealed segments. Deleting the segment
that holds a txn's begin while the txn is still open lost the whole txn for every reader: its commit was
acknowledged later, but a committed txn is delivered as one TXN message built from its begin and body (DESIGN.md
invariant 5). The user's ``truncate`` is guarded by the adaptor (``adaptor/_truncate.py``); retention is the
backend's own, so the backend guards it, with the same fact (invariant 4): a message appended while a txn is
open, its commit included, carries a last-confirmed ID at or before the txn's begin. So for the first message
``m`` of a segment starting at ``b``, every txn open at ``b`` began in ``[lc(m), b)``: the boundary is clean
when no BEGIN_TXN in that range is left unended before ``b``. The range is short (back to the start of the
in-flight batch), except while a txn stays open: then the walk stops after :data:`MAX_WALK` records and the
boundary counts as unclean (retention keeps the segments and tries again at the next roll).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...message import MessageType
from ._fileops import FileOps
from ._format import (
    DATA_START,
    LC_ID,
    META_FIXED,
    MF_TXN,
    REC_HEADER,
    REC_HEADER_SIZE,
    align,
    check_record,
    decode_meta,
)
from ._state import SegmentState

__all__ = ["MAX_WALK", "clean_boundary"]

MAX_WALK = 20_000
"""The most records read to prove one boundary clean (a few ms); past it, the boundary is kept."""

_BEGIN = MessageType.BEGIN_TXN.value
_ENDS = (MessageType.COMMIT_TXN.value, MessageType.ROLLBACK_TXN.value)


def clean_boundary(fops: FileOps, segs: Sequence[SegmentState], k: int) -> bool:
    """Whether deleting ``segs[:k]`` cuts no transaction (False when unsure: the caller keeps them)."""
    if k >= len(segs):
        return False
    seg = segs[k]
    end = seg.data_end
    if end <= DATA_START:
        return False  # no message yet: nothing tells where the open txns began
    try:
        mm = seg.mapping(fops, end)
        if check_record(mm, DATA_START, end) is None:
            return False
        meta = decode_meta(mm, DATA_START + REC_HEADER_SIZE)
        if meta.lc_kind != LC_ID or meta.lc_id >= seg.first_id:
            return True
        return not _unended_begins(fops, segs[:k], meta.lc_id)
    except (OSError, ValueError):
        return False


def _unended_begins(fops: FileOps, before: Sequence[SegmentState], lo: int) -> bool:
    """Whether a BEGIN_TXN with ID >= ``lo`` in ``before`` has no commit or rollback after it there (or the
    walk was too long to tell: True)."""
    open_txns: set[int] = set()
    walked = 0
    for s in before:
        if s.last_id < lo:
            continue
        mm = s.mapping(fops, s.data_end)
        pos = DATA_START
        for mid, _tt, p in s.index:  # seek: the last index entry at or before lo
            if mid > lo:
                break
            pos = p
        while pos + REC_HEADER_SIZE <= s.data_end:
            _c, body_len, _magic, _fl, mt, _ml, mid, _tt = REC_HEADER.unpack_from(mm, pos)
            walked += 1
            if walked > MAX_WALK:
                return True
            if mid >= lo and (mt == _BEGIN or mt in _ENDS):
                _term, _lk, mflags, _vl, _pl = META_FIXED.unpack_from(mm, pos + REC_HEADER_SIZE)
                if mflags & MF_TXN:
                    txn_id = decode_meta(mm, pos + REC_HEADER_SIZE).txn_ctx.txn_id  # type: ignore[union-attr]
                    if mt == _BEGIN:
                        open_txns.add(txn_id)
                    else:
                        open_txns.discard(txn_id)
            pos += align(REC_HEADER_SIZE + body_len)
    return bool(open_txns)
