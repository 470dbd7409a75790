"""The public surface is exactly what DESIGN.md promises: no leaks, nothing missing."""

from __future__ import annotations

import importlib
import inspect

import pytest

import wal
import wal.errors

EXPECTED = {
    "wal": {
        "ROWAL", "WAL", "AccessMode", "AppendResult", "DeliverFilter", "DeliverPolicy", "OpenOption", "Opener",
        "OpenerBuilder", "PChannelInfo", "ReadOption", "Scanner", "Txn", "WALError", "__version__", "errors",
        "message", "options", "registry",
    },
    "wal.message": {
        "NON_TXN_ID", "SYSTEM_TYPES", "ImmutableMessage", "ImmutableTxnMessage", "ImmutableTxnMessageBuilder",
        "IntMessageID", "MessageID", "MessageType", "MutableMessage", "TxnContext", "TxnState", "add_physical_ms",
        "compose_ts", "decode_int", "encode_int", "logical", "physical_ms", "register_message_id_unmarshaler",
        "unmarshal_message_id", "validate_properties",
    },
    "wal.options": {"DeliverFilter", "DeliverFilterKind", "DeliverPolicy", "DeliverPolicyKind", "filter_func"},
    "wal.helper": {"PullScanner", "ScannerHelper"},
    "wal.helper.conformance": {"ConformanceError", "WALImplsConformance"},
    "wal.walimpls.memory": {"WAL_NAME", "MemoryMessageID", "MemoryOpener", "MemoryOpenerBuilder"},
    "wal.errors": {
        "AccessModeError", "CorruptedError", "FencedError", "InvalidArgumentError", "InvalidMessageError",
        "InvalidMessageIDError", "InvalidTxnStateError", "PartialAppendError", "ShutdownError", "TxnExpiredError",
        "UnknownBackendError", "WALError", "WALIOError", "WALLockedError", "WALTimeoutError",
    },
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_is_exact_and_resolvable(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPECTED[module]
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"


def test_every_error_derives_from_wal_error() -> None:
    for name in wal.errors.__all__:
        obj = getattr(wal.errors, name)
        assert inspect.isclass(obj) and issubclass(obj, wal.errors.WALError), name


def test_builtin_categories_are_kept() -> None:
    e = wal.errors
    assert issubclass(e.UnknownBackendError, KeyError)
    assert issubclass(e.InvalidMessageIDError, ValueError)
    assert issubclass(e.InvalidArgumentError, ValueError)
    assert issubclass(e.InvalidMessageError, TypeError)
    assert issubclass(e.WALTimeoutError, TimeoutError)


def test_builtin_backends_are_registered_on_import() -> None:
    assert {"memory", "localfs"} <= set(wal.registry.registered_names())


def test_the_public_objects_say_what_they_are_in_a_repl() -> None:
    """The builder, opener, WAL, scanner and txn showed ``<wal.adaptor._wal.WALAdaptor object at 0x...>``: neither
    which channel nor whether it was still usable, where a closed WAL raises on every call."""
    from wal import AccessMode, OpenOption, PChannelInfo, ReadOption, registry
    from wal.message import MessageType, MutableMessage

    b = registry.must_get_builder("memory")
    assert repr(b) == "<OpenerBuilder 'memory'>"
    op = b.build()
    w = op.open(OpenOption(PChannelInfo("orders", 3)))
    ro = op.open(OpenOption(PChannelInfo("orders", access_mode=AccessMode.RO)))
    assert (repr(op), repr(w), repr(ro)) == (
        "<Opener 'memory'>", "<WAL memory orders@3: available>", "<ROWAL memory orders: available>"
    )
    s = w.read(ReadOption(name="s1"))
    assert repr(s) == "<Scanner 's1' of orders@3: reading>"
    txn = w.begin_txn("eu")
    assert repr(txn) == f"<Txn {txn.txn_ctx.txn_id} on vchannel 'eu': open>"
    txn.append(MutableMessage(MessageType.INSERT, b"a"))
    txn.commit()
    assert repr(txn) == f"<Txn {txn.txn_ctx.txn_id} on vchannel 'eu': committed>"
    s.close()
    assert repr(s) == "<Scanner 's1' of orders@3: closed>"
    w.close()
    op.close()
    assert (repr(op), repr(w), repr(ro)) == (
        "<Opener 'memory' closed>", "<WAL memory orders@3: closed>", "<ROWAL memory orders: closed>"
    )


def test_every_error_survives_pickling_with_its_fields() -> None:
    """An error raised in a worker process reaches its parent pickled: ``PartialAppendError`` failed to unpickle
    (``__init__() missing 1 required positional argument: 'results'``), which a ``ProcessPoolExecutor`` reports as a
    broken pool, hiding the error and what was stored."""
    import pickle

    from wal.message import MessageType, MutableMessage
    from wal.registry import must_get_builder

    op = must_get_builder("memory").build()
    w = op.open(wal.OpenOption(wal.PChannelInfo("c")))
    txn = w.begin_txn("v", keepalive=0.001)
    body = MutableMessage(MessageType.INSERT, b"late", vchannel="v", txn_ctx=txn.txn_ctx)
    while True:  # the keepalive counts in ticks: a ms or two
        try:
            w.append_messages([MutableMessage(MessageType.INSERT, b"ok"), body])
        except wal.errors.PartialAppendError as e:
            err = e
            break
        body = MutableMessage(MessageType.INSERT, b"late", vchannel="v", txn_ctx=txn.txn_ctx)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is wal.errors.PartialAppendError and str(back) == str(err)
    assert [type(r) for r in back.results] == [wal.AppendResult, wal.errors.TxnExpiredError]
    assert back.results[0].message_id == err.results[0].message_id
    c = pickle.loads(pickle.dumps(wal.errors.CorruptedError("bad", path="/x.seg", offset=7)))
    assert (str(c), c.path, c.offset) == ("bad", "/x.seg", 7)
    for name in wal.errors.__all__:
        cls = getattr(wal.errors, name)
        if cls not in (wal.errors.PartialAppendError, wal.errors.CorruptedError):
            assert type(pickle.loads(pickle.dumps(cls("what")))) is cls, name
    w.close()
    op.close()
