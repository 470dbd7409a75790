"""The in-memory reference backend, registered as ``"memory"``. It takes no build options."""

from ...message import register_message_id_unmarshaler
from ...registry import register_builder
from ._backend import WAL_NAME as WAL_NAME
from ._backend import MemoryMessageID as MemoryMessageID
from ._backend import MemoryOpener as MemoryOpener
from ._backend import MemoryOpenerBuilder as MemoryOpenerBuilder

__all__ = ["WAL_NAME", "MemoryMessageID", "MemoryOpener", "MemoryOpenerBuilder"]

register_builder(MemoryOpenerBuilder())
register_message_id_unmarshaler(WAL_NAME, MemoryMessageID.parse)
