"""``adapt_impls_to_builder``: a backend builder plus interceptor builders → a full-WAL builder."""

from __future__ import annotations

from typing import Any

from .._interfaces import Opener, OpenerBuilder
from ..errors import InvalidArgumentError
from ..interceptors import InterceptorBuilder
from ..walimpls import OpenerBuilderImpls
from ._opener import OpenerAdaptor
from ._options import split_options

__all__ = ["OpenerBuilderAdaptor", "adapt_impls_to_builder", "builtin_interceptor_builders"]


def builtin_interceptor_builders() -> list[InterceptorBuilder]:
    """redo (outermost, so inner interceptors can ask for a fresh time tick), then timetick."""
    from ..interceptors.redo import RedoInterceptorBuilder
    from ..interceptors.timetick._builder import TimeTickInterceptorBuilder

    return [RedoInterceptorBuilder(), TimeTickInterceptorBuilder()]


class OpenerBuilderAdaptor(OpenerBuilder):
    def __init__(self, impls: OpenerBuilderImpls, interceptors: tuple[InterceptorBuilder, ...]) -> None:
        self._impls = impls
        self._interceptors = interceptors

    @property
    def name(self) -> str:
        return self._impls.name

    def __repr__(self) -> str:
        return f"<OpenerBuilder {self._impls.name!r}>"

    def build(self, **options: Any) -> Opener:
        opts, rest = split_options(options)
        builders = [*builtin_interceptor_builders(), *self._interceptors, *opts.interceptors]
        return OpenerAdaptor(self._impls.name, self._impls.build(**rest), opts, builders)


def adapt_impls_to_builder(impls_builder: OpenerBuilderImpls, *interceptor_builders: Any) -> OpenerBuilder:
    """Wrap a backend builder; ``interceptor_builders`` are user interceptors after the built-ins, first outermost."""
    if not isinstance(impls_builder, OpenerBuilderImpls):
        raise InvalidArgumentError(f"expected an OpenerBuilderImpls, got {type(impls_builder).__name__}")
    for b in interceptor_builders:
        if not isinstance(b, InterceptorBuilder):
            raise InvalidArgumentError(f"interceptor builder {b!r} has no build(param) method")
    return OpenerBuilderAdaptor(impls_builder, tuple(interceptor_builders))
