"""The on-disk format (version 2): byte layouts, record encoding, segment scanning. See ``docs/FORMAT.md``.

Everything that knows a byte offset lives here, so the writer, the scanner, recovery and the tools agree.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import crc32c as _crc32c_mod
import mmh3

from ...errors import CorruptedError, InvalidArgumentError, InvalidMessageIDError
from ...message import MessageID, MessageType, MutableMessage, TxnContext
from ._message_id import LocalFSMessageID

crc32c: Callable[..., int] = _crc32c_mod.crc32c

# The segment format written now. Version 2 gave meaning to two record flag bits (FLUSH_START, PREV_DURABLE),
# which lets recovery tell a torn, never-synced flush from damage to durable data; version 1 segments (flags
# always 0) stay readable, under the stricter rule of version 1 (see ``find_valid_record_after``).
FORMAT_VERSION = 2
SEGMENT_VERSIONS = (1, 2)  # segment versions this code reads
# Summaries, index files and TERM have not changed layout since format 1: they keep their own version 1, so a
# version-1 reader still understands them and only refuses (by the segment header) what it would misjudge.
LAYOUT_VERSION = 1

SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
TMP_SUFFIX = ".tmp"
LOCK_NAME = "LOCK"
TERM_NAME = "TERM"
FIRST_NAME = "FIRST"

# -- segment file -----------------------------------------------------------------------------------------------------
SEG_MAGIC = b"WALLFSEG"
# magic, version, data_start, flags, first_id, capacity, created_ns, term, (12 reserved), crc32c of bytes [0, 60)
SEG_HEADER = struct.Struct("<8sHHIQQQQ12xI")
SEAL_OFF = 128  # seal summary: written once, when the segment is full and the next one is about to start
CLOSE_OFF = 512  # clean-close summary of the active segment: cleared (zeroed) before the next append
# Successor mark: written once, after the next segment was made durable. A sealed newest segment carrying it means
# newer segments existed and are gone (deleted from outside); one without it is a roll cut short by a crash.
NEXT_OFF = 464  # between the seal summary (128 + 324) and CLOSE_OFF; zero in segments of every earlier version
NEXT_MAGIC = b"NEXT"
NEXT_MARK = struct.Struct("<4s4xQI")  # magic, (4 zero), the successor's first ID, crc32c of bytes [0, 16)
DATA_START = 1024
ALIGN = 8

SEAL_MAGIC = b"SEAL"
CLOSE_MAGIC = b"CLOS"
BLOOM_BYTES = 256
BLOOM_BITS = BLOOM_BYTES * 8
BLOOM_K = 3
# magic, version, bloom_k, last_id, first_tt, max_tt, data_end, records, written_ns, index_entries, bloom, crc
SUMMARY = struct.Struct(f"<4sHHQQQQQQQ{BLOOM_BYTES}sI")
ZERO_SUMMARY = bytes(SUMMARY.size)

# -- records ----------------------------------------------------------------------------------------------------------
REC_MAGIC = 0xA5
# crc32c (over bytes [4, 32 + body_len)), body_len, magic, flags, message_type, meta_len, message_id, time_tick
REC_HEADER = struct.Struct("<IIBBHIQQ")
REC_HEADER_SIZE = REC_HEADER.size  # 32
REC_MAGIC_OFF = 8
REC_FLAGS_OFF = 9
# Record flags (format 2; always 0 in format 1). Set only on the first record of each flush (one pwritev):
FLUSH_START = 0x01  # this record starts a flush
PREV_DURABLE = 0x02  # when this flush was written, an fdatasync had made every earlier byte of the segment durable
VOUCHES = FLUSH_START | PREV_DURABLE
# wal_term, last-confirmed kind, meta flags, vchannel length, properties length
META_FIXED = struct.Struct("<QBBHI")
LC_NONE, LC_SELF, LC_ID = 0, 1, 2
MF_TXN, MF_NOT_PERSISTED, MF_BARRIER = 1, 2, 4
U64 = struct.Struct("<Q")
_U64_MAX = (1 << 64) - 1
TXN = struct.Struct("<qQ")
PROP_LEN = struct.Struct("<II")
META_FIXED_SIZE = META_FIXED.size
_HEAD_PACK = struct.Struct("<IIBBHIQQ" + "QBBHI").pack  # record header followed by the fixed metadata
_U64_INTO = U64.pack_into
_U32 = struct.Struct("<I")
_U32_INTO = _U32.pack_into

# -- index file -------------------------------------------------------------------------------------------------------
IDX_MAGIC = b"WALLFIDX"
IDX_HEADER = struct.Struct("<8sHHIQ4xI")  # magic, version, pad, interval, first_id, crc of bytes [0, 28)
IDX_ENTRY = struct.Struct("<QQII")  # message_id, max time tick up to this record, position, crc of bytes [0, 20)
IDX_TRAILER = struct.Struct("<4sIQI4x")  # b"IEND", pad, entry count, crc32c of all entry bytes
IDX_END_MAGIC = b"IEND"
INDEX_INTERVAL = 4096

# -- term and first files ---------------------------------------------------------------------------------------------
# One number each, in a line of text with its crc32c: TERM, the highest writer term; FIRST, the first ID of the
# oldest segment the log must hold (moved by retention and truncate before they delete anything).
_COUNTER_FMT = "wal-localfs-{kind} v{version} {value} {crc:08x}\n"

_ZERO_HEADER = bytes(REC_HEADER_SIZE)
_MT: dict[int, MessageType] = {int(t): t for t in MessageType}


def message_type_of(value: int) -> MessageType:
    return _MT.get(value, MessageType.UNKNOWN)


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def next_mark(first_id: int) -> bytes:
    """The successor mark naming the segment that starts at ``first_id``."""
    raw = bytearray(NEXT_MARK.pack(NEXT_MAGIC, first_id, 0))
    struct.pack_into("<I", raw, NEXT_MARK.size - 4, crc32c(bytes(raw[: NEXT_MARK.size - 4])))
    return bytes(raw)


def parse_next_mark(raw: bytes | memoryview | mmap.mmap) -> int | None:
    """The successor's first ID from a segment's successor slot (``raw`` starts at ``NEXT_OFF``), or None."""
    raw = bytes(raw[: NEXT_MARK.size])
    if len(raw) < NEXT_MARK.size or raw[:4] != NEXT_MAGIC:
        return None
    _magic, first_id, crc = NEXT_MARK.unpack(raw)
    return int(first_id) if crc == crc32c(raw[: NEXT_MARK.size - 4]) else None


def segment_name(first_id: int) -> str:
    return f"{first_id:020d}{SEGMENT_SUFFIX}"


def index_name(first_id: int) -> str:
    return f"{first_id:020d}{INDEX_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    if len(name) != 20 + len(SEGMENT_SUFFIX) or not name.endswith(SEGMENT_SUFFIX):
        return None
    digits = name[:20]
    return int(digits) if digits.isdigit() else None


# -- segment header and summaries -------------------------------------------------------------------------------------
def wall_ns() -> int:
    """The wall clock for a u64 "ns since the epoch" field (a segment's creation, a summary's writing).

    Kept within the field: a clock set before 1970 (or past 2554) made ``struct`` refuse the header, so no segment
    could be created: the open failed with a bare ``struct.error`` and a roll closed the channel for good. Those
    times only age segments for ``retention_seconds``; the ticks that order the log do not come from here.
    """
    return min(max(time.time_ns(), 0), _U64_MAX)


@dataclass(slots=True)
class SegmentHeader:
    first_id: int
    capacity: int
    created_ns: int
    term: int
    data_start: int = DATA_START
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        raw = bytearray(
            SEG_HEADER.pack(
                SEG_MAGIC, self.version, self.data_start, 0, self.first_id, self.capacity, self.created_ns,
                self.term, 0,
            )
        )
        struct.pack_into("<I", raw, SEG_HEADER.size - 4, crc32c(bytes(raw[: SEG_HEADER.size - 4])))
        return bytes(raw)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, path: str) -> SegmentHeader:
        if len(buf) < SEG_HEADER.size:
            raise CorruptedError(f"{path}: segment header is short ({len(buf)} bytes)", path=path, offset=0)
        magic, version, data_start, _flags, first_id, capacity, created_ns, term, crc = SEG_HEADER.unpack_from(buf, 0)
        if magic != SEG_MAGIC:
            raise CorruptedError(f"{path}: not a localfs segment (bad magic at offset 0)", path=path, offset=0)
        if crc != crc32c(bytes(buf[: SEG_HEADER.size - 4])):
            raise CorruptedError(f"{path}: segment header checksum mismatch at offset 0", path=path, offset=0)
        if version not in SEGMENT_VERSIONS:
            raise CorruptedError(f"{path}: unsupported format version {version}", path=path, offset=0)
        return cls(first_id=first_id, capacity=capacity, created_ns=created_ns, term=term, data_start=data_start,
                   version=version)


@dataclass(slots=True)
class Summary:
    """What a sealed (or cleanly closed) segment holds, so opening a log never scans its sealed segments."""

    last_id: int
    first_tt: int
    max_tt: int
    data_end: int
    records: int
    written_ns: int
    index_entries: int
    bloom: bytes

    def pack(self, magic: bytes) -> bytes:
        raw = bytearray(
            SUMMARY.pack(
                magic, LAYOUT_VERSION, BLOOM_K, self.last_id, self.first_tt, self.max_tt, self.data_end,
                self.records, self.written_ns, self.index_entries, self.bloom, 0,
            )
        )
        struct.pack_into("<I", raw, SUMMARY.size - 4, crc32c(bytes(raw[: SUMMARY.size - 4])))
        return bytes(raw)

    @classmethod
    def unpack(cls, buf: bytes | memoryview | mmap.mmap, offset: int, magic: bytes) -> Summary | None:
        """The summary at ``offset``, or None when the slot is empty or torn (then the caller scans)."""
        raw = bytes(buf[offset : offset + SUMMARY.size])
        if len(raw) < SUMMARY.size or raw[:4] != magic:
            return None
        fields = SUMMARY.unpack(raw)
        if fields[-1] != crc32c(raw[: SUMMARY.size - 4]) or fields[1] != LAYOUT_VERSION:
            return None
        return cls(
            last_id=fields[3], first_tt=fields[4], max_tt=fields[5], data_end=fields[6], records=fields[7],
            written_ns=fields[8], index_entries=fields[9], bloom=fields[10],
        )


# -- bloom filter of vchannels ----------------------------------------------------------------------------------------
# Records of this type are left out of a segment's bloom filter. Every segment holds broadcast time ticks, so
# counting them as broadcast ("") content would keep every segment from being skipped; a reader of one vchannel
# can do without the ticks of a skipped segment (later ticks release whatever it holds). Broadcast *data*
# (vchannel "", any other type) is still added as "", so a segment holding it is never skipped.
BLOOM_EXCLUDED_TYPE = int(MessageType.TIME_TICK)


def bloom_positions(vchannel: str) -> tuple[int, ...]:
    h1, h2 = mmh3.hash64(vchannel.encode("utf-8"), signed=False)
    return tuple((h1 + i * h2) % BLOOM_BITS for i in range(BLOOM_K))


def bloom_add(bits: bytearray, positions: tuple[int, ...]) -> None:
    for p in positions:
        bits[p >> 3] |= 1 << (p & 7)


def bloom_might_contain(bits: bytes, vchannel: str) -> bool:
    return all(bits[p >> 3] & (1 << (p & 7)) for p in bloom_positions(vchannel))


# -- records ----------------------------------------------------------------------------------------------------------
_JOIN = bytearray().join
_PADS = tuple(bytes(n) for n in range(ALIGN))
# A ``bytes`` payload from this size on is written from the caller's object as an iovec of its own: copying it
# into the record would cost more than the extra iovec. Only ``bytes``: it cannot change between its CRC and its
# write. Smaller or mutable payloads are copied into the record's head.
BIG_PAYLOAD = 4096

# (head, payload, pad, CRC end in head, record size): written back to back, head + payload + pad is the record.
Encoded = tuple[bytearray, bytes, bytes, int, int]


def encode_record(msg: MutableMessage, max_body: int) -> Encoded:
    """The record of ``msg`` with its ID, flags and CRC left zero: ``stamp_record`` sets them when it is written.

    The CRC covers ``head[4:crc_head_end]`` then ``payload`` (empty when the payload was copied into the head).
    """
    lc = msg.last_confirmed_message_id
    mflags = 0
    tail = b""
    if msg.last_confirmed_is_self:
        lc_kind = LC_SELF
    elif lc is not None:
        if not isinstance(lc, LocalFSMessageID):
            raise InvalidMessageIDError(f"last-confirmed ID {lc!r} is not a localfs message ID")
        lc_kind = LC_ID
        tail = U64.pack(lc.value)
    else:
        lc_kind = LC_NONE
    txn = msg.txn_ctx
    if txn is not None or msg.barrier_time_tick or msg.not_persisted:
        if txn is not None:
            mflags |= MF_TXN
            tail += TXN.pack(txn.txn_id, txn.keepalive_ms)
        if msg.barrier_time_tick:
            mflags |= MF_BARRIER
            tail += U64.pack(msg.barrier_time_tick)
        if msg.not_persisted:
            mflags |= MF_NOT_PERSISTED
    vch = msg.vchannel.encode("utf-8") if msg.vchannel else b""
    nv = len(vch)
    if nv > 0xFFFF:
        raise InvalidArgumentError(f"vchannel name is longer than 65535 bytes ({nv})")
    props = encode_properties(msg.properties) if msg.properties else b""
    meta_len = META_FIXED_SIZE + len(tail) + nv + len(props)
    payload = msg.payload
    body_len = meta_len + len(payload)
    if body_len > max_body:
        raise InvalidArgumentError(
            f"message is {body_len} bytes with its metadata, above max_message_bytes={max_body}"
        )
    try:
        head = _HEAD_PACK(0, body_len, REC_MAGIC, 0, int(msg.message_type), meta_len, 0, msg.time_tick,
                          msg.wal_term, lc_kind, mflags, nv, len(props))
    except struct.error as e:
        raise InvalidArgumentError(
            f"message field out of range (time tick {msg.time_tick}, term {msg.wal_term}): {e}"
        ) from e
    crc_end = REC_HEADER_SIZE + body_len
    pad = _PADS[-crc_end & (ALIGN - 1)]
    size = crc_end + len(pad)
    if len(payload) >= BIG_PAYLOAD and type(payload) is bytes:
        return _JOIN((head, tail, vch, props)), payload, pad, crc_end - len(payload), size
    # One allocation of the final size instead of a bytearray grown piece by piece.
    return _JOIN((head, tail, vch, props, payload, pad)), b"", b"", crc_end, size


def stamp_record(head: bytearray, payload: bytes, crc_head_end: int, message_id: int, flags: int) -> None:
    """Write the ID, the flags and the CRC (over the header after itself, the metadata and the payload).

    ``flags`` (format 2): FLUSH_START, with PREV_DURABLE when an fdatasync had made every earlier byte of the
    segment durable when the flush was written, on the first record of each flush; 0 on the others.
    """
    _U64_INTO(head, 16, message_id)
    if flags:
        head[REC_FLAGS_OFF] = flags
    crc = crc32c(head[4:crc_head_end])
    _U32_INTO(head, 0, crc32c(payload, crc) if payload else crc)


def encode_properties(props: Mapping[str, str]) -> bytes:
    out = bytearray()
    for k, v in props.items():
        kb = k.encode("utf-8")
        vb = v.encode("utf-8")
        out += PROP_LEN.pack(len(kb), len(vb))
        out += kb
        out += vb
    return bytes(out)


def decode_properties(buf: bytes | memoryview) -> dict[str, str]:
    out: dict[str, str] = {}
    p = 0
    n = len(buf)
    try:
        while p < n:
            kl, vl = PROP_LEN.unpack_from(buf, p)
            p += PROP_LEN.size
            if p + kl + vl > n:
                raise ValueError(f"property lengths {kl}+{vl} run past the end ({n} bytes)")
            k = bytes(buf[p : p + kl]).decode("utf-8")
            p += kl
            out[k] = bytes(buf[p : p + vl]).decode("utf-8")
            p += vl
    except (struct.error, UnicodeDecodeError) as e:  # both are ValueErrors the caller turns into CorruptedError
        raise ValueError(f"malformed properties: {e}") from e
    return out


@dataclass(slots=True)
class Meta:
    """Decoded metadata of one record (everything but the user properties, which stay lazy)."""

    wal_term: int
    lc_kind: int
    lc_id: int
    txn_ctx: TxnContext | None
    barrier_tt: int
    not_persisted: bool
    vchannel: str
    props_off: int  # absolute offset of the properties blob in the buffer
    props_len: int


def decode_meta(buf: bytes | memoryview | mmap.mmap, meta_off: int) -> Meta:
    wal_term, lc_kind, mflags, vch_len, props_len = META_FIXED.unpack_from(buf, meta_off)
    p = meta_off + META_FIXED.size
    lc_id = 0
    if lc_kind == LC_ID:
        (lc_id,) = U64.unpack_from(buf, p)
        p += 8
    txn: TxnContext | None = None
    if mflags & MF_TXN:
        tid, ka = TXN.unpack_from(buf, p)
        txn = TxnContext(txn_id=tid, keepalive=ka / 1000.0)
        p += TXN.size
    barrier = 0
    if mflags & MF_BARRIER:
        (barrier,) = U64.unpack_from(buf, p)
        p += 8
    vch = bytes(buf[p : p + vch_len]).decode("utf-8") if vch_len else ""
    p += vch_len
    return Meta(wal_term, lc_kind, lc_id, txn, barrier, bool(mflags & MF_NOT_PERSISTED), vch, p, props_len)


def record_vchannel(buf: bytes | memoryview | mmap.mmap, pos: int) -> str:
    """The vchannel of the (already validated) record at ``pos``; for bloom filters."""
    return decode_meta(buf, pos + REC_HEADER_SIZE).vchannel


def check_record(buf: bytes | memoryview | mmap.mmap, pos: int, limit: int) -> tuple[int, int, int, int] | None:
    """(size, message_id, time_tick, body_len) of a valid record at ``pos`` ending before ``limit``, else None."""
    if pos + REC_HEADER_SIZE > limit:
        return None
    crc, body_len, magic, _flags, _mt, meta_len, mid, tt = REC_HEADER.unpack_from(buf, pos)
    if magic != REC_MAGIC or meta_len > body_len:
        return None
    end = pos + REC_HEADER_SIZE + body_len
    if end > limit:
        return None
    if crc32c(buf[pos + 4 : end]) != crc:
        return None
    return align(REC_HEADER_SIZE + body_len), mid, tt, body_len


def is_zero_header(buf: bytes | memoryview | mmap.mmap, pos: int, limit: int) -> bool:
    end = min(pos + REC_HEADER_SIZE, limit)
    return bytes(buf[pos:end]) == _ZERO_HEADER[: end - pos]


# -- whole-segment scan (recovery, verify, index rebuild) -------------------------------------------------------------
@dataclass(slots=True)
class ScanResult:
    """A scan of one segment's records from its data start, stopping at the first record that is not valid."""

    end: int  # offset after the last valid record
    first_id: int
    last_id: int  # first_id - 1 when empty
    records: int = 0
    first_tt: int = 0
    max_tt: int = 0
    bloom: bytearray = field(default_factory=lambda: bytearray(BLOOM_BYTES))
    index: list[tuple[int, int, int]] = field(default_factory=list)  # (id, max tt so far, position)
    stop_reason: str = ""  # "" = reached the limit; else why the record at ``end`` is not valid

    def summary(self, written_ns: int) -> Summary:
        return Summary(
            last_id=self.last_id, first_tt=self.first_tt, max_tt=self.max_tt, data_end=self.end,
            records=self.records, written_ns=written_ns, index_entries=len(self.index), bloom=bytes(self.bloom),
        )


def scan_segment(
    buf: bytes | memoryview | mmap.mmap, first_id: int, limit: int, data_start: int = DATA_START
) -> ScanResult:
    res = ScanResult(end=data_start, first_id=first_id, last_id=first_id - 1)
    mv = memoryview(buf)
    pos = data_start
    next_id = first_id
    last_indexed = -INDEX_INTERVAL
    bloom_seen: set[bytes] = set()
    index = res.index
    max_tt = 0
    unpack_header = REC_HEADER.unpack_from
    unpack_meta = META_FIXED.unpack_from
    crc = crc32c
    try:
        while pos + REC_HEADER_SIZE <= limit:
            c, body_len, magic, _fl, mt, meta_len, mid, tt = unpack_header(mv, pos)
            end = pos + REC_HEADER_SIZE + body_len
            if magic != REC_MAGIC or meta_len > body_len or end > limit or crc(mv[pos + 4 : end]) != c:
                res.stop_reason = "end of data" if is_zero_header(mv, pos, limit) else "invalid record"
                break
            if mid != next_id:
                res.stop_reason = f"message ID {mid} where {next_id} was expected"
                break
            if next_id == first_id:
                res.first_tt = tt
            if tt > max_tt:
                max_tt = tt
            if pos - last_indexed >= INDEX_INTERVAL:
                index.append((mid, max_tt, pos))
                last_indexed = pos
            if mt != BLOOM_EXCLUDED_TYPE:  # time ticks are not bloom content
                _wt, lc_kind, mflags, vch_len, _pl = unpack_meta(mv, pos + REC_HEADER_SIZE)
                if vch_len and (lc_kind == LC_ID or mflags):
                    vch = record_vchannel(mv, pos).encode("utf-8")
                elif vch_len:
                    p = pos + REC_HEADER_SIZE + META_FIXED_SIZE
                    vch = mv[p : p + vch_len].tobytes()
                else:
                    vch = b""
                if vch not in bloom_seen:
                    bloom_seen.add(vch)
                    bloom_add(res.bloom, bloom_positions(vch.decode("utf-8", "replace")))
            res.records += 1
            next_id = mid + 1
            pos += (REC_HEADER_SIZE + body_len + 7) & ~7
        else:
            if pos < limit:
                res.stop_reason = "end of data" if is_zero_header(mv, pos, limit) else "invalid record"
    finally:
        mv.release()
    res.last_id = next_id - 1
    res.end = pos
    res.max_tt = max_tt
    return res


def segment_version(buf: bytes | memoryview | mmap.mmap) -> int:
    """The format version in the header of a segment mapped from offset 0 (1, the strictest, when unreadable)."""
    if len(buf) < SEG_HEADER.size or bytes(buf[:8]) != SEG_MAGIC:
        return 1
    (version,) = struct.unpack_from("<H", buf, 8)
    return version if version in SEGMENT_VERSIONS else 1


def find_valid_record_after(
    buf: bytes | memoryview | mmap.mmap, start: int, limit: int, after_id: int, version: int | None = None
) -> int | None:
    """Offset of a record after ``start`` that proves the bad bytes at ``start`` are damage, not a torn tail; or None.

    Only bytes written after the last fdatasync can be torn. In a version 1 segment any valid record with an ID
    above ``after_id`` is that proof (the writer appends only after complete records) -- which also condemns a
    power cut that kept a later record of the last, never-synced flush and lost an earlier one (page writeback is
    not ordered). In version 2 the proof is a valid record flagged FLUSH_START|PREV_DURABLE: its flush was written
    when everything before it, ``start`` included, was durable. Records of flushes never known durable prove
    nothing, so such a tail is torn. ``version`` None: read from ``buf``'s segment header (``buf`` maps the whole
    segment).
    """
    if version is None:
        version = segment_version(buf)
    vouch_only = version >= 2
    end = last_nonzero_end(buf, start, limit)
    pos = align(start + 1)
    while pos + REC_HEADER_SIZE <= end:
        if buf[pos + REC_MAGIC_OFF] == REC_MAGIC and (not vouch_only or buf[pos + REC_FLAGS_OFF] & VOUCHES == VOUCHES):
            r = check_record(buf, pos, limit)
            if r is not None and r[1] > after_id:
                return pos
        pos += ALIGN
    return None


def valid_ids_after(buf: bytes | memoryview | mmap.mmap, start: int, limit: int, after_id: int) -> list[int]:
    """IDs of the valid records (IDs above ``after_id``) found at any aligned offset after ``start``: what cutting
    a torn tail there throws away, for the log line that reports it."""
    end = last_nonzero_end(buf, start, limit)
    out = []
    pos = align(start + 1)
    while pos + REC_HEADER_SIZE <= end:
        if buf[pos + REC_MAGIC_OFF] == REC_MAGIC:
            r = check_record(buf, pos, limit)
            if r is not None and r[1] > after_id:
                out.append(r[1])
        pos += ALIGN
    return out


_CHUNK = 1 << 16
_ZERO_CHUNK = bytes(_CHUNK)


def last_nonzero_end(buf: bytes | memoryview | mmap.mmap, start: int, limit: int) -> int:
    """The offset just after the last non-zero byte in ``[start, limit)`` (``start`` when all zero)."""
    end = start
    pos = start
    while pos < limit:
        n = min(_CHUNK, limit - pos)
        chunk = bytes(buf[pos : pos + n])
        if chunk != _ZERO_CHUNK[:n]:
            end = pos + len(chunk.rstrip(b"\0"))
        pos += n
    return end


# -- index file -------------------------------------------------------------------------------------------------------
def index_header(first_id: int) -> bytes:
    raw = bytearray(IDX_HEADER.pack(IDX_MAGIC, LAYOUT_VERSION, 0, INDEX_INTERVAL, first_id, 0))
    struct.pack_into("<I", raw, IDX_HEADER.size - 4, crc32c(bytes(raw[: IDX_HEADER.size - 4])))
    return bytes(raw)


def index_entry(mid: int, max_tt: int, pos: int) -> bytes:
    raw = bytearray(IDX_ENTRY.pack(mid, max_tt, pos, 0))
    struct.pack_into("<I", raw, IDX_ENTRY.size - 4, crc32c(bytes(raw[: IDX_ENTRY.size - 4])))
    return bytes(raw)


def index_file_bytes(first_id: int, entries: list[tuple[int, int, int]], *, sealed: bool) -> bytes:
    body = b"".join(index_entry(*e) for e in entries)
    out = index_header(first_id) + body
    if sealed:
        out += IDX_TRAILER.pack(IDX_END_MAGIC, 0, len(entries), crc32c(body))
    return out


@dataclass(slots=True)
class IndexFile:
    entries: list[tuple[int, int, int]]
    sealed: bool  # a trailer vouches for every entry
    problem: str  # "" when the whole file was understood


def parse_index(raw: bytes, first_id: int, data_end: int | None = None) -> IndexFile:
    """The valid prefix of an index file; ``problem`` says why the rest (if any) was ignored."""
    if len(raw) < IDX_HEADER.size:
        return IndexFile([], False, "index header is short")
    magic, version, _pad, _interval, fid, crc = IDX_HEADER.unpack_from(raw, 0)
    if magic != IDX_MAGIC or crc != crc32c(raw[: IDX_HEADER.size - 4]) or version != LAYOUT_VERSION:
        return IndexFile([], False, "bad index header")
    if fid != first_id:
        return IndexFile([], False, f"index is for segment {fid}, not {first_id}")
    body = raw[IDX_HEADER.size :]
    sealed = False
    if len(body) >= IDX_TRAILER.size:
        t_magic, _, count, t_crc = IDX_TRAILER.unpack_from(body, len(body) - IDX_TRAILER.size)
        eb = body[: len(body) - IDX_TRAILER.size]
        if t_magic == IDX_END_MAGIC and count * IDX_ENTRY.size == len(eb) and crc32c(eb) == t_crc:
            sealed = True
            body = eb
    entries: list[tuple[int, int, int]] = []
    problem = ""
    prev_id = first_id - 1
    prev_pos = DATA_START - 1
    n = len(body) // IDX_ENTRY.size
    for i in range(n):
        off = i * IDX_ENTRY.size
        mid, tt, pos, ecrc = IDX_ENTRY.unpack_from(body, off)
        if not sealed and ecrc != crc32c(body[off : off + IDX_ENTRY.size - 4]):
            problem = f"index entry {i} fails its checksum"
            break
        if mid <= prev_id or pos <= prev_pos or (data_end is not None and pos >= data_end):
            problem = f"index entry {i} is out of order or out of range"
            break
        entries.append((mid, tt, pos))
        prev_id, prev_pos = mid, pos
    if not problem and len(body) % IDX_ENTRY.size and not sealed:
        problem = "index ends with a partial entry"
    return IndexFile(entries, sealed and not problem, problem)


def term_text(term: int) -> bytes:
    return _counter_text("term", term)


def parse_term(raw: bytes) -> int | None:
    return _parse_counter("term", raw)


def first_text(first_id: int) -> bytes:
    return _counter_text("first", first_id)


def parse_first(raw: bytes) -> int | None:
    return _parse_counter("first", raw)


def _counter_text(kind: str, value: int) -> bytes:
    crc = crc32c(str(value).encode())
    return _COUNTER_FMT.format(kind=kind, version=LAYOUT_VERSION, value=value, crc=crc).encode()


def _parse_counter(kind: str, raw: bytes) -> int | None:
    try:
        parts = raw.decode("ascii").split()
        if len(parts) != 4 or parts[0] != f"wal-localfs-{kind}" or parts[1] != f"v{LAYOUT_VERSION}":
            return None
        value = int(parts[2])
        if value < 0 or int(parts[3], 16) != crc32c(str(value).encode()):
            return None
        return value
    except (UnicodeDecodeError, ValueError):
        return None


def new_id(value: int) -> MessageID:
    return LocalFSMessageID(value)
