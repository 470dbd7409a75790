"""benches/compare_backends.py runs and prints one row per workload (structure only; numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compare_backends_quick_runs() -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "compare_backends.py"), "--quick", "--backends", "localfs,memory"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["workload", "localfs", "memory"]
    for wl in ("durable single append", "pipelined append_async", "catch-up scan"):
        row = next(line for line in lines if line.startswith(wl))
        assert row.count("/s") == 2 and "x)" in row
