"""Channel name -> stream name and subjects.

Channel names may hold characters that NATS names and subject tokens cannot ('.', '*', '>', spaces, non-ASCII), so
everything outside ``[A-Za-z0-9-]`` is escaped as ``_xx`` (UTF-8 bytes in hex; ``_`` itself too): the mapping is
one-to-one and readable for plain names. Very long escaped names are shortened with a hash.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

__all__ = ["ChannelNames", "channel_names"]

_PLAIN = frozenset(string.ascii_letters + string.digits + "-")
_MAX_TOKEN = 180


def _escape(name: str) -> str:
    if all(c in _PLAIN for c in name):
        return name
    out: list[str] = []
    for c in name:
        if c in _PLAIN:
            out.append(c)
        else:
            out.extend(f"_{b:02x}" for b in c.encode("utf-8"))
    return "".join(out)


def _token(name: str) -> str:
    t = _escape(name)
    if len(t) > _MAX_TOKEN:
        t = t[: _MAX_TOKEN - 33] + "_" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
    return t


@dataclass(frozen=True, slots=True)
class ChannelNames:
    stream: str
    data_subject: str
    fence_subject: str


def channel_names(channel: str, stream_prefix: str, subject_prefix: str) -> ChannelNames:
    t = _token(channel)
    base = f"{subject_prefix}.{t}"
    return ChannelNames(stream=stream_prefix + t, data_subject=f"{base}.m", fence_subject=f"{base}.t")
