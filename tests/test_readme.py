"""The README's library example runs as written (only its root directory is swapped for a temporary one)."""

from __future__ import annotations

import re
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


def test_message_members_the_docs_call_are_methods() -> None:
    """``m.name()`` in the docs must be a method of a delivered message: ``m.is_persisted()``, as the README's resume
    advice spelled it, raised ``TypeError: 'bool' object is not callable`` (it is a property)."""
    from wal.message import ImmutableMessage, ImmutableTxnMessage

    pattern = re.compile(r"`[^`]*?\bm\.([a-z_]+)\(")
    assert pattern.findall("(`not m.is_persisted()`, an") == ["is_persisted"]
    called = set()
    for doc in ("README.md", "docs/RELIABILITY.md", "docs/ARCHITECTURE.md"):
        text = " ".join((ROOT / doc).read_text().split())  # a call may be wrapped over two lines
        called |= set(pattern.findall(text))
    for name in sorted(called):
        member = getattr(ImmutableTxnMessage, name, None) or getattr(ImmutableMessage, name, None)
        assert member is not None, f"the docs call m.{name}(), which a message does not have"
        assert not isinstance(member, property) and callable(member), f"the docs call m.{name}(), a property"


def test_help_of_a_wal_names_the_option_that_bounds_its_closes_wait() -> None:
    """``help(wal.WAL)`` said ``close()`` waits "up to 3 s" for open txns, a fixed wait, after the wait had become
    the build option ``txn_close_timeout``: a reader of the docstring had no way to learn it could be changed."""
    import inspect

    import wal

    doc = " ".join((inspect.getdoc(wal.WAL) or "").split())
    assert "txn_close_timeout" in doc, doc
