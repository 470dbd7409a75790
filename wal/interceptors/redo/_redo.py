"""Redo (Milvus ``interceptors/redo``): an inner interceptor that finds its time tick too old raises
:class:`RedoError`; the outermost redo interceptor runs the message through the chain again, which allocates a
new tick. It must be the outermost interceptor.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import WALError
from ...message import MessageID, MutableMessage
from .._chain import all_ok
from .._interfaces import AppendFunc, AppendOutcome, BatchAppendFunc, Interceptor, InterceptorBuildParam

__all__ = ["RedoError", "RedoInterceptor", "RedoInterceptorBuilder"]

MAX_REDO = 100


class RedoError(WALError):
    """Raised by an inner interceptor to have the message appended again from the top of the chain."""


class RedoInterceptor:
    """Retries messages that failed with :class:`RedoError` (bounded, so a buggy interceptor cannot spin)."""

    def do_append(self, msg: MutableMessage, next: AppendFunc) -> MessageID:
        for _ in range(MAX_REDO):
            try:
                return next(msg)
            except RedoError:
                continue
        return next(msg)

    def do_append_batch(self, msgs: Sequence[MutableMessage], next: BatchAppendFunc) -> list[AppendOutcome]:
        out = next(msgs)
        if all_ok(out):  # the usual case
            return out
        for _ in range(MAX_REDO):
            redo = [i for i, o in enumerate(out) if isinstance(o, RedoError)]
            if not redo:
                break
            again = next([msgs[i] for i in redo])
            for i, o in zip(redo, again, strict=True):
                out[i] = o
        return out

    def close(self) -> None:
        pass


class RedoInterceptorBuilder:
    def build(self, param: InterceptorBuildParam) -> Interceptor:
        return RedoInterceptor()
