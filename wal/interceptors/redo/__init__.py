"""The redo interceptor: lets inner interceptors ask for a fresh pass (a new time tick) by raising RedoError."""

from ._redo import RedoError as RedoError
from ._redo import RedoInterceptor as RedoInterceptor
from ._redo import RedoInterceptorBuilder as RedoInterceptorBuilder

__all__ = ["RedoError", "RedoInterceptor", "RedoInterceptorBuilder"]
