"""wal: a write-ahead log for Python.

Open a channel on a backend, append messages, read them back in order::

    from wal import registry, OpenOption, PChannelInfo, ReadOption
    from wal.message import MessageType, MutableMessage

    opener = registry.must_get_builder("localfs").build(root="/tmp/wal-example")
    with opener, opener.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        r = w.append(MutableMessage(MessageType.INSERT, b"hello", {"k": "v"}, vchannel="v1"))
        with w.read(ReadOption()) as s:
            ...

Layers (see docs/ARCHITECTURE.md): ``wal`` (this package: interfaces and value types), ``wal.message``,
``wal.options``, ``wal.errors``, ``wal.registry``, ``wal.walimpls`` (backend interfaces and backends),
``wal.adaptor`` (backend -> full WAL), ``wal.interceptors``, ``wal.utility``, ``wal.helper``.
"""

from . import errors as errors
from . import message as message
from . import options as options
from . import registry as registry
from ._interfaces import ROWAL as ROWAL
from ._interfaces import WAL as WAL
from ._interfaces import Opener as Opener
from ._interfaces import OpenerBuilder as OpenerBuilder
from ._interfaces import Scanner as Scanner
from ._interfaces import Txn as Txn
from ._types import AccessMode as AccessMode
from ._types import AppendResult as AppendResult
from ._types import OpenOption as OpenOption
from ._types import PChannelInfo as PChannelInfo
from ._types import ReadOption as ReadOption
from .errors import WALError as WALError
from .options import DeliverFilter as DeliverFilter
from .options import DeliverPolicy as DeliverPolicy

__version__ = "0.1.0"

__all__ = [
    "ROWAL",
    "WAL",
    "AccessMode",
    "AppendResult",
    "DeliverFilter",
    "DeliverPolicy",
    "OpenOption",
    "Opener",
    "OpenerBuilder",
    "PChannelInfo",
    "ReadOption",
    "Scanner",
    "Txn",
    "WALError",
    "__version__",
    "errors",
    "message",
    "options",
    "registry",
]

# Built-in backends register themselves on import (after the names above exist, so they can import them).
from .walimpls import _builtin  # noqa: F401
