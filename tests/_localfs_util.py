"""Helpers shared by the localfs tests (not a test module)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from wal import AccessMode, OpenOption, PChannelInfo
from wal.errors import WALTimeoutError
from wal.message import ImmutableMessage, MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.registry import get_impls_builder
from wal.walimpls import OpenerImpls, ReadOption, ROWALImpls

ROOT = Path(__file__).resolve().parent.parent


SEGMENT_BYTES = 1 << 20
"""The tests' segment size, unless a test asks for another: the default (64 MiB) preallocates that much per channel,
kept under pytest's basetemp until the run ends (7.4 GB at the peak for 18 of the test files in session 17)."""


def build(root: Path | str, **options: Any) -> OpenerImpls:
    options.setdefault("segment_bytes", SEGMENT_BYTES)
    return get_impls_builder("localfs").build(root=str(root), **options)


def open_rw(opener: OpenerImpls, name: str = "p1", term: int = 1) -> Any:
    return opener.open(OpenOption(channel=PChannelInfo(name=name, term=term)))


def open_ro(opener: OpenerImpls, name: str = "p1") -> Any:
    return opener.open(OpenOption(channel=PChannelInfo(name=name, term=0, access_mode=AccessMode.RO)))


def msg(payload: bytes, tt: int = 0, vchannel: str | None = None, props: dict[str, str] | None = None,
        mtype: MessageType = MessageType.INSERT) -> MutableMessage:
    m = MutableMessage(mtype, payload, props, vchannel)
    m.time_tick = tt
    return m


def read_all(w: ROWALImpls, policy: DeliverPolicy | None = None, idle: float = 0.3) -> list[ImmutableMessage]:
    """Everything readable now: stops after ``idle`` seconds without a message."""
    out: list[ImmutableMessage] = []
    with w.read(ReadOption(name="t", deliver_policy=policy or DeliverPolicy.all())) as s:
        while True:
            try:
                out.extend(s.recv_batch(4096, idle))
            except WALTimeoutError:
                return out


def payload_for(seed: int, thread: int, n: int) -> bytes:
    """Deterministic payloads, so a crash test can check exact bytes from an ack line."""
    h = hashlib.sha256(f"{seed}/{thread}/{n}".encode()).digest()
    return h * (1 + (h[0] % 12))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


PY = sys.executable
