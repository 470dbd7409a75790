"""Static registry of backend builders.

Built-in backends register when :mod:`wal` is imported; third-party ones either call :func:`register_builder`
or declare an entry point in the ``wal.backends`` group (loaded the first time an unknown name is asked for).
"""

from __future__ import annotations

import importlib.metadata
import threading
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, UnknownBackendError
from ..walimpls import OpenerBuilderImpls

if TYPE_CHECKING:
    from .._interfaces import OpenerBuilder

__all__ = ["get_impls_builder", "must_get_builder", "register_builder", "registered_names"]

ENTRY_POINT_GROUP = "wal.backends"

_lock = threading.Lock()
_builders: dict[str, OpenerBuilderImpls] = {}
_entry_points_loaded = False


def register_builder(builder: OpenerBuilderImpls) -> None:
    """Register a backend builder under ``builder.name``; a name registered twice raises."""
    if not isinstance(builder, OpenerBuilderImpls):
        raise InvalidArgumentError(f"register_builder takes an OpenerBuilderImpls, got {type(builder).__name__}")
    name = builder.name
    with _lock:
        if name in _builders:
            raise InvalidArgumentError(f"walimpls builder already registered: {name!r}")
        _builders[name] = builder


def registered_names() -> list[str]:
    """The names of the registered backends, sorted (what ``must_get_builder`` accepts), entry points' included."""
    load_entry_points()
    with _lock:
        return sorted(_builders)


def load_entry_points() -> None:
    """Load the backends declared in the ``wal.backends`` entry point group (once; each registers itself)."""
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj: Any = ep.load()  # a module that registers itself on import, or a builder (class or instance)
        if isinstance(obj, type) and issubclass(obj, OpenerBuilderImpls):
            obj = obj()
        if isinstance(obj, OpenerBuilderImpls) and obj.name not in _builders:
            register_builder(obj)


def get_impls_builder(name: str) -> OpenerBuilderImpls:
    """The raw backend builder; raises :class:`~wal.errors.UnknownBackendError` (a ``KeyError``)."""
    if not isinstance(name, str):  # a list raised a bare "unhashable type" TypeError (review 13b)
        raise UnknownBackendError(f"a backend name is a str, got {name!r}")
    b = _builders.get(name)
    if b is None:
        load_entry_points()
        b = _builders.get(name)
    if b is None:
        known = ", ".join(registered_names()) or "none"
        raise UnknownBackendError(f"walimpls builder not found: {name!r} (known backends: {known})")
    return b


def must_get_builder(name: str, *interceptor_builders: Any) -> OpenerBuilder:
    """The full-WAL builder of backend ``name``: the backend wrapped by the adaptor.

    ``interceptor_builders`` are user interceptors, placed after the built-ins; the first one is the outermost.
    An unknown ``name`` raises :class:`~wal.errors.UnknownBackendError` (a ``KeyError``) listing the known ones.
    """
    from ..adaptor import adapt_impls_to_builder

    return adapt_impls_to_builder(get_impls_builder(name), *interceptor_builders)
