"""The scanner's hot decode loop against what was appended, field by field, over runs that share and change fields.

The loop reuses the previous record's last-confirmed ID and vchannel when they repeat, copies small payloads out
of the map and hands out views of large ones, and reads the fixed metadata with the header: each of those is a
place where a stale value or an off-by-one offset would deliver a wrong field, so every field is checked.
"""

from __future__ import annotations

import mmap
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from _localfs_util import build, msg, open_ro, open_rw, read_all

from wal.errors import CorruptedError
from wal.message import MessageType, TxnContext
from wal.options import DeliverPolicy
from wal.walimpls.localfs import LocalFSMessageID
from wal.walimpls.localfs._format import DATA_START, META_FIXED, REC_HEADER, crc32c
from wal.walimpls.localfs._scanner import _COPY_MAX

_VCHANNELS = ["v1", "v1", "v2", "", "vé-ü", "v1"]
_SIZES = [0, 1, 100, _COPY_MAX - 1, _COPY_MAX, _COPY_MAX + 1, 5000]


def _expected(rng: random.Random, i: int) -> dict[str, object]:
    lc_mode = rng.choice(["self", "same", "same", "new", "none"])
    return {
        "payload": bytes(rng.getrandbits(8) for _ in range(rng.choice(_SIZES))),
        "vchannel": rng.choice(_VCHANNELS),
        "props": {"k": str(i)} if rng.random() < 0.2 else {},
        "txn": TxnContext(txn_id=i, keepalive=1.5) if rng.random() < 0.1 else None,
        "term": rng.choice([3, 3, 4]),
        "lc": lc_mode,
        "type": rng.choice([MessageType.INSERT, MessageType.INSERT, MessageType.DELETE, MessageType.TIME_TICK]),
    }


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_every_field_of_every_record(tmp_path: Path, seed: int, mode: str) -> None:
    rng = random.Random(seed)
    specs = [_expected(rng, i) for i in range(400)]
    lc_value = 1
    expected_lc: list[int | None] = []  # None: the record's own ID
    with build(tmp_path, segment_bytes=64 * 1024) as opener:
        w = open_rw(opener, term=4)  # records carry terms up to the writer's own
        ids = []
        for i, sp in enumerate(specs):
            m = msg(sp["payload"], tt=1000 + i, vchannel=sp["vchannel"] or None, props=sp["props"],  # type: ignore[arg-type]
                    mtype=sp["type"])  # type: ignore[arg-type]
            m.with_wal_term(sp["term"])  # type: ignore[arg-type]
            if sp["txn"] is not None:
                m.with_txn_context(sp["txn"])  # type: ignore[arg-type]
            if sp["lc"] == "self":
                m.with_last_confirmed_use_message_id()
                expected_lc.append(None)
            elif sp["lc"] == "none":
                expected_lc.append(None)
            else:
                if sp["lc"] == "new" or not ids:
                    lc_value = ids[-1].value if ids else 1
                m.with_last_confirmed(LocalFSMessageID(lc_value))
                expected_lc.append(lc_value)
            # batches of varying size: records of one flush and of several flushes alike
            ids.append(w.append(m))
        reader = open_ro(opener) if mode == "ro" else w
        got = read_all(reader)
        assert len(got) == len(specs)
        for i, (g, sp) in enumerate(zip(got, specs, strict=True)):
            assert g.message_id == ids[i]
            assert g.message_type is sp["type"]
            assert bytes(g.payload) == sp["payload"]
            assert isinstance(g.payload, bytes) == (len(sp["payload"]) <= _COPY_MAX)  # type: ignore[arg-type]
            assert g.vchannel == sp["vchannel"]
            assert dict(g.properties) == sp["props"]
            assert g.txn_ctx == sp["txn"]
            assert g.wal_term == sp["term"]
            assert g.time_tick == 1000 + i
            lc = expected_lc[i]
            assert g.last_confirmed_message_id == (ids[i] if lc is None else LocalFSMessageID(lc))
            assert not g.not_persisted
        # seeking into the middle decodes the same fields from there on
        mid = ids[len(ids) // 2]
        tail = read_all(reader, DeliverPolicy.start_from(mid))
        assert [x.message_id for x in tail] == ids[len(ids) // 2 :]
        assert [bytes(x.payload) for x in tail] == [sp["payload"] for sp in specs[len(ids) // 2 :]]
        if mode == "ro":
            reader.close()
        w.close()


def test_large_payload_views_stay_valid_after_close(tmp_path: Path) -> None:
    big = bytes(range(256)) * 40  # above _COPY_MAX: delivered as a view of the map
    with build(tmp_path) as opener:
        w = open_rw(opener)
        w.append(msg(big, tt=1))
        w.append(msg(b"small", tt=2))
        got = read_all(w)
        w.close()
    assert isinstance(got[0].payload, memoryview) and bytes(got[0].payload) == big
    assert got[1].payload == b"small"


def _forge_first_record(root: Path, edit: Callable[[mmap.mmap, list[int]], None]) -> None:
    """Edit the first record of channel p1 in place and give it a valid CRC again (a forger, or a writer bug)."""
    (seg,) = sorted(p for p in (root / "p1").iterdir() if p.suffix == ".seg")
    fd = os.open(seg, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mm:
            fields = list(REC_HEADER.unpack_from(mm, DATA_START))
            edit(mm, fields)
            REC_HEADER.pack_into(mm, DATA_START, *fields)
            end = DATA_START + REC_HEADER.size + fields[1]
            REC_HEADER.pack_into(mm, DATA_START, crc32c(mm[DATA_START + 4 : end]), *fields[1:])
    finally:
        os.close(fd)


def test_a_record_whose_meta_length_lies_is_corruption(tmp_path: Path) -> None:
    """A record with a valid CRC but metadata longer than its body is never delivered."""
    with build(tmp_path) as opener:
        w = open_rw(opener)
        w.append(msg(b"payload", tt=1))
        w.append(msg(b"next", tt=2))  # a valid record after the bad one: damage, not the writer's frontier
        w.close()

    def edit(_mm: mmap.mmap, fields: list[int]) -> None:
        fields[5] = fields[1] + 1  # meta_len > body_len

    _forge_first_record(tmp_path, edit)
    with build(tmp_path) as opener:
        ro = open_ro(opener)
        with pytest.raises(CorruptedError):
            read_all(ro)
        ro.close()


def test_a_vchannel_that_is_not_utf8_is_corruption(tmp_path: Path) -> None:
    with build(tmp_path) as opener:
        w = open_rw(opener)
        w.append(msg(b"payload", tt=1, vchannel="v1"))
        w.close()

    def edit(mm: mmap.mmap, _fields: list[int]) -> None:
        off = DATA_START + REC_HEADER.size + META_FIXED.size  # no last-confirmed ID, no txn: the vchannel is here
        assert mm[off : off + 2] == b"v1"
        mm[off : off + 2] = b"\xff\xfe"

    _forge_first_record(tmp_path, edit)
    with build(tmp_path) as opener:
        ro = open_ro(opener)
        with pytest.raises(CorruptedError, match="not UTF-8"):
            read_all(ro)
        ro.close()


def test_scanner_builds_messages_the_fast_way() -> None:
    """The decode loop sets ImmutableMessage's slots directly only while it knows every slot; a change to the
    message model silently falls back to the (3x slower) constructor, so it must show up here."""
    from wal.walimpls.localfs._scanner import _DIRECT

    assert _DIRECT


@pytest.mark.parametrize("last_lc", [None, 1])
def test_the_last_record_at_the_writers_exact_end(tmp_path: Path, last_lc: int | None) -> None:
    """The decode loop unpacks a record's header, fixed metadata and the 8 bytes of a last-confirmed ID in one call,
    and only the header and metadata within the last 56 bytes of the data: a 48-byte record without that ID (read
    alone there) and a 56-byte one with it (the longer unpack ending exactly at the writer's published end) both
    come out whole, as do the short records before them, whose 8 extra bytes belong to the next record."""
    with build(tmp_path) as opener:
        w = open_rw(opener)
        sent = []
        for i in range(6):
            m = msg(b"", tt=1 + i)  # header + fixed metadata: 48 bytes, no vchannel, no properties
            lc = last_lc if i == 5 else (1 if i % 2 else None)
            if lc is not None:
                m.with_last_confirmed(LocalFSMessageID(lc))  # 8 bytes more: 56
            sent.append((w.append(m), lc))
        got = read_all(w)
        assert [(g.message_id, g.last_confirmed_message_id, bytes(g.payload), g.time_tick) for g in got] == [
            (mid, mid if lc is None else LocalFSMessageID(lc), b"", 1 + i) for i, (mid, lc) in enumerate(sent)
        ]
        w.close()
