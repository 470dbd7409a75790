"""tools/crashloop.py, reduced: 50 SIGKILLs of a full-WAL writer (threads and pipelined append_async, random sizes
and segment sizes); every acknowledged message must come back, in order, with its exact payload."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "crashloop.py"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_crashloop_50_kills(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(TOOL), "--kills", "50", "--seed", "20261127", "--root", str(tmp_path), "--quiet",
         "--reset-every", "25"],
        capture_output=True, text=True, timeout=170,
    )
    summary = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"kills=(\d+) acks=(\d+) verified=(\d+) lost=(\d+)", summary)
    assert m, summary
    kills, acks, verified, lost = (int(x) for x in m.groups())
    assert kills == 50 and lost == 0
    assert acks > 20 * kills, f"too few acknowledged appends for a meaningful test: {summary}"
    assert verified >= acks


def test_crashloop_detects_loss(tmp_path: Path) -> None:
    """The checker itself can fail: with the newest segment deleted after each kill it must report a loss."""
    p = subprocess.run(
        [sys.executable, str(TOOL), "--kills", "3", "--seed", "5", "--root", str(tmp_path), "--quiet", "--sabotage"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "lost=0" not in p.stdout and "FAILED" in p.stdout
