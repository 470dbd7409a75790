"""Build options of the nats backend, validated once in ``build()``."""

from __future__ import annotations

import importlib.util
import re
import ssl
from dataclasses import dataclass, fields
from typing import Any

from ..._checks import seconds
from ...errors import InvalidArgumentError
from .._interfaces import unknown_options_error

__all__ = ["NatsOptions", "parse_options"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]*")
_SUBJECT_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """See ``docs/NATS.md`` for what each option means."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    # credentials and TLS, passed to nats-py
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkeys_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    tls_handshake_first: bool = False
    client_name: str = "wal"
    # layout
    replicas: int = 1
    stream_prefix: str = "WAL_"
    subject_prefix: str = "wal"
    duplicate_window: float = 120.0
    max_bytes: int = -1
    max_age: float = 0.0
    # timing
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    publish_timeout: float = 2.0
    append_timeout: float = 30.0
    reconnect_time_wait: float = 0.25
    max_reconnect_attempts: int = -1
    # flow
    max_pending: int = 8192
    read_ahead: int = 2048

    def tls_wanted(self) -> bool:
        """Whether the user asked for TLS: a CA, a client certificate or key, the name to check the server's
        certificate against, a ``tls://`` URL, handshake first."""
        return bool(
            self.tls_ca_file or self.tls_cert_file or self.tls_key_file or self.tls_hostname
            or self.tls_handshake_first or any(u.lower().startswith("tls://") for u in self.servers)
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        if self.tls_cert_file:
            ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return ctx


_KNOWN = {f.name: f for f in fields(NatsOptions)}
_FLOATS = {
    "duplicate_window",
    "max_age",
    "connect_timeout",
    "request_timeout",
    "publish_timeout",
    "append_timeout",
    "reconnect_time_wait",
}
_INTS = {"replicas", "max_bytes", "max_reconnect_attempts", "max_pending", "read_ahead"}
_STRS = {
    "user",
    "password",
    "token",
    "creds_file",
    "nkeys_seed_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_hostname",
    "client_name",
    "stream_prefix",
    "subject_prefix",
}


def parse_options(options: dict[str, Any]) -> NatsOptions:
    """Validate keyword options; unknown names and bad values raise :class:`InvalidArgumentError`."""
    unknown = sorted(set(options) - set(_KNOWN))
    if unknown:
        raise unknown_options_error("nats", unknown, _KNOWN)
    kw: dict[str, Any] = {}
    for k, v in options.items():
        if k == "servers":
            servers = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list | tuple) else None
            if not servers or not all(isinstance(s, str) and s for s in servers):
                raise InvalidArgumentError(f"nats: servers must be a URL or a list of URLs, got {v!r}")
            kw[k] = servers
        elif k in _FLOATS:
            kw[k] = seconds(v, f"nats: option {k}", zero=True)
        elif k in _INTS:
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidArgumentError(f"nats: option {k} must be an int, got {v!r}")
            kw[k] = v
        elif k in _STRS:
            if v is not None and not isinstance(v, str):
                raise InvalidArgumentError(f"nats: option {k} must be a str, got {v!r}")
            kw[k] = v
        elif k == "tls_handshake_first":
            if not isinstance(v, bool):  # bool(v) made "no" or "false" ask for TLS first
                raise InvalidArgumentError(f"nats: option {k} must be a bool, got {v!r}")
            kw[k] = v
    o = NatsOptions(**kw)
    if not 1 <= o.replicas <= 5:
        raise InvalidArgumentError(f"nats: replicas must be 1..5, got {o.replicas}")
    if not _NAME_RE.fullmatch(o.stream_prefix):
        raise InvalidArgumentError(f"nats: stream_prefix may hold only letters, digits, _ and -: {o.stream_prefix!r}")
    if not _SUBJECT_RE.fullmatch(o.subject_prefix):
        raise InvalidArgumentError(f"nats: subject_prefix must be dot-separated tokens: {o.subject_prefix!r}")
    if o.max_bytes < -1:  # -1 means no limit; other negatives went to the stream config unchecked
        raise InvalidArgumentError(f"nats: max_bytes must be -1 (no limit) or >= 0, got {o.max_bytes}")
    if 0 < o.max_age < o.duplicate_window:
        # The server refuses such a stream (JetStream error 10052) at the first open, far from the mistake.
        raise InvalidArgumentError(
            f"nats: max_age ({o.max_age} s) must be 0 (no limit) or at least duplicate_window ({o.duplicate_window} s):"
            " lower duplicate_window too"
        )
    if o.max_pending < 1 or o.read_ahead < 1:
        raise InvalidArgumentError("nats: max_pending and read_ahead must be >= 1")
    if o.publish_timeout <= 0 or o.append_timeout <= 0 or o.request_timeout <= 0 or o.connect_timeout <= 0:
        raise InvalidArgumentError("nats: timeouts must be > 0")
    if o.tls_wanted() and any(u.lower().startswith("ws://") for u in o.servers):
        # Over a websocket the TLS check cannot see the socket: only wss:// says the connection is encrypted.
        raise InvalidArgumentError("nats: TLS was asked for (a tls_* option or a tls:// URL) with a ws:// URL, which "
                                   "is plaintext: use wss://")
    if (o.user is None) != (o.password is None):
        # nats-py sends a user only with its password, and drops either alone without a word: the connect then went
        # out without them, refused as an authorization violation far from the mistake, or let in as another user.
        raise InvalidArgumentError("nats: user and password go together (give both, or neither)")
    if o.token is not None and o.user is not None:
        raise InvalidArgumentError("nats: give token or user/password, not both (nats-py sends only user/password)")
    if o.tls_key_file and not o.tls_cert_file:
        raise InvalidArgumentError("nats: tls_key_file needs tls_cert_file (the client certificate it belongs to)")
    # nats-py signs with nkeys; without it the connect failed with a bare ModuleNotFoundError
    if (o.creds_file or o.nkeys_seed_file) and importlib.util.find_spec("nkeys") is None:
        raise InvalidArgumentError(
            "nats: creds_file and nkeys_seed_file need the nkeys package: pip install 'nats-py[nkeys]'"
        )
    return o
