"""The adaptor: turns any backend (:mod:`wal.walimpls`) into a full :class:`wal.WAL`.

It owns lifetimes (opener → WAL → scanner, each close waiting for calls in flight), the append path (a dispatcher
thread per WAL batching queued appends through the interceptor chain into one backend group commit), the first
time tick on open, the periodic tick, and scanners that catch up from the backend and tail from the in-memory
write-ahead buffer.
"""

from ._builder import OpenerBuilderAdaptor as OpenerBuilderAdaptor
from ._builder import adapt_impls_to_builder as adapt_impls_to_builder
from ._options import AdaptorOptions as AdaptorOptions

__all__ = ["AdaptorOptions", "OpenerBuilderAdaptor", "adapt_impls_to_builder"]
