"""Interceptors: code that wraps every append of a WAL (time ticks, transactions, user hooks).

Built-ins, outermost first: :mod:`~wal.interceptors.redo`, :mod:`~wal.interceptors.timetick` (time ticks, ack
manager, last-confirmed IDs, MVCC, transactions, the periodic tick). User interceptors come after them, in the
order given to ``registry.must_get_builder(name, *builders)`` or the ``interceptors`` build option.
"""

from ._chain import ChainedInterceptor as ChainedInterceptor
from ._chain import batch_to_single as batch_to_single
from ._interfaces import AppendFunc as AppendFunc
from ._interfaces import AppendOutcome as AppendOutcome
from ._interfaces import BatchAppendFunc as BatchAppendFunc
from ._interfaces import Interceptor as Interceptor
from ._interfaces import InterceptorBuilder as InterceptorBuilder
from ._interfaces import InterceptorBuildParam as InterceptorBuildParam
from ._interfaces import InterceptorWithBatch as InterceptorWithBatch
from ._interfaces import InterceptorWithGracefulClose as InterceptorWithGracefulClose
from ._interfaces import InterceptorWithName as InterceptorWithName
from ._interfaces import InterceptorWithReady as InterceptorWithReady

__all__ = [
    "AppendFunc",
    "AppendOutcome",
    "BatchAppendFunc",
    "ChainedInterceptor",
    "Interceptor",
    "InterceptorBuildParam",
    "InterceptorBuilder",
    "InterceptorWithBatch",
    "InterceptorWithGracefulClose",
    "InterceptorWithName",
    "InterceptorWithReady",
    "batch_to_single",
]
