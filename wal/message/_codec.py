"""Encodings of the reserved properties, as Milvus writes them: integers in base 36, short and ASCII-only."""

from __future__ import annotations

import string

__all__ = [
    "RESERVED_PREFIX",
    "decode_int",
    "encode_int",
]

RESERVED_PREFIX = "_"
_DIGITS = string.digits + string.ascii_lowercase


def encode_int(value: int) -> str:
    """Base-36 text of an integer (negative numbers get a leading ``-``)."""
    if value == 0:
        return "0"
    sign = ""
    if value < 0:
        sign, value = "-", -value
    out: list[str] = []
    while value:
        value, rem = divmod(value, 36)
        out.append(_DIGITS[rem])
    return sign + "".join(reversed(out))


def decode_int(data: str) -> int:
    """Inverse of :func:`encode_int`; raises ``ValueError`` on anything else."""
    if not data or data.strip() != data or "_" in data:
        raise ValueError(f"not a base-36 integer: {data!r}")
    return int(data, 36)
