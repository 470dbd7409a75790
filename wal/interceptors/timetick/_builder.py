"""Builder of the time-tick interceptor: the adaptor puts the WAL's clock-driven managers in the build param."""

from __future__ import annotations

from ...errors import InvalidArgumentError
from .._interfaces import Interceptor, InterceptorBuildParam
from ._interceptor import TimeTickInterceptor

__all__ = ["TimeTickInterceptorBuilder"]


class TimeTickInterceptorBuilder:
    def build(self, param: InterceptorBuildParam) -> Interceptor:
        if None in (param.ack_manager, param.txn_manager, param.mvcc_manager, param.clock):
            raise InvalidArgumentError("the time-tick interceptor needs its WAL's clock, ack, txn and MVCC managers")
        # The buffer's compact entries are what the interceptor hands over for plain batches (see _wab_compact).
        compact_ids = getattr(param.write_ahead_buffer, "compact_id_class", None)
        # The adaptor's options (AdaptorOptions) when built by it; a backend author's test may pass none.
        close_timeout = getattr(param.options, "txn_close_timeout", 3.0)
        return TimeTickInterceptor(
            param.ack_manager,
            param.txn_manager,
            param.mvcc_manager,
            param.clock,
            graceful_close_timeout=close_timeout,
            compact_ids=compact_ids,
            wab=param.write_ahead_buffer,
        )
