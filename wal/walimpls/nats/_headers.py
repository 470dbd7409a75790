"""Message properties <-> NATS headers.

NATS header names are HTTP tokens and values lose surrounding whitespace and line breaks, so arbitrary property
strings are percent-encoded where needed. Reserved ``_`` properties (the WAL's metadata, always plain ASCII) are
stored under their own names; user properties get a ``~`` prefix so they never collide with ``Nats-*`` headers.
Values are stored verbatim when they are printable ASCII without ``%`` or spaces (the common case, no cost).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

__all__ = [
    "H_EXPECTED_LAST_MSG_ID",
    "H_EXPECTED_LAST_SEQ",
    "H_EXPECTED_LAST_SUBJECT_SEQ",
    "H_FENCE",
    "H_MSG_ID",
    "H_TERM",
    "H_WRITER",
    "decode_properties",
    "encode_properties",
]

H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
H_EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_TERM = "Wal-Term"
H_FENCE = "Wal-Fence"
H_WRITER = "Wal-Writer"

_USER = "~"
_KEY_SAFE = "!#$&'*+^`|"  # header-token characters that quote() would escape; '%' stays escaped


def _enc_value(v: str) -> str:
    if v.isascii() and v.isprintable() and "%" not in v and " " not in v:
        return v
    return quote(v, safe="!\"#$&'()*+,/:;<=>?@[\\]^`{|}")


def encode_properties(props: Mapping[str, str]) -> dict[str, str]:
    """Headers for ``MutableMessage.wire_properties()``."""
    out: dict[str, str] = {}
    for k, v in props.items():
        if k.startswith("_"):
            out[k] = _enc_value(v)
        else:
            out[_USER + quote(k, safe=_KEY_SAFE)] = _enc_value(v)
    return out


def decode_properties(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Inverse of :func:`encode_properties`; NATS's own headers are dropped."""
    out: dict[str, str] = {}
    if not headers:
        return out
    for k, v in headers.items():
        if not isinstance(k, str):  # nats-py puts an enum key for status descriptions
            continue
        if k.startswith("_"):
            out[k] = unquote(v)
        elif k.startswith(_USER):
            out[unquote(k[1:])] = unquote(v)
    return out
