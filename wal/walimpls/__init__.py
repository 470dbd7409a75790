"""Backend interfaces (``walimpls``): implement these to add a storage engine under the WAL.

Built-in backends: :mod:`wal.walimpls.localfs` (segmented files on one disk, the default for real use) and
:mod:`wal.walimpls.memory` (in-process reference, for tests). The conformance kit in :mod:`wal.helper.conformance`
checks a backend against these interfaces.
"""

from .._types import OpenOption as OpenOption
from ._interfaces import OpenerBuilderImpls as OpenerBuilderImpls
from ._interfaces import OpenerImpls as OpenerImpls
from ._interfaces import ReadOption as ReadOption
from ._interfaces import ROWALImpls as ROWALImpls
from ._interfaces import ScannerImpls as ScannerImpls
from ._interfaces import WALImpls as WALImpls

__all__ = [
    "OpenOption",
    "OpenerBuilderImpls",
    "OpenerImpls",
    "ROWALImpls",
    "ReadOption",
    "ScannerImpls",
    "WALImpls",
]
