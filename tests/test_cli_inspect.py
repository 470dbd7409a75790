"""`wal info`, `dump`, `verify`, `repair`, run as a user would (`python -m wal ...` in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _cli_util import fill, snapshot, start_writer, stop_writer, wal_cmd, writer_append

from wal.walimpls.localfs._format import DATA_START


def _segments(root: Path, channel: str = "p1") -> list[dict[str, object]]:
    r = wal_cmd("info", "--root", str(root), "--channel", channel, "--json")
    assert r.returncode == 0, r.stderr
    segs: list[dict[str, object]] = json.loads(r.stdout)["segments"]
    return segs


def test_help_of_every_subcommand_exits_0() -> None:
    for sub in ("verify", "info", "dump", "tail", "repair", "bench", "demo"):
        r = wal_cmd(sub, "--help")
        assert r.returncode == 0, (sub, r.stderr)
        assert "Usage: wal " + sub in r.stdout and "Exit codes" in r.stdout
    r = wal_cmd("--help")
    assert r.returncode == 0 and all(s in r.stdout for s in ("info", "dump", "tail", "verify", "repair", "bench"))


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    fill(tmp_path, n=3)
    assert wal_cmd("verify", "--root", str(tmp_path / "missing")).returncode == 2
    r = wal_cmd("verify", "--root", str(tmp_path), "--channel", "nope")
    assert r.returncode == 2 and "no channel 'nope'" in r.stderr
    assert wal_cmd("dump", "--root", str(tmp_path)).returncode == 2  # --channel is required
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--from", "not-an-id")
    assert r.returncode == 2 and "--from" in r.stderr
    assert wal_cmd("repair", "--root", str(tmp_path), "--channel", "../etc").returncode == 2
    assert wal_cmd("no-such-command").returncode == 2


def test_info_table_and_json(tmp_path: Path) -> None:
    ids = fill(tmp_path, "p1", 100)
    fill(tmp_path, "p2", 2)
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "channel p1" in r.stdout and "channel p2" in r.stdout
    assert "writer running  no" in r.stdout and "term            1" in r.stdout
    last = int(r.stdout.split("last message    id ")[1].split(",")[0])
    assert int(ids[-1]) <= last <= int(ids[-1]) + 2  # a closing time tick may follow the last append
    assert "00000000000000000001.seg" in r.stdout
    segs = _segments(tmp_path)
    assert len(segs) >= 3 and all(s["sealed"] for s in segs[:-1])
    assert segs[0]["first_id"] == 1 and int(str(segs[-1]["last_id"])) >= int(ids[-1])


def test_info_sees_a_writer_in_another_process(tmp_path: Path) -> None:
    p = start_writer(tmp_path, "p1")
    try:
        writer_append(p, 5, "live")
        r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["writer_locked"] is True
    finally:
        stop_writer(p)
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert json.loads(r.stdout)["writer_locked"] is False


def test_verify_clean_exits_0(tmp_path: Path) -> None:
    fill(tmp_path, n=100)
    r = wal_cmd("verify", "--root", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok:" in r.stdout and "no problems" in r.stdout
    r = wal_cmd("verify", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0


def test_verify_flipped_byte_in_sealed_segment_exits_1_and_changes_nothing(tmp_path: Path) -> None:
    fill(tmp_path, n=100)
    seg = _segments(tmp_path)[1]
    assert seg["sealed"]
    path = Path(str(seg["path"]))
    with open(path, "r+b") as f:
        f.seek(DATA_START + 20)
        b = f.read(1)
        f.seek(DATA_START + 20)
        f.write(bytes([b[0] ^ 0x01]))
    before = snapshot(tmp_path)
    r = wal_cmd("verify", "--root", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{path}:{DATA_START}: corrupted record" in r.stdout  # file and offset of the bad record
    assert "problem(s)" in r.stderr
    assert snapshot(tmp_path) == before  # verify never changes a file
    # dump stops at the damage with exit 1 and says where
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and str(path) in r.stderr


def test_dump_json_parses_back(tmp_path: Path) -> None:
    ids = fill(tmp_path, n=30)
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--json", "--payload", "text")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    inserts = [x for x in recs if x["type"] == "INSERT"]
    assert [x["id"] for x in inserts] == ids
    assert [x["payload"] for x in inserts] == [f"m-{i}" * 3 for i in range(30)]
    assert [x["properties"] for x in inserts] == [{"i": str(i)} for i in range(30)]
    assert all(x["vchannel"] == "v1" and x["payload_size"] == len(x["payload"]) for x in inserts)
    ticks = [x["time_tick"] for x in recs]
    assert ticks == sorted(ticks) and all(x["time"].endswith("Z") for x in recs)
    assert recs[0]["type"] == "TIME_TICK"  # opening for write persists a tick first
    # --from (inclusive), --limit, hex payloads
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--json", "--from", ids[10], "--limit", "3",
                "--payload", "hex")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["id"] for x in got] == ids[10:13]
    assert bytes.fromhex(got[0]["payload"]) == b"m-10" * 3
    # the form an ID prints in (str(result.message_id)) is accepted too
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--json", "--from", f"localfs:{ids[10]}",
                "--limit", "1")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ids[10:11]


def test_dump_json_text_payloads_that_are_not_utf8_come_as_exact_hex(tmp_path: Path) -> None:
    """``--json --payload text`` escaped a non-UTF-8 byte 0xff as the four characters ``\\xff``, which a payload
    holding that text also gave: the JSON could not say which bytes were stored (review 15b). Such a payload is
    ``"payload": null`` with its bytes in ``"payload_hex"``; UTF-8 payloads stay text."""
    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    with registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20) as op, \
            op.open(OpenOption(PChannelInfo("bin", 1))) as w:
        for p in (b"\xff", b"\\xff", "h\u00e9".encode()):
            w.append(MutableMessage(MessageType.INSERT, p, None, "v"))
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "bin", "--json", "--payload", "text")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(ln) for ln in r.stdout.splitlines() if '"INSERT"' in ln]
    assert [(x["payload"], x.get("payload_hex")) for x in recs] == [(None, "ff"), ("\\xff", None), ("h\u00e9", None)]


def test_dump_text(tmp_path: Path) -> None:
    ids = fill(tmp_path, n=5)
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--payload", "text")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "TICK"]
    row = next(ln for ln in lines if ln.split()[:1] == [ids[2]])
    assert "INSERT" in row and "v1" in row and "i=2" in row
    assert "payload: m-2m-2m-2" in r.stdout


def test_dump_exits_1_at_a_zeroed_header_inside_the_active_segment(tmp_path: Path) -> None:
    """A zeroed record header amid durable records of a cleanly closed active segment looks like the writer's
    frontier to a scanner: `wal dump` printed the records before it and exited 0 (with `--from` past it: nothing,
    exit 0) while `wal verify` exited 1."""
    import struct

    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    opener = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    with opener, opener.open(OpenOption(channel=PChannelInfo(name="p1", term=1))) as w:
        ids = [w.append(MutableMessage(MessageType.INSERT, b"m" * 50, vchannel="v1")).message_id.marshal()
               for _ in range(100)]
    path = _segments(tmp_path)[-1]["path"]
    with open(str(path), "r+b") as f:  # zero the header of the 50th record (after the writer's opening tick)
        data = f.read()
        pos = DATA_START
        for _ in range(50):
            pos += (32 + struct.unpack_from("<I", data, pos + 4)[0] + 7) & ~7
        f.seek(pos)
        f.write(bytes(32))
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert r.returncode == 1 and f"{path}: corrupted record at offset {pos}" in r.stderr, r.stderr
    assert [x["id"] for x in map(json.loads, r.stdout.splitlines()) if x["type"] == "INSERT"] == ids[:49]
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--from", ids[60])
    assert r.returncode == 1 and f"{path}: corrupted record at offset {pos}" in r.stderr, r.stderr
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--limit", "10")  # stops before the damage
    assert r.returncode == 0, r.stderr
    assert wal_cmd("verify", "--root", str(tmp_path)).returncode == 1


def test_repair_cuts_torn_tail_then_verify_is_clean(tmp_path: Path) -> None:
    image = tmp_path / "image"
    ids = fill(tmp_path / "live", n=60, crash_image=image)  # what a crash leaves behind
    last = _segments(image)[-1]
    end = int(str(last["bytes_used"]))
    with open(str(last["path"]), "r+b") as f:  # a record half written when the machine died
        f.seek(end)
        f.write(b"\x2a\x00\x00\x00torn" * 7)
    r = wal_cmd("verify", "--root", str(image))
    assert r.returncode == 1 and f"{last['path']}:{end}: torn tail" in r.stdout
    r = wal_cmd("repair", "--root", str(image), "--channel", "p1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cut: " in r.stdout and str(end) in r.stdout and "verify ok" in r.stdout
    r = wal_cmd("verify", "--root", str(image))
    assert r.returncode == 0, r.stdout
    r = wal_cmd("repair", "--root", str(image), "--channel", "p1")
    assert r.returncode == 0 and "nothing to repair" in r.stdout
    r = wal_cmd("dump", "--root", str(image), "--channel", "p1", "--json")
    assert [x["id"] for x in map(json.loads, r.stdout.splitlines()) if x["type"] == "INSERT"] == ids


def test_repair_rebuilds_a_missing_index(tmp_path: Path) -> None:
    fill(tmp_path, n=60)
    idx = sorted((tmp_path / "p1").glob("*.idx"))[0]
    idx.unlink()
    assert wal_cmd("verify", "--root", str(tmp_path)).returncode == 1
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and f"rebuilt index: {idx}" in r.stdout
    assert idx.exists() and wal_cmd("verify", "--root", str(tmp_path)).returncode == 0


def test_repair_refused_while_a_writer_runs(tmp_path: Path) -> None:
    fill(tmp_path, n=10)
    p = start_writer(tmp_path, "p1", term=2)  # another process holds the WAL open for writing
    try:
        writer_append(p, 3, "x")
        r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
        assert r.returncode == 1
        assert "refusing to repair" in r.stderr and "writer holds its lock" in r.stderr
        r = wal_cmd("verify", "--root", str(tmp_path))  # verify is fine next to a live writer
        assert r.returncode == 0, r.stdout
        writer_append(p, 3, "y")  # and the writer never noticed
    finally:
        stop_writer(p)
    assert wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1").returncode == 0


def test_a_deleted_lock_file_makes_info_unsure_and_repair_ask_for_confirmation(tmp_path: Path) -> None:
    fill(tmp_path, n=10)
    (tmp_path / "p1" / "LOCK").unlink()  # maybe under a live writer, which keeps its lock on the deleted file
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0 and "writer running  unknown (LOCK was deleted" in r.stdout, r.stdout
    assert wal_cmd("verify", "--root", str(tmp_path)).returncode == 1
    before = snapshot(tmp_path)
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and "--no-writer-running" in r.stderr, r.stderr
    assert snapshot(tmp_path) == before  # nothing written
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1", "--no-writer-running")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "p1" / "LOCK").exists()
    r = wal_cmd("info", "--root", str(tmp_path))
    assert "writer running  no" in r.stdout


def test_repair_refuses_damage_that_is_not_a_torn_tail(tmp_path: Path) -> None:
    fill(tmp_path, n=60)
    seg = _segments(tmp_path)[0]
    with open(str(seg["path"]), "r+b") as f:
        f.seek(DATA_START + 30)
        f.write(b"\xff\xfe")
    before = snapshot(tmp_path)
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and "not repairable" in r.stderr
    assert f"{seg['path']}: corrupted record at offset {DATA_START}" in r.stderr
    # Records are never cut (recovery may clear the last segment's clean-close summary, in the header area).
    after = snapshot(tmp_path)
    assert after.keys() == before.keys()
    assert all(after[k][DATA_START:] == before[k][DATA_START:] for k in before if k.endswith(".seg"))


def test_verify_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess

    from _cli_util import PY, child_env

    fill(tmp_path, n=60)
    r = wal_cmd("verify", "--root", str(tmp_path))
    assert r.returncode == 0 and r.stderr == ""  # stderr is a pipe: no bar
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([PY, "-m", "wal", "verify", "--root", str(tmp_path)], stdout=subprocess.PIPE,
                           stderr=follower, env=child_env(), timeout=60)
        os.close(follower)
        follower = -1
        err = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO once the child side is closed
                break
            if not chunk:
                break
            err += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert p.returncode == 0
    assert b"verifying" in err and b"100%" in err


def test_a_directory_that_is_not_a_channel_is_a_usage_error_and_stays_untouched(tmp_path: Path) -> None:
    """`repair` used to write a LOCK into any directory named as a channel, report "verify ok" and so make it a
    channel that `info` then listed."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    for sub in ("repair", "verify", "info", "dump"):
        r = wal_cmd(sub, "--root", str(tmp_path), "--channel", "x")
        assert r.returncode == 2 and "not a localfs channel" in r.stderr, (sub, r.stdout, r.stderr)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]
    assert "no channels under" in wal_cmd("info", "--root", str(tmp_path)).stdout


def test_a_root_one_level_too_high_gets_a_hint(tmp_path: Path) -> None:
    fill(tmp_path / "data", "p1", 3)
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0 and f"pass --root {tmp_path / 'data'}" in r.stdout, r.stdout
    # verify checked nothing and passed (exit 0; with -q, in silence): a monitoring job pointed one level too high
    # reported a healthy log for ever (review 15b). A usage error, with the hint.
    for quiet in ((), ("-q",)):
        r = wal_cmd("verify", "--root", str(tmp_path), *quiet)
        assert r.returncode == 2 and f"pass --root {tmp_path / 'data'}" in r.stderr, (quiet, r.stdout, r.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = wal_cmd("verify", "--root", str(empty))  # no channel anywhere: nothing to check is not a mistake
    assert r.returncode == 0 and "no channels" in r.stdout, r.stdout


def test_a_root_one_level_too_deep_a_channels_own_directory_is_a_usage_error(tmp_path: Path) -> None:
    """`wal verify --root DATA/p1` (the channel's own directory) said "ok: no channels under DATA/p1" and exited 0,
    with -q in silence: a check that checked nothing passed. It is a usage error naming the right arguments."""
    fill(tmp_path, "p1", 3)
    ch = tmp_path / "p1"
    for args in (("verify",), ("verify", "-q"), ("info",), ("info", "--json")):
        r = wal_cmd(*args, "--root", str(ch))
        assert r.returncode == 2 and f"pass --root {tmp_path} --channel p1" in r.stderr, (args, r.stdout, r.stderr)
    r = wal_cmd("dump", "--root", str(ch), "--channel", "p1")
    assert r.returncode == 2 and f"pass --root {tmp_path} --channel p1" in r.stderr, r.stderr
    assert wal_cmd("verify", "--root", str(tmp_path), "-q").returncode == 0


def test_info_says_when_the_term_file_is_damaged(tmp_path: Path) -> None:
    fill(tmp_path, "p1", 3)
    (tmp_path / "p1" / "TERM").write_bytes(b"garbage")
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and "damaged TERM file" in r.stdout, r.stdout
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert json.loads(r.stdout)["term"] is None


def test_info_names_an_unreadable_first_file_in_its_table_too(tmp_path: Path) -> None:
    """A damaged FIRST (or one that is not a regular file) was in --json's ``unreadable`` but the text output said
    nothing: the channel looked healthy while opening it for write refused. Both outputs name it now."""
    import os

    fill(tmp_path, "p1", 3)
    first = tmp_path / "p1" / "FIRST"
    first.write_bytes(b"garbage")
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and "UNREADABLE      FIRST (unreadable content)" in r.stdout, r.stdout
    first.unlink()
    os.mkfifo(first)
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and "UNREADABLE      FIRST (a FIFO, not a regular file)" in r.stdout, r.stdout
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert json.loads(r.stdout)["unreadable"] == {str(first): "a FIFO, not a regular file"}


def test_repair_rewrites_an_unreadable_term_file_from_the_log(tmp_path: Path) -> None:
    """Opening refuses an unreadable TERM, and repair said "nothing to repair" then "1 problem(s) remain": no way out
    short of writing the file by hand (review 11b). The log's own terms say what it was."""
    fill(tmp_path, "p1", 3)  # term 1
    (tmp_path / "p1" / "TERM").write_bytes(b"garbage")
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and "rewrote TERM" in r.stdout and "with term 1" in r.stdout, (r.stdout, r.stderr)
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert json.loads(r.stdout)["term"] == 1
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and "nothing to repair" in r.stdout, r.stdout


def test_oldest_segment_deleted_from_outside_through_the_command(tmp_path: Path) -> None:
    fill(tmp_path, "p1", 100)
    first_left = int(str(_segments(tmp_path)[1]["first_id"]))
    (tmp_path / "p1" / "00000000000000000001.seg").unlink()
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and f"LOST            ids 1..{first_left - 1}: the oldest segments" in r.stdout, r.stdout
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert json.loads(r.stdout)["lost_front"] == [1, first_left]
    r = wal_cmd("verify", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and f"no segment holds IDs 1..{first_left - 1}" in r.stdout, (r.stdout, r.stderr)
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and "accept-lost-segments" in r.stderr, (r.stdout, r.stderr)
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1", "--accept-lost-segments")
    assert r.returncode == 0 and "verify ok" in r.stdout, (r.stdout, r.stderr)
    (tmp_path / "p1" / "FIRST").write_bytes(b"garbage")
    r = wal_cmd("repair", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 0 and f"rewrote FIRST (it was unreadable) with id {first_left}" in r.stdout, r.stdout


def test_info_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    for k in range(40):
        fill(tmp_path, f"c{k}", 1)
    import subprocess

    from _cli_util import PY, child_env

    p = subprocess.run(f"'{PY}' -m wal info --root '{tmp_path}' | head -1", shell=True, capture_output=True,
                       text=True, env=child_env(), timeout=60)
    assert p.stdout.startswith("channel c0") and "Broken pipe" not in p.stderr and "Traceback" not in p.stderr


def test_verify_into_a_closed_pipe_is_quiet_and_keeps_its_exit_status(tmp_path: Path) -> None:
    """`wal verify ... | head` ended with "error: [Errno 32] Broken pipe" on stderr (review 13e); the exit status
    must still say whether problems were found."""
    import os
    import subprocess

    from _cli_util import PY, child_env

    fill(tmp_path, "p1", 50)

    def verify_into_closed_pipe() -> subprocess.CompletedProcess[str]:
        r, w = os.pipe()
        os.close(r)  # every write to stdout fails with EPIPE (Python ignores SIGPIPE)
        try:
            return subprocess.run([PY, "-m", "wal", "verify", "--root", str(tmp_path)], stdout=w,
                                  stderr=subprocess.PIPE, text=True, env=child_env(), timeout=60)
        finally:
            os.close(w)

    ok = verify_into_closed_pipe()
    assert ok.returncode == 0 and "Broken pipe" not in ok.stderr and "Traceback" not in ok.stderr, ok.stderr
    next(iter(sorted((tmp_path / "p1").glob("*.idx")))).unlink()
    bad = verify_into_closed_pipe()
    assert bad.returncode == 1 and "Broken pipe" not in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_dump_and_tail_escape_what_a_terminal_would_act_on(tmp_path: Path) -> None:
    """Stored bytes come from whoever could append: an escape sequence, a bell or a newline in a vchannel,
    property or text payload must reach the terminal as visible escapes, not as actions or forged lines."""
    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\nforged line\x9b1m\u202eevil"
    with registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20) as op, \
            op.open(OpenOption(PChannelInfo("esc", 1))) as w:
        w.append(MutableMessage(MessageType.INSERT, evil.encode(), {"k": evil}, "v" + evil))
    for fmt in (("--payload", "text"), ("--payload", "text", "--json")):
        r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "esc", *fmt)
        assert r.returncode == 0, r.stderr
        bad = [c for c in r.stdout if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
        assert not bad, (fmt, bad)
        assert "forged line" in r.stdout and not any(ln.startswith("forged") for ln in r.stdout.splitlines())
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "esc", "--payload", "text", "--json")
    rec = next(json.loads(ln) for ln in r.stdout.splitlines() if '"INSERT"' in ln)
    assert rec["payload"] == evil and rec["properties"]["k"] == evil  # JSON keeps the exact text


def test_info_survives_a_segment_deleted_while_it_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live writer's retention deleted a segment between `wal info`'s exists() and getsize(): info failed with
    "No such file or directory (...seg)", exit 1 (1 of 99 runs against a writer rolling 4 KiB segments)."""
    import os

    from click.testing import CliRunner

    from wal._cli import _inspect
    from wal._cli._main import cli

    fill(tmp_path, n=3)
    real = os.path.getsize

    def getsize(path: str | os.PathLike[str]) -> int:
        if str(path).endswith(".seg"):
            raise FileNotFoundError(2, "No such file or directory", str(path))  # deleted just now
        return real(path)

    monkeypatch.setattr(_inspect.os.path, "getsize", getsize)
    for extra in ([], ["--json"]):
        r = CliRunner().invoke(cli, ["info", "--root", str(tmp_path), "--channel", "p1", *extra])
        assert r.exit_code == 0, r.output


def test_verify_reports_an_unreadable_segment_and_goes_on_to_the_rest(tmp_path: Path) -> None:
    """A directory where a segment should be: verify printed only "error: Is a directory (...)" and exited 1,
    leaving the later segments and channels unchecked."""
    fill(tmp_path, "p1", n=100)
    fill(tmp_path, "p2", n=100)
    segs = [Path(str(s["path"])) for s in _segments(tmp_path, "p1")]
    segs[0].unlink()
    segs[0].mkdir()
    later = Path(str(_segments(tmp_path, "p2")[1]["path"]))
    with open(later, "r+b") as f:
        f.seek(DATA_START + 20)
        b = f.read(1)
        f.seek(DATA_START + 20)
        f.write(bytes([b[0] ^ 0x01]))
    r = wal_cmd("verify", "--root", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{segs[0]}: segment cannot be read" in r.stdout, r.stdout + r.stderr
    assert f"{later}:{DATA_START}: corrupted record" in r.stdout, r.stdout + r.stderr
    assert "problem(s) in 2 channel(s)" in r.stderr


@pytest.mark.parametrize("damage", ["missing segment", "segment header"])
def test_dump_prints_every_message_before_a_damaged_or_missing_segment(tmp_path: Path, damage: str) -> None:
    """A missing middle segment: dump printed no message, only the error. A damaged segment header (records
    intact): dump printed everything and exited 0, while verify and opening for write report the header. Now both
    print the messages before that segment, then the error naming the file, and exit 1."""
    fill(tmp_path, "p1", n=100)
    segs = [Path(str(s["path"])) for s in _segments(tmp_path)]
    assert len(segs) >= 3
    if damage == "missing segment":
        segs[1].unlink()
        segs[1].with_suffix(".idx").unlink()
        named = segs[2]
    else:
        with open(segs[1], "r+b") as f:
            f.seek(32)
            b = f.read(1)
            f.seek(32)
            f.write(bytes([b[0] ^ 0x01]))
        named = segs[1]
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    before = int(segs[1].name[:20])
    shown = [json.loads(line)["id"] for line in r.stdout.splitlines()]
    assert shown == [str(i) for i in range(1, before)], r.stderr  # every ID, time ticks included
    assert str(named) in r.stderr


def test_info_shows_the_writer_as_unknown_when_lock_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable LOCK ended `wal info` with "Permission denied (.../LOCK)"; it shows the channel now."""
    import errno
    import os

    from click.testing import CliRunner

    from wal._cli._main import cli

    fill(tmp_path, n=10)
    lock, real_open = str(tmp_path / "p1" / "LOCK"), os.open

    def refuse(path: str, *args: Any, **kw: Any) -> int:
        if os.fspath(path) == lock:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), lock)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    r = CliRunner().invoke(cli, ["info", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "writer running  unknown (LOCK cannot be read: Permission denied" in r.output, r.output
    r = CliRunner().invoke(cli, ["info", "--root", str(tmp_path), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["lock_error"] == "Permission denied", r.output


def test_info_names_an_unreadable_segment_and_shows_the_rest(tmp_path: Path) -> None:
    """A directory where a segment should be: `wal info` printed only "error: Is a directory" and exited 1, showing
    neither that channel nor the next. Like verify, it names the file and goes on."""
    fill(tmp_path, "p1", n=100)
    fill(tmp_path, "p2", n=10)
    segs = [Path(str(s["path"])) for s in _segments(tmp_path, "p1")]
    segs[1].unlink()
    segs[1].mkdir()
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"UNREADABLE      {segs[1].name} (a directory, not a regular file): left out" in r.stdout, r.stdout
    assert "channel p2" in r.stdout and segs[2].name in r.stdout, r.stdout
    r = wal_cmd("info", "--root", str(tmp_path), "--channel", "p1", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["unreadable"] == {str(segs[1]): "a directory, not a regular file"}
    assert [s["path"] for s in got["segments"]] == [str(p) for p in segs if p != segs[1]]


def test_read_only_commands_report_a_fifo_named_like_a_segment_instead_of_hanging(tmp_path: Path) -> None:
    """A named pipe where a segment should be: info, verify and dump opened it for reading and hung (waiting for a
    writer of the pipe). Each says what it is now: info and verify name it, dump stops there with exit 1."""
    import os

    fill(tmp_path, "p1", n=100)
    segs = [Path(str(s["path"])) for s in _segments(tmp_path, "p1")]
    segs[1].unlink()
    os.mkfifo(segs[1])
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0 and f"{segs[1].name} (a FIFO, not a regular file)" in r.stdout, r.stdout + r.stderr
    r = wal_cmd("verify", "--root", str(tmp_path))
    assert r.returncode == 1 and f"{segs[1]}: segment cannot be read (a FIFO, not a regular file)" in r.stdout, r.stdout
    r = wal_cmd("dump", "--root", str(tmp_path), "--channel", "p1")
    assert r.returncode == 1 and f"{segs[1]}: a FIFO, not a regular file" in r.stderr, r.stderr
    assert "damage after" in r.stderr and r.stdout.count("\n") > 10


def test_info_shows_a_damaged_channel_and_goes_on_with_the_next(tmp_path: Path) -> None:
    """A channel whose files cannot be understood (here a segment header that fails its checksum): `wal info`
    printed only that error and exited 1, showing neither that channel nor the ones after it. It now says what is
    wrong with that channel and shows the rest, in text and JSON, and exits 0 (info shows damage; verify checks)."""
    fill(tmp_path, "a", n=50)
    fill(tmp_path, "b", n=10)
    seg = Path(str(_segments(tmp_path, "a")[1]["path"]))
    with open(seg, "r+b") as f:
        f.seek(32)
        b = f.read(1)
        f.seek(32)
        f.write(bytes([b[0] ^ 0x01]))
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "channel a\n  DAMAGED         CorruptedError: " in r.stdout and str(seg) in r.stdout, r.stdout
    assert "channel b" in r.stdout and "messages        " in r.stdout.split("channel b")[1], r.stdout
    r = wal_cmd("info", "--root", str(tmp_path), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    a, b_ = (json.loads(line) for line in r.stdout.splitlines())
    assert a["channel"] == "a" and a["damaged"] is True and str(seg) in a["error"], a
    assert b_["channel"] == "b" and b_["messages"] >= 10, b_
    assert b_["damaged"] is False and b_["error"] is None, b_  # every line has both keys (review 13e)
    assert wal_cmd("verify", "--root", str(tmp_path), "--channel", "a").returncode == 1


def test_info_json_of_a_root_without_channels_prints_no_text_line(tmp_path: Path) -> None:
    """`wal info --json` prints one JSON object per channel; with no channel under the root it printed the text line
    "no channels under ..." on stdout, which a consumer parsing each line as JSON failed on. The line goes to stderr
    with --json, and stdout holds no line (review 13e)."""
    r = wal_cmd("info", "--root", str(tmp_path), "--json")
    assert r.returncode == 0 and r.stdout == "" and "no channels under" in r.stderr, (r.stdout, r.stderr)
    r = wal_cmd("info", "--root", str(tmp_path))
    assert r.returncode == 0 and "no channels under" in r.stdout, (r.stdout, r.stderr)
