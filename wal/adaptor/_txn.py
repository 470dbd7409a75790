"""The ``with w.begin_txn(...) as txn`` handle: BEGIN_TXN / body / COMMIT_TXN / ROLLBACK_TXN messages."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .._checks import seconds
from .._interfaces import Txn
from .._types import AppendResult
from ..errors import InvalidArgumentError, InvalidMessageError, InvalidTxnStateError
from ..message import NON_TXN_ID, MessageType, MutableMessage, TxnContext

if TYPE_CHECKING:
    from .._interfaces import WAL

__all__ = ["TxnHandle"]


class TxnHandle(Txn):
    def __init__(self, wal: WAL, vchannel: str, keepalive: float | None, timeout: float | None = None) -> None:
        if not isinstance(vchannel, str) or not vchannel:
            # A txn lives on one vchannel; "" (or None) made a txn "for every vchannel" that each vchannel's reader
            # got, quietly: it names no vchannel, as for ReadOption(vchannel="").
            raise InvalidArgumentError(f"begin_txn needs a vchannel name (a non-empty str), got {vchannel!r}")
        if keepalive is not None and seconds(keepalive, "txn keepalive") < 0.001:
            raise InvalidArgumentError(f"txn keepalive must be at least 1 ms, got {keepalive!r}")
        if timeout is not None:  # checked now: a bad one must not first show at the with block's exit
            timeout = seconds(timeout, "txn timeout")
        self._timeout = timeout
        self._wal = wal
        self._vchannel = vchannel
        self._lock = threading.Lock()
        self._finished = False
        self._ending = ""  # what ended it, for the error of a later call
        begin = MutableMessage(MessageType.BEGIN_TXN, b"", vchannel=vchannel)
        if keepalive is not None:
            # The requested keepalive rides on the begin; the WAL replaces the context with the real one.
            begin.with_txn_context(TxnContext(NON_TXN_ID, float(keepalive)))
        r = wal.append(begin, timeout)
        assert r.txn_ctx is not None, "the WAL did not open a transaction for BEGIN_TXN"
        self._ctx: TxnContext = r.txn_ctx
        self.begin_result = r

    @property
    def txn_ctx(self) -> TxnContext:
        return self._ctx

    @property
    def finished(self) -> bool:
        return self._finished

    def __repr__(self) -> str:
        state = self._ending if self._finished else "open"
        return f"<Txn {self._ctx.txn_id} on vchannel {self._vchannel!r}: {state}>"

    def _check_open(self) -> None:
        if self._finished:
            raise InvalidTxnStateError(f"txn {self._ctx.txn_id} is already {self._ending}")

    def append(self, msg: MutableMessage, timeout: float | None = None) -> AppendResult:
        self._check_open()
        if not isinstance(msg, MutableMessage):
            raise InvalidMessageError(f"a txn appends a MutableMessage, got {type(msg).__name__}")
        if msg.message_type.__class__ is not MessageType:  # set afterwards: .is_system raised a bare AttributeError
            raise InvalidArgumentError(f"message_type must be a MessageType, got {msg.message_type!r}")
        if msg.message_type.is_system:
            raise InvalidArgumentError(f"cannot append a {msg.message_type.name} inside a transaction")
        if msg.vchannel and msg.vchannel != self._vchannel:
            raise InvalidArgumentError(f"txn on vchannel {self._vchannel!r} got a message for {msg.vchannel!r}")
        msg.vchannel = self._vchannel
        msg.with_txn_context(self._ctx)
        return self._wal.append(msg, self._timeout if timeout is None else timeout)

    def _finish(self, mtype: MessageType, timeout: float | None) -> AppendResult:
        commit = mtype is MessageType.COMMIT_TXN
        if timeout is not None:  # before the txn counts as ending: a refused argument leaves it usable
            timeout = seconds(timeout, f"{'commit' if commit else 'rollback'} timeout")
        else:  # the begin's: the with block's exit has no other way to bound its wait
            timeout = self._timeout
        with self._lock:
            self._check_open()
            self._finished = True
            self._ending = "committed" if commit else "rolled back"
        m = MutableMessage(mtype, b"", vchannel=self._vchannel, txn_ctx=self._ctx)
        try:
            return self._wal.append(m, timeout)
        except BaseException as e:  # expired, closed, timed out (then perhaps stored): no second ending either way
            self._ending = f"ended: its {'commit' if commit else 'rollback'} failed ({e})"
            raise

    def commit(self, timeout: float | None = None) -> AppendResult:
        return self._finish(MessageType.COMMIT_TXN, timeout)

    def rollback(self, timeout: float | None = None) -> AppendResult:
        return self._finish(MessageType.ROLLBACK_TXN, timeout)

    def close(self) -> None:
        if not self._finished:
            try:
                self.rollback()
            except Exception:  # expired or WAL closed: either way nothing of it is delivered
                pass
