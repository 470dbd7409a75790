"""Security: channel names cannot escape the root, files and directories are owner-only, message size is limited
with a clear error, nothing read from disk reaches pickle/eval/exec, and the CLI never touches a path outside
--root because of what a file says (or a symlink planted in the root points at)."""

from __future__ import annotations

import ast
import builtins
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_rw

from wal import AccessMode, OpenOption, PChannelInfo, registry
from wal.errors import InvalidArgumentError, WALError
from wal.message import MessageType, MutableMessage

WAL_PKG = Path(__file__).resolve().parent.parent / "wal"

BAD_NAMES = [
    "..", ".", "../escape", "a/../../escape", "/abs", "/tmp/abs", "a/b", "a\\b", "nul\0byte", "", "x" * 201,
    "é" * 101, "tab\tname", "new\nline", "../" * 10 + "etc",
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
@pytest.mark.parametrize("mode", [AccessMode.RW, AccessMode.RO])
@pytest.mark.parametrize("layer", ["backend", "wal"])
def test_channel_names_cannot_escape_root(tmp_path: Path, name: str, mode: AccessMode, layer: str) -> None:
    outer = tmp_path / "outer"
    root = outer / "root"
    root.mkdir(parents=True, mode=0o700)
    before = _tree(outer)
    if layer == "backend":
        opener: Any = build(root)
    else:
        opener = registry.must_get_builder("localfs").build(root=str(root), segment_bytes=1 << 20)
    try:
        with pytest.raises(InvalidArgumentError):
            opener.open(OpenOption(channel=PChannelInfo(name=name, term=1, access_mode=mode)))
    finally:
        opener.close()
    assert _tree(outer) == before, "a refused channel name created something"


def test_longest_valid_name_stays_inside_root(tmp_path: Path) -> None:
    opener = build(tmp_path / "r")
    try:
        w = open_rw(opener, "x" * 200)
        w.append(msg(b"p", tt=1))
        w.close()
    finally:
        opener.close()
    assert (tmp_path / "r" / ("x" * 200)).is_dir()
    assert {p.parent for p in (tmp_path / "r").rglob("*") if p.is_file()} == {tmp_path / "r" / ("x" * 200)}


def test_files_and_directories_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        root = tmp_path / "deep" / "root"
        opener = registry.must_get_builder("localfs").build(root=str(root), segment_bytes=4096)
        try:
            w = opener.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
            for i in range(60):
                w.append(MutableMessage(MessageType.INSERT, bytes(200) + bytes([i]), {"k": "v"}, "v1"))
            w.close()
            w = opener.open(OpenOption(channel=PChannelInfo(name="p1", term=2)))  # TERM rewritten, recovery ran
            ro = opener.open(OpenOption(channel=PChannelInfo(name="p2", term=0, access_mode=AccessMode.RO)))
            ro.close()
            w.close()
        finally:
            opener.close()
    finally:
        os.umask(old)
    n = 0
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, f"{p}: directory mode {mode:o}"
        else:
            assert mode == 0o600, f"{p}: file mode {mode:o}"
        n += 1
    assert n > 10
    assert stat.S_IMODE((tmp_path / "deep").stat().st_mode) == 0o700  # parents the backend created


def test_message_size_limit_is_a_clear_error_and_stores_nothing(tmp_path: Path) -> None:
    opener = build(tmp_path, max_message_bytes=10_000)
    try:
        w = open_rw(opener)
        w.append(msg(b"a" * 9000, tt=1))
        for big in (msg(b"a" * 10_001, tt=2), msg(b"a", tt=2, props={"k": "v" * 10_001}),
                    msg(b"a" * 5000, tt=2, props={"k": "v" * 5000})):
            with pytest.raises(InvalidArgumentError, match="max_message_bytes"):
                w.append(big)
        nxt = w.append(msg(b"small", tt=3))
        assert int(nxt.value) == 2, "a refused message used up an ID"
        w.close()
    finally:
        opener.close()
    wo = registry.must_get_builder("localfs").build(root=str(tmp_path / "w"), segment_bytes=1 << 20,
                                                    max_message_bytes=4096)
    try:
        w2 = wo.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
        with pytest.raises(WALError, match="max_message_bytes"):
            w2.append(MutableMessage(MessageType.INSERT, bytes(5000), None, "v1"), timeout=5)
        w2.append(MutableMessage(MessageType.INSERT, b"ok", None, "v1"), timeout=5)
        w2.close()
    finally:
        wo.close()


def test_nothing_in_wal_deserialises_with_pickle_eval_or_exec() -> None:
    """A grep of the AST: no pickle/marshal/shelve/yaml import, no eval/exec/compile/__import__ call in wal/."""
    banned_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "yaml", "jsonpickle"}
    banned_calls = {"eval", "exec", "compile", "__import__"}
    found = []
    files = list(WAL_PKG.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"{path}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in banned_modules:
                found.append(f"{path}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in banned_calls and not (isinstance(f, ast.Attribute) and name == "compile"):
                    found.append(f"{path}:{node.lineno} call {name}")
                if isinstance(f, ast.Attribute) and name in ("loads", "load") and isinstance(f.value, ast.Name) \
                        and f.value.id in banned_modules:
                    found.append(f"{path}:{node.lineno} {f.value.id}.{name}")
    assert not found, "\n".join(found)


# -- the CLI ----------------------------------------------------------------------------------------------------------
def _hostile_root(tmp_path: Path, links: bool) -> tuple[Path, Path]:
    """A root whose files name outside paths everywhere they can, plus symlinks that point outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.seg"
    victim.write_bytes(b"VICTIM" * 1000)
    (outside / "00000000000000000001.seg").write_bytes(b"VICTIM" * 1000)
    root = tmp_path / "root"
    opener = build(root, segment_bytes=4096)
    try:
        w = open_rw(opener, "p1", 1)
        for i in range(40):
            w.append(msg(str(outside).encode() + b"/../" * i, tt=i + 1, vchannel="../../" + str(outside),
                          props={"path": str(victim), "file": "../../outside/victim.seg"}))
        w.close()
    finally:
        opener.close()
    if links:
        (root / "p1" / "00000000000000099999.seg").symlink_to(victim)  # a planted symlink
        (root / "evil").symlink_to(outside, target_is_directory=True)  # a "channel" that is a link outside
    return root, outside


def _snapshot(d: Path) -> dict[str, tuple[bytes, float]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime) for p in d.rglob("*") if p.is_file()}


ARGVS = [
    ["info"], ["info", "--json"], ["verify"], ["verify", "--channel", "p1"], ["dump", "--channel", "p1"],
    ["dump", "--channel", "p1", "--json", "--payload", "hex"], ["repair", "--channel", "p1"],
    ["verify", "--channel", "../outside"], ["dump", "--channel", "../outside"], ["tail", "--channel", "../x"],
]


def _ids(a: list[str]) -> str:
    return "-".join(a).replace("/", "_")


@pytest.mark.parametrize("argv", ARGVS, ids=_ids)
def test_cli_never_follows_file_contents_outside_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      argv: list[str]) -> None:
    _cli_check(tmp_path, monkeypatch, argv, links=False)


@pytest.mark.parametrize("argv", [
    ["info"], ["verify"], ["verify", "--channel", "p1"], ["repair", "--channel", "p1"],
    ["repair", "--channel", "evil"], ["dump", "--channel", "evil"],
], ids=_ids)
def test_cli_never_follows_symlinks_outside_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 argv: list[str]) -> None:
    _cli_check(tmp_path, monkeypatch, argv, links=True)


def _cli_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], links: bool) -> None:
    from click.testing import CliRunner

    from wal._cli import cli

    root, outside = _hostile_root(tmp_path, links)
    before = _snapshot(outside)
    touched: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file: Any, *a: Any, **k: Any) -> Any:
        if isinstance(file, str | os.PathLike):
            touched.append(os.path.realpath(os.fspath(file)))
        return real_open(file, *a, **k)

    def spy_os_open(path: Any, *a: Any, **k: Any) -> Any:
        touched.append(os.path.realpath(os.fspath(path)))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    result = CliRunner().invoke(cli, [*argv[:1], "--root", str(root), *argv[1:]], catch_exceptions=False)
    monkeypatch.undo()
    assert result.exit_code in (0, 1, 2), result.output
    assert _snapshot(outside) == before, "the CLI changed a file outside --root"
    escaped = [p for p in touched if p.startswith(str(outside.resolve()))]
    assert not escaped, f"the CLI opened files outside --root: {escaped}"
