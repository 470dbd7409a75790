"""Helpers for backend authors: scanner bookkeeping, and the conformance kit (:mod:`wal.helper.conformance`)."""

from ._scanner_helper import PullScanner as PullScanner
from ._scanner_helper import ScannerHelper as ScannerHelper

__all__ = ["PullScanner", "ScannerHelper"]
