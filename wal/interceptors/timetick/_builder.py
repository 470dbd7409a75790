"""Builder of the time-tick interceptor: the adaptor puts the WAL's clock-driven managers in the build param."""

from __future__ import annotations

from ...errors import InvalidArgumentError
from .._interfaces import Interceptor, InterceptorBuildParam
from ._interceptor import TimeTickInterceptor

__all__ = ["TimeTickInterceptorBuilder"]


class TimeTickInterceptorBuilder:
    def build(self, param: InterceptorBuildParam) -> Interceptor:
        if param.ack_manager is None or param.txn_manager is None or param.mvcc_manager is None:
            raise InvalidArgumentError("the time-tick interceptor needs the ack, txn and MVCC managers of its WAL")
        return TimeTickInterceptor(param.ack_manager, param.txn_manager, param.mvcc_manager)
