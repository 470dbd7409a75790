"""Write-side transactions: sessions (state, keepalive, in-flight body) and their manager."""

from ._manager import TxnManager as TxnManager
from ._session import TxnSession as TxnSession

__all__ = ["TxnManager", "TxnSession"]
