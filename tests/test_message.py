"""Message model (milvus-tests.md §E): types, codecs, txn context, messages, the txn builder, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from wal.errors import InvalidArgumentError, InvalidMessageError, WALError
from wal.message import (
    SYSTEM_TYPES,
    ImmutableMessage,
    ImmutableTxnMessage,
    ImmutableTxnMessageBuilder,
    MessageType,
    MutableMessage,
    TxnContext,
    add_physical_ms,
    compose_ts,
    decode_int,
    encode_int,
    physical_ms,
)
from wal.walimpls.memory import MemoryMessageID as ID


def test_message_type_marshal_and_system_set() -> None:
    assert MessageType.UNKNOWN.marshal() == "0"
    assert MessageType.unmarshal("0") is MessageType.UNKNOWN
    assert MessageType.unmarshal("882s9") is MessageType.UNKNOWN
    assert MessageType.unmarshal(MessageType.TIME_TICK.marshal()) is MessageType.TIME_TICK
    assert MessageType.TIME_TICK.is_valid and not MessageType.UNKNOWN.is_valid
    assert {t for t in MessageType if t.is_system} == {
        MessageType.TIME_TICK, MessageType.TXN, MessageType.BEGIN_TXN, MessageType.COMMIT_TXN,
        MessageType.ROLLBACK_TXN,
    } == SYSTEM_TYPES
    for t in (MessageType.IMPORT, MessageType.INSERT, MessageType.DELETE, MessageType.CREATE_SEGMENT,
              MessageType.FLUSH, MessageType.MANUAL_FLUSH, MessageType.CREATE_COLLECTION):
        assert not t.is_system
    assert int(MessageType.SCHEMA_CHANGE) == 12 and int(MessageType.TXN) == 999


@pytest.mark.parametrize("v", [0, 1, 35, 36, 2**63 - 1, 2**64 - 1, -5])
def test_base36_round_trip(v: int) -> None:
    assert decode_int(encode_int(v)) == v


@pytest.mark.parametrize("bad", ["", " 1", "1_0", "zz!"])
def test_base36_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_int(bad)


def test_txn_context_round_trip() -> None:
    ctx = TxnContext(txn_id=1, keepalive=1.0)
    assert ctx.keepalive_ms == 1000
    assert TxnContext.unmarshal(ctx.marshal()) == ctx


def test_hybrid_time() -> None:
    ts = compose_ts(1000, 5)
    assert physical_ms(ts) == 1000
    assert physical_ms(add_physical_ms(ts, 201)) == 1201


def test_bad_input_is_refused_with_clear_errors() -> None:
    with pytest.raises(TypeError) as ei:
        MutableMessage(MessageType.INSERT, "text")  # type: ignore[arg-type]
    assert isinstance(ei.value, WALError) and "payload" in str(ei.value)
    with pytest.raises(ValueError, match="reserved"):
        MutableMessage(MessageType.INSERT, b"x", {"_k": "v"})
    with pytest.raises(TypeError, match="values must be str"):
        MutableMessage(MessageType.INSERT, b"x", {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be str"):
        MutableMessage(MessageType.INSERT, b"x", {1: "v"})  # type: ignore[dict-item]
    with pytest.raises(InvalidMessageError):
        MutableMessage(MessageType.INSERT, b"x", vchannel=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        MutableMessage(12345, b"x")  # type: ignore[arg-type]
    # bytearray and memoryview are accepted
    assert MutableMessage(MessageType.INSERT, bytearray(b"ab")).estimate_size() == 2
    assert MutableMessage(MessageType.INSERT, memoryview(b"abc"), {"k": "vv"}).estimate_size() == 6


def test_not_persisted_only_for_time_ticks() -> None:
    tick = MutableMessage(MessageType.TIME_TICK, b"").with_not_persisted()
    assert tick.not_persisted and tick.vchannel == ""
    assert MutableMessage(MessageType.TIME_TICK, b"", vchannel="v1").with_not_persisted().vchannel == "v1"
    with pytest.raises(InvalidArgumentError):
        MutableMessage(MessageType.INSERT, b"").with_not_persisted()


def test_stamping_in_place_and_into_immutable() -> None:
    m = MutableMessage(MessageType.INSERT, b"p", {"a": "b"}, "v1")
    assert m.with_time_tick(7).with_wal_term(3).with_last_confirmed(ID(2)) is m
    imm = m.into_immutable(ID(5))
    assert (imm.time_tick, imm.wal_term, imm.last_confirmed_message_id, imm.message_id) == (7, 3, ID(2), ID(5))
    assert dict(imm.properties) == {"a": "b"}
    with pytest.raises(TypeError):
        imm.properties["a"] = "c"  # type: ignore[index]
    m.with_last_confirmed_use_message_id()
    assert m.into_immutable(ID(9)).last_confirmed_message_id == ID(9)
    assert imm.wal_name == "memory" and imm.is_persisted


def test_wire_round_trip_keeps_every_field() -> None:
    ctx = TxnContext(42, 2.5)
    m = MutableMessage(MessageType.DELETE, b"body", {"user": "x"}, "v9", txn_ctx=ctx)
    m.with_time_tick(compose_ts(123456, 7)).with_wal_term(4).with_last_confirmed(ID(3))
    props = m.wire_properties()
    assert all(isinstance(v, str) for v in props.values())
    back = ImmutableMessage.from_wire(ID(10), m.payload, props)
    assert back.message_type is MessageType.DELETE
    assert (back.time_tick, back.wal_term, back.vchannel, back.txn_ctx) == (m.time_tick, 4, "v9", ctx)
    assert back.last_confirmed_message_id == ID(3)
    assert dict(back.properties) == {"user": "x"}
    self_lc = MutableMessage(MessageType.TIME_TICK, b"").with_last_confirmed_use_message_id()
    assert ImmutableMessage.from_wire(ID(11), b"", self_lc.wire_properties()).last_confirmed_message_id == ID(11)


def test_from_wire_rejects_malformed_reserved_properties() -> None:
    with pytest.raises(InvalidArgumentError):
        ImmutableMessage.from_wire(ID(1), b"", {"_tt": "not base36!"})


def test_lazy_properties_are_decoded_once() -> None:
    calls = []

    def decode() -> dict[str, str]:
        calls.append(1)
        return {"k": "v"}

    m = ImmutableMessage(message_id=ID(1), message_type=MessageType.INSERT, payload=b"", properties=decode)
    assert calls == []
    assert m.properties["k"] == "v" and m.properties["k"] == "v"
    assert calls == [1]


def _imm(
    mid: int, tt: int, mtype: MessageType, lc: int | None = None, ctx: TxnContext | None = None
) -> ImmutableMessage:
    return ImmutableMessage(
        message_id=ID(mid), message_type=mtype, payload=b"p%d" % mid, time_tick=tt,
        last_confirmed_message_id=ID(lc) if lc is not None else None, txn_ctx=ctx, vchannel="v1",
    )


def test_txn_builder_builds_one_txn_message() -> None:
    ctx = TxnContext(1, 1.0)
    begin = _imm(1, 1, MessageType.BEGIN_TXN, lc=1, ctx=ctx)
    body = _imm(2, 2, MessageType.INSERT, ctx=ctx)
    commit = _imm(4, 3, MessageType.COMMIT_TXN, lc=3, ctx=ctx)
    b = ImmutableTxnMessageBuilder(begin).add(body)
    assert b.estimate_size() > 0
    assert b.expired_time_tick() > 2
    assert b.messages() == (begin, [body])
    txn = b.build(commit)
    assert isinstance(txn, ImmutableTxnMessage)
    assert (txn.message_type, txn.time_tick, txn.message_id) == (MessageType.TXN, 3, ID(4))
    assert txn.last_confirmed_message_id <= begin.message_id
    assert txn.size() == 1 and txn.begin is begin and txn.commit is commit
    seen: list[int] = []
    txn.range_over(lambda m: seen.append(m.time_tick))
    assert seen == [3]

    def boom(_m: ImmutableMessage) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        txn.range_over(boom)
    with pytest.raises(InvalidArgumentError):
        ImmutableTxnMessageBuilder(body)
    with pytest.raises(InvalidArgumentError):
        b.build(begin)


def test_message_ids_order_hash_and_cross_backend_comparison() -> None:
    assert ID(1) < ID(2) <= ID(2) and ID(3) > ID(2) >= ID(2)
    assert ID(1) == ID(1) and hash(ID(1)) == hash(ID(1)) and len({ID(1), ID(1), ID(2)}) == 2
    from wal.message import unmarshal_message_id
    from wal.walimpls.localfs import _message_id as lf  # noqa: F401  (registered backend with its own IDs)

    other = unmarshal_message_id("localfs", unmarshal_message_id("localfs", "1").marshal())
    assert other != ID(1)
    with pytest.raises(TypeError):
        _ = ID(1) < other


def test_int_message_ids_refuse_bools_and_values_their_backend_cannot_store() -> None:
    from wal.errors import InvalidMessageIDError
    from wal.message import unmarshal_message_id
    from wal.walimpls.localfs import LocalFSMessageID

    with pytest.raises(InvalidMessageIDError):
        ID(True)  # type: ignore[arg-type]
    assert LocalFSMessageID((1 << 64) - 1).value == (1 << 64) - 1
    with pytest.raises(InvalidMessageIDError, match="above the largest"):
        LocalFSMessageID(1 << 64)  # a u64 on disk: `wal dump --from 18446744073709551616` used to exit 0, silent
    with pytest.raises(InvalidMessageIDError):
        unmarshal_message_id("localfs", str(1 << 64))
    assert ID(1 << 70).value == 1 << 70  # memory IDs have no bound


def test_properties_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        MutableMessage(MessageType.INSERT, b"x", [("k", "v")])  # type: ignore[arg-type]


def test_txn_expiry_and_body_order() -> None:
    ctx = TxnContext(7, 1.0)
    begin = _imm(1, compose_ts(1000), MessageType.BEGIN_TXN, ctx=ctx)
    b = ImmutableTxnMessageBuilder(begin)
    assert physical_ms(b.expired_time_tick()) == 2000  # no body yet: begin + keepalive
    b.add(_imm(2, compose_ts(1500), MessageType.INSERT, ctx=ctx)).add(_imm(3, compose_ts(1600), MessageType.DELETE))
    assert physical_ms(b.expired_time_tick()) == 2600  # last activity + keepalive
    txn = b.build(_imm(4, compose_ts(1700), MessageType.COMMIT_TXN, lc=1, ctx=ctx))
    assert [m.message_id for m in txn] == [ID(2), ID(3)]
    assert all(m.time_tick == compose_ts(1700) for m in txn.messages)
    assert txn.txn_ctx == ctx and txn.estimate_size() == sum(m.estimate_size() for m in txn.messages)


def test_replace_keeps_other_fields_and_lazy_properties() -> None:
    m = ImmutableMessage(
        message_id=ID(1), message_type=MessageType.INSERT, payload=b"x", properties=lambda: {"a": "b"}, time_tick=5
    )
    r = m.replace(time_tick=9)
    assert (r.time_tick, r.message_id, bytes(r.payload), dict(r.properties)) == (9, ID(1), b"x", {"a": "b"})
    assert m.time_tick == 5


def test_wire_properties_use_milvus_keys() -> None:
    m = MutableMessage(MessageType.INSERT, b"", {"u": "1"}, "v1").with_time_tick(36).with_last_confirmed(ID(2))
    p = m.wire_properties()
    assert p == {"u": "1", "_t": "2", "_tt": "10", "_lc": "2", "_vc": "v1"}
    assert "_lcs" in MutableMessage(MessageType.TIME_TICK).with_last_confirmed_use_message_id().wire_properties()


_LONE = "\ud800"  # a lone surrogate: what os.fsdecode makes of an undecodable byte; it has no UTF-8 form


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vchannel": _LONE},
        {"vchannel": "v" + _LONE + "é"},
        {"properties": {_LONE: "v"}},
        {"properties": {"k": _LONE}},
        {"properties": {"k": "v", "ключ": "знач" + _LONE}},
    ],
    ids=["vchannel", "vchannel-mixed", "property-key", "property-value", "property-value-non-ascii"],
)
def test_text_with_no_utf8_form_is_refused_when_the_message_is_made(kwargs: dict[str, object]) -> None:
    # memory stored it, localfs raised a bare UnicodeEncodeError at append: one program, two behaviours
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        MutableMessage(MessageType.INSERT, b"x", **kwargs)  # type: ignore[arg-type]


def test_non_ascii_text_that_has_a_utf8_form_is_kept() -> None:
    m = MutableMessage(MessageType.INSERT, b"x", {"ключ": "值", "": "\0"}, vchannel="é" * 300)
    assert m.vchannel == "é" * 300 and m.properties == {"ключ": "值", "": "\0"}


def test_a_delivered_message_pickles_and_deep_copies_as_plain_values(tmp_path: Path) -> None:
    """Handing a delivered message to a ProcessPoolExecutor worker (or ``copy.deepcopy``) raised ``TypeError: cannot
    pickle 'mappingproxy' object`` (its read-only properties); a localfs payload read from the files, a
    ``memoryview`` into the segment's map, cannot be pickled either. Both travel as plain values, TXN bodies too."""
    import copy
    import pickle

    from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry

    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    w = op.open(OpenOption(PChannelInfo("c")))
    w.append(MutableMessage(MessageType.INSERT, b"x" * 2000, {"a": "b"}, vchannel="v"))
    with w.begin_txn("v") as txn:
        txn.append(MutableMessage(MessageType.DELETE, b"y" * 1500, {"c": "d"}))
    ro = op.open(OpenOption(PChannelInfo("c", access_mode=AccessMode.RO)))
    got: list[ImmutableMessage] = []
    with ro.read(ReadOption()) as s:
        while len(got) < 2:
            m = s.recv(5)
            if m.message_type is not MessageType.TIME_TICK:
                got.append(m)
    plain, tx = got
    assert isinstance(plain.payload, memoryview) and isinstance(tx, ImmutableTxnMessage)

    def same(a: ImmutableMessage, b: ImmutableMessage) -> bool:
        return type(a) is type(b) and (
            a.message_id, a.message_type, bytes(a.payload), dict(a.properties), a.vchannel, a.time_tick,
            a.last_confirmed_message_id, a.txn_ctx, a.wal_term, a.is_persisted,
        ) == (
            b.message_id, b.message_type, bytes(b.payload), dict(b.properties), b.vchannel, b.time_tick,
            b.last_confirmed_message_id, b.txn_ctx, b.wal_term, b.is_persisted,
        )

    for m in got:
        for c in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), copy.copy(m)):
            assert same(c, m)
    c = pickle.loads(pickle.dumps(tx))
    assert isinstance(c, ImmutableTxnMessage) and same(c.begin, tx.begin) and same(c.commit, tx.commit)
    assert len(c.messages) == 1 and same(c.messages[0], tx.messages[0])
    assert bytes(c.messages[0].payload) == b"y" * 1500 and dict(c.messages[0].properties) == {"c": "d"}
    ro.close()
    w.close()
    op.close()
