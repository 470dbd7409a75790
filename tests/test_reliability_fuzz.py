"""Fuzzing everything localfs reads from disk: segment, index and term files mutated by hypothesis (flipped bits,
random bytes, huge lengths, truncations, extensions, whole random files). Opening and scanning (as the writer, after
recovery, and as a read-only follower) ends in messages that were written, exactly, or in CorruptedError: no other
exception, no hang, and no allocation much larger than the files.

WAL_FUZZ_EXAMPLES sets the examples per test (default 120)."""

from __future__ import annotations

import os
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _localfs_util import build, msg, open_ro, open_rw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wal.errors import CorruptedError, WALTimeoutError
from wal.message import MessageType, TxnContext
from wal.options import DeliverPolicy
from wal.walimpls import ReadOption

EXAMPLES = int(os.environ.get("WAL_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNT: dict[str, int] = {}

Original = dict[int, tuple[bytes, dict[str, str], str, int]]


def _make_log(root: Path, close: bool) -> Original:
    """A channel of 3+ segments (4 KiB): payloads of many sizes, properties, vchannels, txn contexts, ticks."""
    opener = build(root, segment_bytes=4096)
    w = open_rw(opener)
    orig: Original = {}
    for i in range(70):
        p = bytes((i * 7 + j) % 256 for j in range((i * 53) % 900))
        props = {"k": f"v{i}", "ü": "ß" * (i % 5)} if i % 3 else {}
        m = msg(p, tt=1000 + i, vchannel=f"v{i % 4}" if i % 5 else None, props=props,
                mtype=MessageType.DELETE if i % 7 == 0 else MessageType.INSERT)
        if i % 11 == 0:
            m.txn_ctx = TxnContext(txn_id=i, keepalive=1.5)
        mid = int(w.append(m).value)
        orig[mid] = (p, props, m.vchannel, 1000 + i)
    if close:
        w.close()
        opener.close()
    else:  # a crashed writer: no clean-close summary; the lock dies with the opener's descriptors
        w._close_fds()
        opener._open.clear()
        opener.close()
    return orig


class _Bases(dict[str, tuple[Path, Original]]):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"<fuzz bases {sorted(self)}>"


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Original]]:
    out = _Bases()
    for name, close in (("closed", True), ("crashed", False)):
        root = tmp_path_factory.mktemp(f"fuzzbase-{name}")
        out[name] = (root, _make_log(root, close))
    return out


def _drain(w: Any) -> list[Any]:
    out: list[Any] = []
    with w.read(ReadOption(name="fuzz", deliver_policy=DeliverPolicy.all())) as s:
        while True:
            try:
                out.extend(s.recv_batch(64, 0.02))
            except WALTimeoutError:
                return out


def _check(msgs: list[Any], orig: Original) -> None:
    prev = 0
    for m in msgs:
        mid = int(m.message_id.value)
        assert mid > prev, "IDs out of order"
        prev = mid
        assert mid in orig, f"delivered message {mid} was never written"
        p, props, vch, tt = orig[mid]
        assert bytes(m.payload) == p, f"message {mid}: payload differs from what was written"
        assert dict(m.properties) == props, f"message {mid}: properties differ"
        assert m.vchannel == vch and m.time_tick == tt, f"message {mid}: metadata differs"


def _open_and_scan(root: Path, orig: Original, ro: bool, term: int = 5) -> str:
    """'ok' or 'corrupted'; anything else propagates and fails the test."""
    opener = build(root, segment_bytes=4096)
    try:
        w = open_ro(opener) if ro else open_rw(opener, "p1", term)
        try:
            _check(_drain(w), orig)
        finally:
            w.close()
    except CorruptedError as e:
        assert e.path and str(e), "CorruptedError must say where"
        return "corrupted"
    finally:
        opener.close()
    return "ok"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "p1").iterdir() if p.name != "LOCK")


Mutation = Callable[[bytearray], bytearray]


_BIG = 1 << 20


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, Mutation]:
    """A mutation; offsets are drawn independently of the file and reduced modulo its size when applied."""
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "extend", "random", "huge_len", "zero", "swap"]))
    if kind == "flip":
        bits = draw(st.lists(st.integers(0, _BIG * 8), min_size=1, max_size=8))

        def f(b: bytearray) -> bytearray:
            for bit in bits:
                if b:
                    b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
            return b
    elif kind == "overwrite":
        off = draw(st.integers(0, _BIG))
        data = draw(st.binary(min_size=1, max_size=64))

        def f(b: bytearray) -> bytearray:
            o = off % max(len(b), 1)
            b[o : o + len(data)] = data
            return b
    elif kind == "truncate":
        at = draw(st.integers(0, _BIG))

        def f(b: bytearray) -> bytearray:
            return b[: at % (len(b) + 1)]
    elif kind == "extend":
        data = draw(st.binary(min_size=1, max_size=200))

        def f(b: bytearray) -> bytearray:
            return b + data
    elif kind == "random":
        data = draw(st.binary(min_size=0, max_size=5000))

        def f(b: bytearray) -> bytearray:
            return bytearray(data)
    elif kind == "huge_len":
        # A length field (record body, metadata, index count...) at an aligned offset gets a huge value.
        off = draw(st.integers(0, _BIG))
        val = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 5000, 2**31 + 5]))

        def f(b: bytearray) -> bytearray:
            if len(b) >= 4:
                o = (off % (len(b) // 4)) * 4
                struct.pack_into("<I", b, o, val)
            return b
    elif kind == "zero":
        off = draw(st.integers(0, _BIG))
        ln = draw(st.integers(1, 4096))

        def f(b: bytearray) -> bytearray:
            o = off % max(len(b), 1)
            b[o : o + ln] = bytes(len(b[o : o + ln]))
            return b
    else:  # swap two 8-byte-aligned chunks (records moved around)
        a0 = draw(st.integers(0, _BIG))
        c0 = draw(st.integers(0, _BIG))
        ln = draw(st.sampled_from([8, 32, 64, 256]))

        def f(b: bytearray) -> bytearray:
            slots = len(b) // 8
            if slots:
                a, c = (a0 % slots) * 8, (c0 % slots) * 8
                x, y = bytes(b[a : a + ln]), bytes(b[c : c + ln])
                if len(x) == len(y) == ln and abs(a - c) >= ln:
                    b[a : a + ln], b[c : c + ln] = y, x
            return b
    return kind, f


PICKS = st.lists(st.tuples(st.integers(0, 1000), mutations()), min_size=1, max_size=2)


def _mutate_copy(picks: list[tuple[int, tuple[str, Mutation]]], base: Path, dst: Path) -> list[str]:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(base, dst)
    files = _files(dst)
    kinds = []
    for i, (kind, f) in picks:
        path = files[i % len(files)]
        raw = bytearray(path.read_bytes())
        path.write_bytes(bytes(f(raw)))
        kinds.append(f"{path.suffix or path.name}:{kind}")
    return kinds


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("base", "ro"), [
    ("closed", False), ("crashed", False), ("closed", True), ("crashed", True),
], ids=["writer-closed", "writer-crashed", "follower-closed", "follower-crashed"])
@FUZZ
@given(picks=PICKS)
def test_mutated_files_give_written_messages_or_corrupted(
    bases: dict[str, tuple[Path, Original]], tmp_path_factory: pytest.TempPathFactory, base: str, ro: bool,
    picks: list[tuple[int, tuple[str, Mutation]]],
) -> None:
    root, orig = bases[base]
    dst = tmp_path_factory.getbasetemp() / f"fuzz-{base}-{ro}"
    _mutate_copy(picks, root, dst)
    outcome = _open_and_scan(dst, orig, ro)
    COUNT[outcome] = COUNT.get(outcome, 0) + 1
    if not ro and outcome == "ok":  # a recovered log takes appends and reopens cleanly
        opener = build(dst, segment_bytes=4096)
        try:
            w = open_rw(opener, "p1", 6)
            w.append(msg(b"after", tt=1 << 40))
            w.close()
        finally:
            opener.close()
        assert _open_and_scan(dst, {**orig, **_tail(dst)}, ro=False, term=7) == "ok"


def _tail(root: Path) -> Original:
    """Whatever the writer appended after recovery (one message, its ID depends on what was recovered)."""
    opener = build(root, segment_bytes=4096)
    try:
        w = open_ro(opener)
        try:
            out: Original = {}
            for m in _drain(w):
                if bytes(m.payload) == b"after":
                    out[int(m.message_id.value)] = (b"after", {}, "", 1 << 40)
            return out
        finally:
            w.close()
    finally:
        opener.close()


@pytest.mark.timeout(300)
@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=PICKS)
def test_fuzzed_open_allocates_at_most_a_few_times_the_files(
    bases: dict[str, tuple[Path, Original]], tmp_path_factory: pytest.TempPathFactory,
    picks: list[tuple[int, tuple[str, Mutation]]],
) -> None:
    root, orig = bases["crashed"]
    dst = tmp_path_factory.getbasetemp() / "fuzz-alloc"
    _mutate_copy(picks, root, dst)
    total = sum(p.stat().st_size for p in _files(dst))
    tracemalloc.start()
    try:
        _open_and_scan(dst, orig, ro=False)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Recovery zeroes torn tails with one chunk of at most 1 MiB; everything else must scale with the files.
    assert peak <= 4 * total + (2 << 20), f"peak allocation {peak} B for {total} B of files"


@pytest.mark.timeout(120)
@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_term_file(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    dst = tmp_path_factory.mktemp("term")
    (dst / "p1").mkdir(mode=0o700)
    (dst / "p1" / "LOCK").write_bytes(b"")  # a writer makes LOCK before TERM (without it: "LOCK was deleted")
    (dst / "p1" / "TERM").write_bytes(raw)
    assert _open_and_scan(dst, {}, ro=False) in ("ok", "corrupted")


@pytest.mark.timeout(120)
@FUZZ
@given(names=st.lists(st.text(min_size=1, max_size=30), max_size=5), raw=st.binary(max_size=2000))
def test_unexpected_files_in_channel_directory(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], raw: bytes,
) -> None:
    """Stray files (names that look almost like segments, random content) never crash the opener."""
    dst = tmp_path_factory.mktemp("stray")
    ch = dst / "p1"
    ch.mkdir(mode=0o700)
    (ch / "LOCK").write_bytes(b"")  # a writer makes LOCK first (a segment without it: "LOCK was deleted")
    for n in names:
        safe = n.replace("/", "_").replace("\0", "_")
        if safe in (".", ".."):
            continue
        (ch / safe).write_bytes(raw)
    (ch / ("9" * 20 + ".seg")).write_bytes(raw)
    assert _open_and_scan(dst, {}, ro=False) in ("ok", "corrupted")


@pytest.mark.parametrize("keep", [0, 452])
def test_follower_on_truncated_sealed_segment(bases: dict[str, tuple[Path, Original]], tmp_path: Path,
                                              keep: int) -> None:
    root, orig = bases["closed"]
    dst = tmp_path / "c"
    shutil.copytree(root, dst)
    first = _files(dst)[1]
    assert first.suffix == ".seg"
    first.write_bytes(first.read_bytes()[:keep])
    assert _open_and_scan(dst, orig, ro=True) in ("ok", "corrupted")


def _crafted(tmp_path: Path, edit: Callable[[bytearray, int, int], None],
             props: dict[str, str] | None = None) -> Path:
    """A one-record segment whose record was edited and then given a matching CRC (a forged, not a torn, record)."""
    from wal.walimpls.localfs._format import DATA_START, REC_HEADER, crc32c

    root = tmp_path / "forged"
    opener = build(root, segment_bytes=4096)
    w = open_rw(opener)
    w.append(msg(b"payload", tt=5, vchannel="v1", props={"key": "value"} if props is None else props))
    w.close()
    opener.close()
    seg = next(p for p in _files(root) if p.suffix == ".seg")
    raw = bytearray(seg.read_bytes())
    _c, body_len, *_ = REC_HEADER.unpack_from(raw, DATA_START)
    end = DATA_START + 32 + body_len
    edit(raw, DATA_START, end)
    struct.pack_into("<I", raw, DATA_START, crc32c(bytes(raw[DATA_START + 4 : end])))
    seg.write_bytes(bytes(raw))
    return root




@pytest.mark.parametrize("forge", ["vchannel_longer", "vchannel_shorter", "last_confirmed_kind", "txn_flag"])
def test_forged_record_whose_metadata_parts_do_not_add_up_is_corrupted_error(tmp_path: Path, forge: str) -> None:
    """A CRC-valid record whose metadata says it holds parts that do not fill its ``meta_len`` (a vchannel length
    off by one, a last-confirmed ID or a txn part it does not have) was read as it said: the vchannel took a byte of
    the properties, the ID or txn came from other bytes (wrong data, delivered in silence), or a part was read past
    the map (a bare ``struct.error``). It is damage, named with its file and offset. The record has no properties:
    with some, the shifted blob failed to parse and hid the problem."""
    from wal.walimpls.localfs._format import LC_ID, LC_SELF, MF_TXN

    def edit(raw: bytearray, pos: int, end: int) -> None:
        meta = pos + 32
        if forge.startswith("vchannel"):
            (vch_len,) = struct.unpack_from("<H", raw, meta + 10)
            struct.pack_into("<H", raw, meta + 10, vch_len + (1 if forge == "vchannel_longer" else -1))
        elif forge == "last_confirmed_kind":
            raw[meta + 8] = LC_SELF if raw[meta + 8] == LC_ID else LC_ID
        else:
            raw[meta + 9] |= MF_TXN

    root = _crafted(tmp_path, edit, props={})
    opener = build(root, segment_bytes=4096)
    try:
        w = open_rw(opener, "p1", 3)
        try:
            with pytest.raises(CorruptedError, match="do not add up"):
                _drain(w)
        finally:
            w.close()
    finally:
        opener.close()


def test_forged_record_with_bad_properties_is_corrupted_error(tmp_path: Path) -> None:
    def edit(raw: bytearray, pos: int, end: int) -> None:
        i = bytes(raw[pos:end]).find(b"value")
        raw[pos + i : pos + i + 5] = b"\xff\xfe\xfd\xfc\xfb"

    root = _crafted(tmp_path, edit)
    opener = build(root, segment_bytes=4096)
    try:
        w = open_rw(opener, "p1", 3)
        try:
            with pytest.raises(CorruptedError):
                for m in _drain(w):
                    dict(m.properties)
        finally:
            w.close()
    finally:
        opener.close()
