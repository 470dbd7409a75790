"""The README's library example runs as written (only its root directory is swapped for a temporary one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    code = text.split("## Using the library", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "/var/lib/myapp/wal" in code
    code = code.replace("/var/lib/myapp/wal", str(tmp_path / "wal"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("localfs:") and lines[1] == "INSERT b'{\"id\": 1}' {'kind': 'order'}", lines
