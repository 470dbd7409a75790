"""Value types of the public API: channels, open and read options, append results."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgumentError
from .message import MessageID, TxnContext
from .message._message import check_text
from .options import DeliverFilter, DeliverPolicy

__all__ = ["AccessMode", "AppendResult", "OpenOption", "PChannelInfo", "ReadOption", "validate_channel_name"]

MAX_CHANNEL_NAME_BYTES = 200


class AccessMode(enum.IntEnum):
    """RW: the single writer of a channel. RO: a follower that reads while a writer (maybe elsewhere) appends."""

    RW = 0
    RO = 1


@dataclass(frozen=True, slots=True)
class PChannelInfo:
    """A physical channel: one log. ``term`` grows each time a new writer takes the channel over."""

    name: str
    term: int = 1
    access_mode: AccessMode = AccessMode.RW

    def __str__(self) -> str:
        return f"{self.name}@{self.term}"


def validate_channel_name(name: object) -> str:
    """Refuse names that could escape a directory or confuse tools: separators, ``.``/``..``, NUL, > 200 bytes."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"channel name must be str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("channel name is empty")
    if name in (".", ".."):
        raise InvalidArgumentError(f"channel name {name!r} is not allowed")
    for bad in ("/", "\\", "\0"):
        if bad in name:
            raise InvalidArgumentError(f"channel name {name!r} contains a forbidden character {bad!r}")
    if not name.isprintable():
        raise InvalidArgumentError(f"channel name {name!r} contains control characters")
    if len(name.encode("utf-8")) > MAX_CHANNEL_NAME_BYTES:
        raise InvalidArgumentError(f"channel name is longer than {MAX_CHANNEL_NAME_BYTES} bytes")
    return name


@dataclass(frozen=True, slots=True)
class OpenOption:
    """What to open: one channel, at one term, in one access mode."""

    channel: PChannelInfo

    def validate(self) -> None:
        """Raise :class:`~wal.errors.InvalidArgumentError` for an unusable channel (nothing is created)."""
        if not isinstance(self.channel, PChannelInfo):
            raise InvalidArgumentError(f"OpenOption.channel must be a PChannelInfo, got {type(self.channel).__name__}")
        validate_channel_name(self.channel.name)
        term = self.channel.term
        if not isinstance(term, int) or isinstance(term, bool) or not 0 <= term < 1 << 64:
            # Stored as an unsigned 64-bit int: a larger one used to be written to TERM before the open failed,
            # leaving every valid term fenced for good.
            raise InvalidArgumentError(f"term must be an int in [0, 2**64), got {term!r}")
        if not isinstance(self.channel.access_mode, AccessMode):
            raise InvalidArgumentError(f"unknown access mode {self.channel.access_mode!r}")


@dataclass(frozen=True, slots=True)
class ReadOption:
    """How to read: where to start, what to keep, which vchannel.

    ``vchannel`` keeps that vchannel's messages and those addressed to every vchannel; None keeps everything.
    ``""`` raises :class:`~wal.errors.InvalidArgumentError`: it names no vchannel (on a message it means "for every
    vchannel"), so it is a mistake, most often a name that was never filled in; it used to read everything, quietly.
    ``name`` names the scanner (generated when None).
    """

    deliver_policy: DeliverPolicy = field(default_factory=DeliverPolicy.all)
    deliver_filters: Sequence[DeliverFilter] = ()
    vchannel: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        # Checked here, where the mistake is made: a bad filter otherwise failed at the first recv, in the reader's
        # loop, and a non-str vchannel selected everything on one backend and nothing on another.
        if not isinstance(self.deliver_policy, DeliverPolicy):
            raise InvalidArgumentError(
                f"deliver_policy must be a DeliverPolicy (DeliverPolicy.all(), ...), got {self.deliver_policy!r}"
            )
        fs = self.deliver_filters
        if isinstance(fs, DeliverFilter) or not isinstance(fs, Sequence) or isinstance(fs, str | bytes):
            raise InvalidArgumentError(f"deliver_filters must be a list of DeliverFilter, got {fs!r}")
        bad = [f for f in fs if not isinstance(f, DeliverFilter)]
        if bad:
            raise InvalidArgumentError(f"deliver_filters holds something that is not a DeliverFilter: {bad[0]!r}")
        for what, v in (("vchannel", self.vchannel), ("name", self.name)):
            if v is not None and not isinstance(v, str):
                raise InvalidArgumentError(f"{what} must be a str or None, got {v!r}")
        if self.vchannel is not None:
            check_text(self.vchannel, "vchannel")
        if self.vchannel == "":
            raise InvalidArgumentError('vchannel "" names no vchannel: pass None to read every vchannel')


@dataclass(slots=True)
class AppendResult:
    """What an append returns.

    ``time_tick`` is the message's hybrid timestamp; ``last_confirmed_message_id`` is a point from which reading
    (with ``time_tick_gt(time_tick)``) sees every later message; ``txn_ctx`` is set inside a transaction;
    ``extra`` is whatever interceptors attached.
    """

    message_id: MessageID
    time_tick: int = 0
    # Typed as always set, which the WAL guarantees (the ack manager's ID, or the message's own), so that the
    # documented resume, ``start_from(r.last_confirmed_message_id)``, type-checks without a cast (review 15b). The
    # None default is for a backend author's or a test's result built by hand.
    last_confirmed_message_id: MessageID = None  # type: ignore[assignment]
    txn_ctx: TxnContext | None = None
    extra: Any = None
