"""The public API type-checks as the README uses it: a user's ``mypy --strict`` needs no cast.

Why a test: typing is part of the API (``py.typed`` is shipped), and a too-loose annotation shows only in a user's
checker. ``AppendResult.last_confirmed_message_id`` was ``MessageID | None`` though never None, so the README's
resume (``start_from(r.last_confirmed_message_id)``) failed ``mypy --strict`` (review 15b)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_PROGRAM = '''
import dataclasses

from wal import ROWAL, AccessMode, OpenOption, PChannelInfo, ReadOption, registry
from wal.message import ImmutableTxnMessage, MessageType, MutableMessage
from wal.options import DeliverPolicy

with registry.must_get_builder("memory").build() as op, op.open(OpenOption(PChannelInfo("c", 1))) as w:
    r = w.append(MutableMessage(MessageType.INSERT, b"x", vchannel="v"))
    with w.begin_txn("v") as t:
        t.append(MutableMessage(MessageType.INSERT, b"y", vchannel="v"))
    with w.read(ReadOption(deliver_policy=DeliverPolicy.start_from(r.last_confirmed_message_id))) as s:
        for m in s:
            if isinstance(m, ImmutableTxnMessage):
                bodies: list[bytes] = [bytes(b.payload) for b in m.messages]
                break
    w.truncate(r.last_confirmed_message_id)
    f = w.append_async(MutableMessage(MessageType.INSERT, b"z", vchannel="v"))
    tick: int = f.result(timeout=5).time_tick
    with w.begin_txn("v", keepalive=5.0, timeout=5.0) as t:
        t.append(MutableMessage(MessageType.INSERT, b"y", vchannel="v"))
    # A follower's channel derived from the writer's, and a channel variable given another mode: what a typed RO open
    # (open() overloaded on a generic PChannelInfo) would refuse; review 16b left open() typed WAL for them.
    follower: ROWAL = op.open(OpenOption(dataclasses.replace(w.channel, access_mode=AccessMode.RO)))
    ch = PChannelInfo("c", 1)
    ch = PChannelInfo("c", 0, AccessMode.RO)
    follower.close()
'''


@pytest.mark.slow
def test_the_readme_usage_passes_mypy_strict(tmp_path: Path) -> None:
    prog = tmp_path / "user_program.py"
    prog.write_text(USER_PROGRAM)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(prog)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
