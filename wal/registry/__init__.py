"""Backend registry: ``register_builder(builder)``, ``must_get_builder("localfs")``."""

from ._registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._registry import get_impls_builder as get_impls_builder
from ._registry import must_get_builder as must_get_builder
from ._registry import register_builder as register_builder
from ._registry import registered_names as registered_names

__all__ = ["ENTRY_POINT_GROUP", "get_impls_builder", "must_get_builder", "register_builder", "registered_names"]
