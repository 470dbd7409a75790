"""Helpers shared by the CLI tests (not a test module): run `python -m wal` as a user would, make channels."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from wal import OpenOption, PChannelInfo, registry
from wal.message import MessageType, MutableMessage

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PY = sys.executable


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("WAL_LOCALFS_ROOT", None)
    return env


def wal_cmd(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m wal ARGS``, output captured as text."""
    return subprocess.run([PY, "-m", "wal", *args], capture_output=True, text=True, timeout=timeout, env=child_env(),
                          **kw)


def fill(root: Path, channel: str = "p1", n: int = 100, *, crash_image: Path | None = None) -> list[str]:
    """Append ``n`` messages (payload ``m-<i>``, property ``i``) on small segments; returns their IDs.

    With ``crash_image``, the channel directory is also copied there while the writer still has it open (what a
    crash leaves: no clean-close summary).
    """
    opener = registry.must_get_builder("localfs").build(root=str(root), segment_bytes=4096)
    try:
        w = opener.open(OpenOption(channel=PChannelInfo(name=channel, term=1)))
        ids = [w.append(MutableMessage(MessageType.INSERT, f"m-{i}".encode() * 3, {"i": str(i)}, "v1")).message_id
               for i in range(n)]
        if crash_image is not None:
            shutil.copytree(root / channel, crash_image / channel)
        w.close()
    finally:
        opener.close()
    return [i.marshal() for i in ids]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def start_writer(root: Path, channel: str = "p1", term: int = 2) -> subprocess.Popen[str]:
    p = subprocess.Popen([PY, str(TESTS / "_cli_child.py"), str(root), channel, str(term)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), bufsize=1)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line == "ready\n", (line, p.stderr.read() if p.poll() is not None and p.stderr else "")
    return p


def writer_append(p: subprocess.Popen[str], n: int, tag: str) -> list[str]:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"append {n} {tag}\n")
    p.stdin.flush()
    line = p.stdout.readline()
    assert line.startswith("acked "), line
    return line.split()[1].split(",")


def writer_txn(p: subprocess.Popen[str], n: int, tag: str) -> str:
    """Commit a transaction of ``n`` messages; returns the commit's ID."""
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(f"txn {n} {tag}\n")
    p.stdin.flush()
    line = p.stdout.readline()
    assert line.startswith("committed "), line
    return line.split()[1]


def stop_writer(p: subprocess.Popen[str]) -> None:
    """Close the writer's stdin (it closes its WAL and exits) and check that it exited cleanly."""
    try:
        _out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    assert p.returncode == 0, err
