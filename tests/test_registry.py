"""Registries (milvus-tests.md §D): backend builders and message-ID unmarshalers."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from wal import registry
from wal.errors import InvalidArgumentError, InvalidMessageIDError, UnknownBackendError, WALError
from wal.message import IntMessageID, register_message_id_unmarshaler, unmarshal_message_id
from wal.walimpls import OpenerBuilderImpls, OpenerImpls


class _Builder(OpenerBuilderImpls):
    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def build(self, **options: Any) -> OpenerImpls:
        raise NotImplementedError


def test_register_and_get() -> None:
    name = f"mock-{uuid.uuid4().hex[:8]}"
    registry.register_builder(_Builder(name))
    assert registry.get_impls_builder(name).name == name
    assert name in registry.registered_names()
    with pytest.raises(InvalidArgumentError, match="already registered"):
        registry.register_builder(_Builder(name))


def test_unknown_backend_is_a_key_error_naming_known_ones() -> None:
    with pytest.raises(KeyError) as ei:
        registry.must_get_builder("not exist")
    assert isinstance(ei.value, UnknownBackendError) and isinstance(ei.value, WALError)
    assert "memory" in str(ei.value) and "localfs" in str(ei.value) and "not exist" in str(ei.value)


def test_register_rejects_non_builders() -> None:
    with pytest.raises(InvalidArgumentError):
        registry.register_builder(object())  # type: ignore[arg-type]


def test_concurrent_registration() -> None:
    prefix = uuid.uuid4().hex[:6]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            registry.register_builder(_Builder(f"mock_{prefix}_{i}"))
            assert registry.get_impls_builder(f"mock_{prefix}_{i}").name == f"mock_{prefix}_{i}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


class _TestID(IntMessageID):
    __slots__ = ()
    WAL_NAME = "test-registry-ids"


def _parse(data: str) -> _TestID:
    if data != "123":
        raise InvalidMessageIDError(f"bad {data}")
    return _TestID(123)


def test_message_id_unmarshaler_registry() -> None:
    register_message_id_unmarshaler("test-registry-ids", _parse)
    assert unmarshal_message_id("test-registry-ids", "123") == _TestID(123)
    with pytest.raises(InvalidMessageIDError):
        unmarshal_message_id("test-registry-ids", "1234")
    with pytest.raises(UnknownBackendError):
        unmarshal_message_id("test1-unregistered", "123")
    with pytest.raises(InvalidArgumentError):
        register_message_id_unmarshaler("test-registry-ids", _parse)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
@pytest.mark.parametrize("garbage", ["", "abc", "-1", "1.5", " 1", "\x00"])
def test_unmarshal_garbage_raises_invalid_message_id(backend: str, garbage: str) -> None:
    with pytest.raises(InvalidMessageIDError):
        unmarshal_message_id(backend, garbage)


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_unmarshal_non_str_raises(backend: str) -> None:
    with pytest.raises(InvalidMessageIDError):
        unmarshal_message_id(backend, 12)  # type: ignore[arg-type]


def _adaptor_option_names() -> list[str]:
    from dataclasses import fields

    from wal.adaptor import AdaptorOptions

    return [f.name for f in fields(AdaptorOptions)]


def _raw_builder(backend: str) -> OpenerBuilderImpls:
    if backend == "nats":
        from wal.walimpls.nats import NatsOpenerBuilder  # not registered without nats-py; its options parse anyway

        return NatsOpenerBuilder()
    return registry.get_impls_builder(backend)


_OWN_OPTIONS: dict[str, dict[str, Any]] = {"memory": {}, "localfs": {"segment_bytes": 4096}, "nats": {}}


@pytest.mark.parametrize("backend", ["memory", "localfs", "nats"])
@pytest.mark.parametrize("option", _adaptor_option_names())
def test_every_backend_builder_refuses_the_adaptors_options_the_same_way(
    backend: str, option: str, tmp_path: Any
) -> None:
    # localfs accepted and ignored them (memory and nats refused them): a raw localfs built with
    # time_tick_interval=... ran without it, silently. must_get_builder takes them out before the backend sees
    # the rest, so every backend refuses them, naming where they go.
    own = dict(_OWN_OPTIONS[backend])
    if backend == "localfs":
        own["root"] = str(tmp_path)
    with pytest.raises(InvalidArgumentError, match=rf"{option}.*must_get_builder\('{backend}'\)"):
        _raw_builder(backend).build(**own, **{option: 1})


@pytest.mark.parametrize("backend", ["memory", "localfs"])
def test_the_full_builder_takes_adaptor_and_backend_options_in_one_dict(backend: str, tmp_path: Any) -> None:
    from wal import OpenOption, PChannelInfo

    own = {"root": str(tmp_path), **_OWN_OPTIONS[backend]} if backend == "localfs" else {}
    names = _adaptor_option_names()
    values: dict[str, Any] = {n: 1 for n in names}
    values["interceptors"] = ()
    with registry.must_get_builder(backend).build(**own, **values) as op:
        op.open(OpenOption(PChannelInfo("c", 1))).close()
    with pytest.raises(InvalidArgumentError, match="bogus"):
        registry.must_get_builder(backend).build(**own, bogus=1)


@pytest.mark.parametrize("name", [["localfs"], {"a": 1}, None, 3])
def test_a_backend_name_that_is_no_str_is_an_unknown_backend(name: Any) -> None:
    """A list raised a bare "unhashable type" TypeError from the registry's dict (review 13b)."""
    with pytest.raises(UnknownBackendError, match="a backend name is a str"):
        registry.must_get_builder(name)
    with pytest.raises(UnknownBackendError, match="a backend name is a str"):
        unmarshal_message_id(name, "1")


def test_an_entry_point_backends_ids_parse_before_anything_asked_for_its_builder() -> None:
    """A fresh process (a consumer parsing its saved checkpoint before it builds its opener) got
    ``UnknownBackendError: no message ID unmarshaler registered for 'nats'`` with the backend installed: its
    unmarshaler is registered when the entry point is loaded, which only a builder lookup did. ``registered_names``
    left it out too, though ``must_get_builder("nats")`` took it."""
    import subprocess
    import sys

    code = (
        "from wal import registry\n"
        "from wal.message import unmarshal_message_id\n"
        "print(repr(unmarshal_message_id('nats', 'nats:3')))\n"
        "print(registry.registered_names())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["NatsMessageID('3')", "['localfs', 'memory', 'nats']"], r.stdout
