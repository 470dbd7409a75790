"""Errors of the scanner-side data structures."""

from __future__ import annotations

from ..errors import InvalidArgumentError, WALError

__all__ = ["DuplicateMessageError", "EvictedError", "TimeTickViolationError"]


class TimeTickViolationError(InvalidArgumentError):
    """A message arrived with a time tick below one already released (or pushed) in order."""


class DuplicateMessageError(InvalidArgumentError):
    """A message ID was pushed twice; happens when a scanner switches streams and the two overlap."""


class EvictedError(WALError):
    """The write-ahead buffer no longer holds the requested position: read it from the backend instead."""
