"""The nats opener (one connection and one private event loop thread) and its builder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..._types import AccessMode, OpenOption
from ...errors import ShutdownError, WALError, WALIOError
from .._interfaces import OpenerBuilderImpls, OpenerImpls, WALImpls
from ._loop import LoopThread
from ._naming import channel_names
from ._options import NatsOptions, parse_options
from ._publisher import Publisher, TermFloor, await_replicas_current
from ._wal import NatsWAL

__all__ = ["NatsOpener", "NatsOpenerBuilder"]

T = TypeVar("T")
_log = logging.getLogger("wal.nats")
_PROVISIONAL = "wal_provisional"  # stream metadata: made by a read-only open, with the reader's options
_DENIED_KEPT = 8  # the latest permission violations kept, to name in the error of a request they timed out


async def _connect(
    o: NatsOptions, last_error: list[BaseException], denied: list[tuple[float, str]] | None = None
) -> Any:
    """Connect; ``last_error`` keeps the client's latest error (nats-py retries a refused or unauthorised initial
    connection until our timeout, so that error is the only hint of the cause). ``denied`` gets the server's
    permission violations (time, text): a request on a subject the account may not publish to is only answered by
    one, given to this callback, and the request itself times out."""
    from nats.aio.client import Client
    from nats.errors import Error as NatsError

    async def on_error(e: Exception) -> None:  # instead of nats-py's default, which logs every (normal) reconnect
        last_error[:] = [e]
        if denied is not None and "permissions violation" in str(e).lower():
            denied[:] = [*denied[-(_DENIED_KEPT - 1):], (time.monotonic(), str(e))]

    kw: dict[str, Any] = {
        "servers": list(o.servers),
        "name": o.client_name,
        "connect_timeout": o.connect_timeout,
        "reconnect_time_wait": o.reconnect_time_wait,
        "max_reconnect_attempts": o.max_reconnect_attempts,
        "allow_reconnect": True,
        "error_cb": on_error,
        "pending_size": 64 * 1024 * 1024,
    }
    for k in ("user", "password", "token", "tls_hostname"):
        v = getattr(o, k)
        if v is not None:
            kw[k] = v
    if o.creds_file:
        kw["user_credentials"] = o.creds_file
    if o.nkeys_seed_file:
        kw["nkeys_seed"] = o.nkeys_seed_file
    tls = o.tls_context()
    if tls is not None:
        kw["tls"] = tls
    if o.tls_handshake_first:  # also without a CA or client certificate: nats-py then uses the system's CAs
        kw["tls_handshake_first"] = True
    nc = Client()
    connect_command: Any = getattr(nc, "_connect_command", None)  # private: without it, only the backstops check
    if o.tls_wanted() and connect_command is not None:
        refused = [False]

        def checked_connect_command() -> bytes:
            # nats-py calls this after the server's INFO and the TLS upgrade (which it makes only when the server
            # requires TLS), before it sends anything: a server (or a man in the middle) without TLS gets nothing,
            # neither the CONNECT and its credentials nor, at a reconnect, the subscriptions and the publishes
            # buffered meanwhile. The attempt fails as a refused one: nats-py tries the next server, for ever.
            if _encrypted(nc) is False:
                msg = _plaintext(o, nc)
                if not refused[0]:  # once per run of refusals (nats-py retries every reconnect_time_wait)
                    _log.error("nats: %s", msg)
                refused[0] = True
                transport = nc._transport
                if transport is not None:  # nats-py leaves a failed attempt's socket to the GC
                    with contextlib.suppress(Exception):
                        transport.close()  # type: ignore[no-untyped-call]
                raise NatsError(msg)
            refused[0] = False
            return bytes(connect_command())

        nc._connect_command = checked_connect_command  # type: ignore[method-assign]
    if o.tls_wanted():

        async def on_reconnect() -> None:  # a backstop, should a nats-py version not call the check above
            if _encrypted(nc) is False:
                await nc.close()  # every call then fails with the connection closed; the log says why
                _log.error("nats: %s", _plaintext(o, nc, sent=True))

        kw["reconnected_cb"] = on_reconnect
    await nc.connect(**kw)
    return nc


def _encrypted(nc: Any) -> bool | None:
    """Whether the connection runs over TLS (None: this nats-py does not tell)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is None or not hasattr(writer, "get_extra_info"):
        return None
    return writer.get_extra_info("ssl_object") is not None


def _plaintext(o: NatsOptions, nc: Any, *, sent: bool = False) -> str:
    uri = getattr(getattr(nc, "_current_server", None), "uri", None)
    url = getattr(uri, "netloc", None) or ", ".join(o.servers)
    what = ("nats-py connected without TLS: the connection is closed (its handshake, credentials included, went "
            "unencrypted)" if sent else "nats-py uses TLS only when a server requires it: the connection is refused "
            "before the NATS handshake (nothing was sent)")
    return (
        f"TLS was asked for (a tls_* option or a tls:// URL), but the server at {url} did not require it, and "
        f"{what}. Require TLS on the server, or set tls_handshake_first=True"
    )


class NatsOpener(OpenerImpls):
    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self.lt = LoopThread("wal-nats")
        self._lock = threading.Lock()
        self._wals: set[NatsWAL] = set()
        self._closed = False
        last_error: list[BaseException] = []
        self._denied: list[tuple[float, str]] = []
        try:
            self.nc = self.lt.run(
                _connect(options, last_error, self._denied), options.connect_timeout * 2 + 1
            )  # nats-py may never give up on its own
        except BaseException as e:
            self.lt.close()
            cause = f"; last error: {type(last_error[0]).__name__}: {last_error[0]}" if last_error else ""
            if isinstance(e, WALError):
                raise WALIOError(f"nats: cannot connect to {', '.join(options.servers)}: {e}{cause}") from e
            raise WALIOError(f"nats: cannot connect to {', '.join(options.servers)}: {e!r}{cause}") from e
        if options.tls_wanted() and _encrypted(self.nc) is False:  # a backstop, as on_reconnect in _connect
            msg = _plaintext(options, self.nc, sent=True)
            with contextlib.suppress(Exception):
                self.lt.run(self.nc.close(), options.connect_timeout + 1)
            self.lt.close()
            raise WALIOError(f"nats: {msg}")
        self.js = self.nc.jetstream(timeout=options.request_timeout, publish_async_max_pending=options.max_pending)

    def run_api(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run a JetStream API call on the loop; client errors become :class:`WALIOError`."""
        if self._closed:
            coro.close()
            raise ShutdownError("nats: the opener is closed")
        start = time.monotonic()
        try:
            return self.lt.run(coro, self.options.request_timeout * 4 + 10)
        except WALError:
            raise
        except Exception as e:
            raise WALIOError(f"nats: {what}: {type(e).__name__}: {e}{self._denied_since(start)}") from e

    def _denied_since(self, start: float) -> str:
        """The permission violations the server reported since ``start``, for an error they may explain (a request
        on a subject the account may not publish to just times out)."""
        seen = list(dict.fromkeys(text for t, text in list(self._denied) if t >= start))
        if not seen:
            return ""
        return f"; the server refused: {'; '.join(seen)} (the account's permissions: see docs/NATS.md)"

    def open(self, opt: OpenOption) -> WALImpls:
        opt.validate()
        ch = opt.channel
        names = channel_names(ch.name, self.options.stream_prefix, self.options.subject_prefix)
        replicas, aged = self.run_api(
            self._ensure_stream(ch.name, names, ch.access_mode is AccessMode.RW),
            f"create stream {names.stream} for channel {ch.name!r}",
        )
        pub: Publisher | None = None
        w: NatsWAL
        if ch.access_mode is AccessMode.RW:
            writer = secrets.token_hex(8)
            prefix = self.options.stream_prefix
            floor = TermFloor(prefix + "terms", names.stream[len(prefix):], replicas) if aged else None
            pub = Publisher(self.js, names, self.options, ch.name, ch.term, writer, replicas > 1, floor)
            self.run_api(pub.fence(first=True), f"fence channel {ch.name!r} at term {ch.term}")
            self.run_api(pub.start(self.nc), "subscribe to acks")
            w = NatsWAL(self, ch, names, pub)
        else:
            w = NatsWAL(self, ch, names, None)
        with self._lock:
            if self._closed:
                w.close()
                raise ShutdownError("nats: the opener is closed")
            self._wals.add(w)
        return w

    async def _ensure_stream(self, channel: str, names: Any, rw: bool) -> tuple[int, bool]:
        """Create the channel's stream unless it exists; its replica count, and whether it has ``max_age`` (a writer
        then keeps the channel's term outside it: :class:`TermFloor`). Timeouts (a cluster electing its meta
        leader, a node restarting) are retried for a few request timeouts."""
        import nats.errors

        deadline = time.monotonic() + self.options.request_timeout * 3
        while True:
            try:
                return await self._ensure_stream_once(channel, names, rw)
            except (TimeoutError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _ensure_stream_once(self, channel: str, names: Any, rw: bool) -> tuple[int, bool]:
        """A reader may come first, and create the stream: with its own options, mostly the defaults (one replica, no
        limits), and the writer's open then left that alone, so ``replicas=3`` silently gave one copy. A stream a
        read-only open made is marked provisional, and the first writer's open gives it the writer's options."""
        import nats.js.errors

        try:
            info = await self.js.stream_info(names.stream)
        except nats.js.errors.NotFoundError:
            pass
        else:
            if rw and (info.config.metadata or {}).get(_PROVISIONAL):
                before = int(info.config.num_replicas or 1)
                info = await self.js.update_stream(self._stream_config(channel, names, rw))
                if int(info.config.num_replicas or 1) > before:
                    await self._await_replicas(names)
            return int(info.config.num_replicas or 1), (info.config.max_age or 0) > 0
        cfg = self._stream_config(channel, names, rw)
        try:
            info = await self.js.add_stream(cfg)
        except nats.js.errors.BadRequestError as e:
            if getattr(e, "err_code", None) != 10058:  # stream name already in use: someone else created it
                raise
            return await self._ensure_stream_once(channel, names, rw)
        return int(info.config.num_replicas or 1), (info.config.max_age or 0) > 0

    async def _await_replicas(self, names: Any) -> None:
        """After more replicas were asked for: until a leader has every replica current (about 1 s on loopback), a
        publish may go unanswered, and the fence record's then failed the open with a timeout."""
        await await_replicas_current(self.js, names.stream, self.options.request_timeout * 3)

    def _stream_config(self, channel: str, names: Any, rw: bool) -> Any:
        import nats.js.api as api

        meta = {"wal_channel": channel}
        if not rw:
            meta[_PROVISIONAL] = "1"
        return api.StreamConfig(
            name=names.stream,
            description=f"wal channel {channel}",
            subjects=[names.data_subject, names.fence_subject],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            num_replicas=self.options.replicas,
            duplicate_window=self.options.duplicate_window,
            max_bytes=self.options.max_bytes,
            max_age=self.options.max_age,
            allow_direct=True,
            metadata=meta,
        )

    def forget(self, w: NatsWAL) -> None:
        with self._lock:
            self._wals.discard(w)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            wals = list(self._wals)
        for w in wals:
            w.close()
        with contextlib.suppress(Exception):
            self.lt.run(self.nc.close(), 5)
        self.lt.close()


class NatsOpenerBuilder(OpenerBuilderImpls):
    """Registered as ``"nats"``. ``build()`` connects at once so a wrong address fails here, not on first use."""

    @property
    def name(self) -> str:
        return "nats"

    def build(self, **options: Any) -> NatsOpener:
        return NatsOpener(parse_options(options))
