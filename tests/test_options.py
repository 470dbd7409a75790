"""Deliver policies and filters (milvus-tests.md §F)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wal.errors import InvalidArgumentError
from wal.message import ImmutableMessage, MessageType, TxnContext
from wal.options import DeliverFilter, DeliverFilterKind, DeliverPolicy, DeliverPolicyKind, filter_func
from wal.walimpls.memory import MemoryMessageID as ID


def _m(tt: int, mtype: MessageType = MessageType.INSERT, txn: bool = False) -> ImmutableMessage:
    return ImmutableMessage(
        message_id=ID(1), message_type=mtype, payload=b"", time_tick=tt, txn_ctx=TxnContext(1, 1.0) if txn else None
    )


def test_policy_constructors() -> None:
    assert DeliverPolicy.all().kind is DeliverPolicyKind.ALL
    assert DeliverPolicy.latest().kind is DeliverPolicyKind.LATEST
    assert DeliverPolicy.start_from(ID(3)) == DeliverPolicy(DeliverPolicyKind.START_FROM, ID(3))
    assert DeliverPolicy.start_after(ID(3)).message_id == ID(3)
    with pytest.raises(InvalidArgumentError):
        DeliverPolicy.start_from("3")  # type: ignore[arg-type]


def test_time_tick_gt() -> None:
    f = DeliverFilter.time_tick_gt(1)
    assert f.kind is DeliverFilterKind.TIME_TICK_GT and f.is_time_tick_filter
    assert not f.matches(_m(1)) and f.matches(_m(2))
    assert not f.matches(_m(1, MessageType.COMMIT_TXN, txn=True))
    assert f.matches(_m(1, MessageType.INSERT, txn=True))  # only commits are time-filtered inside a txn


def test_time_tick_gte() -> None:
    f = DeliverFilter.time_tick_gte(1)
    assert f.matches(_m(1)) and not f.matches(_m(0))
    assert f.matches(_m(1, MessageType.COMMIT_TXN, txn=True))
    assert f.matches(_m(0, MessageType.INSERT, txn=True))


def test_message_type_filter_and_system_types() -> None:
    f = DeliverFilter.message_type(MessageType.INSERT, MessageType.DELETE)
    assert f.matches(_m(1, MessageType.INSERT)) and f.matches(_m(1, MessageType.DELETE))
    assert not f.matches(_m(1, MessageType.FLUSH))
    assert f.matches(_m(1, MessageType.TIME_TICK))  # system types always pass
    for t in (MessageType.TIME_TICK, MessageType.BEGIN_TXN, MessageType.TXN):
        with pytest.raises(ValueError, match="system"):
            DeliverFilter.message_type(t)
    with pytest.raises(InvalidArgumentError):
        DeliverFilter.message_type()
    with pytest.raises(InvalidArgumentError):
        DeliverFilter.time_tick_gt(-1)


def test_filter_func_ands_filters() -> None:
    assert filter_func([])(_m(0))
    f = filter_func([DeliverFilter.time_tick_gt(5), DeliverFilter.message_type(MessageType.DELETE)])
    assert f(_m(6, MessageType.DELETE))
    assert not f(_m(6, MessageType.INSERT)) and not f(_m(5, MessageType.DELETE))


def test_unknown_type_in_a_type_filter_is_a_wal_error() -> None:
    with pytest.raises(InvalidArgumentError, match="12345"):
        DeliverFilter.message_type(12345)  # type: ignore[arg-type]
    assert DeliverFilter.message_type(2).message_types == frozenset({MessageType.INSERT})  # type: ignore[arg-type]


def test_policies_and_filters_are_values() -> None:
    assert DeliverPolicy.start_from(ID(3)) == DeliverPolicy.start_from(ID(3)) != DeliverPolicy.start_after(ID(3))
    assert hash(DeliverFilter.time_tick_gt(4)) == hash(DeliverFilter.time_tick_gt(4))
    assert DeliverFilter.time_tick_gt(4) != DeliverFilter.time_tick_gte(4)


def test_read_option_refuses_an_empty_vchannel() -> None:
    # vchannel="" read every vchannel, like None: almost surely a name left empty by mistake. A message's vchannel
    # "" means "for every vchannel", so the reader it asks for is not even clear.
    from wal import ReadOption

    with pytest.raises(InvalidArgumentError, match="None"):
        ReadOption(vchannel="")
    assert ReadOption(vchannel=None).vchannel is None and ReadOption(vchannel="v1").vchannel == "v1"


@pytest.mark.parametrize("vchannel", ["\ud800", "v\udcff", "é\ud83d"])
def test_read_option_refuses_a_vchannel_with_no_utf8_form(vchannel: str) -> None:
    # localfs raised a bare UnicodeEncodeError in read() (its vchannel bloom filter hashes the UTF-8 bytes)
    from wal import ReadOption

    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        ReadOption(vchannel=vchannel)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DeliverPolicy(7),  # type: ignore[arg-type]
        lambda: DeliverPolicy("all"),  # type: ignore[arg-type]
        lambda: DeliverPolicy(DeliverPolicyKind.START_FROM),
        lambda: DeliverPolicy(DeliverPolicyKind.START_AFTER, 3),  # type: ignore[arg-type]
        lambda: DeliverPolicy(DeliverPolicyKind.LATEST, ID(3)),
        lambda: DeliverFilter(99),  # type: ignore[arg-type]
        lambda: DeliverFilter(DeliverFilterKind.TIME_TICK_GT, time_tick="5"),  # type: ignore[arg-type]
        lambda: DeliverFilter(DeliverFilterKind.TIME_TICK_GTE, time_tick=-1),
        lambda: DeliverFilter(DeliverFilterKind.TIME_TICK_GT, message_types=frozenset({MessageType.INSERT})),
        lambda: DeliverFilter(DeliverFilterKind.MESSAGE_TYPE),
        lambda: DeliverFilter(DeliverFilterKind.MESSAGE_TYPE, message_types=frozenset({MessageType.TXN})),
        lambda: DeliverFilter(DeliverFilterKind.MESSAGE_TYPE, message_types=frozenset({77})),  # type: ignore[arg-type]
        lambda: DeliverFilter(DeliverFilterKind.MESSAGE_TYPE, message_types="INSERT"),  # type: ignore[arg-type]
        lambda: DeliverFilter.time_tick_gt(True),  # a bool is no time tick
        lambda: DeliverFilter.message_type(None),  # type: ignore[arg-type]  # a bare TypeError
    ],
    ids=[
        "policy-kind-7", "policy-kind-str", "start_from-without-id", "start_after-int", "latest-with-id",
        "filter-kind-99", "filter-tt-str", "filter-tt-negative", "tt-filter-with-types", "type-filter-no-types",
        "type-filter-system-type", "type-filter-unknown-type", "type-filter-str", "tt-bool", "type-None",
    ],
)
def test_policies_and_filters_built_directly_are_checked_too(make: Callable[[], object]) -> None:
    # The dataclasses are public: built directly, nothing checked them (an unknown filter kind kept every message,
    # a str time tick raised a bare TypeError in the reader's recv, start_from without an ID failed in read())
    with pytest.raises(InvalidArgumentError):
        make()


def test_policies_and_filters_built_directly_right_are_the_same_as_the_factories() -> None:
    assert DeliverPolicy(DeliverPolicyKind.START_AFTER, ID(3)) == DeliverPolicy.start_after(ID(3))
    assert DeliverPolicy(1) == DeliverPolicy.all()  # type: ignore[arg-type]  # an int kind is converted
    f = DeliverFilter(DeliverFilterKind.MESSAGE_TYPE, message_types=frozenset({2}))  # type: ignore[arg-type]
    assert f == DeliverFilter.message_type(MessageType.INSERT)
    assert all(type(t) is MessageType for t in f.message_types)
    assert DeliverFilter(DeliverFilterKind.TIME_TICK_GT, time_tick=5) == DeliverFilter.time_tick_gt(5)
