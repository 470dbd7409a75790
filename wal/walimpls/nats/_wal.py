"""One channel of the nats backend: a JetStream stream with a data subject and a fence subject."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..._types import AccessMode, PChannelInfo
from ...errors import AccessModeError, InvalidArgumentError, ShutdownError, WALError, WALIOError
from ...message import MessageID, MutableMessage, decode_int
from ...options import DeliverPolicyKind
from .._interfaces import ReadOption, ScannerImpls, WALImpls
from ._headers import encode_properties
from ._message_id import NatsMessageID
from ._naming import ChannelNames
from ._publisher import Publisher
from ._scanner import NatsScanner, tail_headers

if TYPE_CHECKING:
    from ._opener import NatsOpener

__all__ = ["NatsWAL"]

_K_TIME_TICK = "_tt"
TAIL_SCAN = 1024
_scanner_ids = itertools.count(1)


class NatsWAL(WALImpls):
    def __init__(
        self, opener: NatsOpener, channel: PChannelInfo, names: ChannelNames, publisher: Publisher | None
    ) -> None:
        self._opener = opener
        self._channel = channel
        self._names = names
        self._pub = publisher
        self._lock = threading.Lock()
        # Weak: a scanner dropped without close() is collected and closes its reader (see NatsScanner); close() ends
        # the rest.
        self._scanners: weakref.WeakSet[NatsScanner] = weakref.WeakSet()
        self._closed = False

    @property
    def wal_name(self) -> str:
        return "nats"

    @property
    def channel(self) -> PChannelInfo:
        return self._channel

    # -- writes ---------------------------------------------------------------------------------------------------
    def append(self, msg: MutableMessage) -> MessageID:
        return self.append_batch((msg,))[0]

    def append_batch(self, msgs: Sequence[MutableMessage]) -> list[MessageID]:
        pub = self._writable("append")
        if not msgs:
            return []
        items = [(bytes(m.payload), encode_properties(m.wire_properties())) for m in msgs]
        o = self._opener.options
        try:
            seqs = self._opener.lt.run(pub.publish(items), o.append_timeout * 2 + o.request_timeout * 3 + 5)
        except WALError:
            raise
        except Exception as e:  # a client error while re-fencing or checking the fence
            raise WALIOError(f"nats: append to {self._channel}: {type(e).__name__}: {e}") from e
        return [NatsMessageID(s) for s in seqs]

    def truncate(self, message_id: MessageID) -> None:
        self._writable("truncate")
        if not isinstance(message_id, NatsMessageID):
            raise InvalidArgumentError(f"nats: truncate takes a nats message ID, got {message_id!r}")
        self._opener.run_api(self._purge(message_id.value), f"truncate {self._names.stream}")

    async def _purge(self, seq: int) -> None:
        js = self._opener.js
        await js.purge_stream(self._names.stream, seq=seq, subject=self._names.data_subject)

    def last_time_tick(self) -> int:
        """The largest time tick among the channel's last ``TAIL_SCAN`` messages (headers only, one pull).

        Concurrent appends may be stored slightly out of time-tick order, so the last message alone is not enough;
        the out-of-order window is bounded by the appends in flight, far below ``TAIL_SCAN``.
        """
        self._check_open()
        return self._opener.run_api(self._tail_max_tt(), f"last time tick of {self._names.stream}")

    async def _tail_max_tt(self) -> int:
        info = await self._opener.js.stream_info(self._names.stream)
        last, first = int(info.state.last_seq), int(info.state.first_seq)
        if last == 0 or info.state.messages == 0:
            return 0
        best = 0
        async for headers in tail_headers(
            self._opener.nc, self._opener.js, self._names, max(first, last - TAIL_SCAN + 1)
        ):
            v = headers.get(_K_TIME_TICK)
            if v:
                best = max(best, decode_int(v))
        return best

    def _writable(self, what: str) -> Publisher:
        self._check_open()
        if self._pub is None or self._channel.access_mode is not AccessMode.RW:
            raise AccessModeError(f"nats: {what} on read-only channel {self._channel}")
        return self._pub

    def _check_open(self) -> None:
        if self._closed:
            raise ShutdownError(f"nats: channel {self._channel} is closed")

    # -- reads ----------------------------------------------------------------------------------------------------
    def read(self, opt: ReadOption) -> ScannerImpls:
        self._check_open()
        start = self._start_seq(opt)
        name = opt.name or f"nats-scanner-{next(_scanner_ids)}"
        s = NatsScanner(
            name,
            self._opener.lt,
            self._opener.nc,
            self._opener.js,
            self._names,
            start,
            opt.read_ahead_buffer_size or self._opener.options.read_ahead,
            self._forget,
        )
        with self._lock:
            if self._closed:
                s.close()
                raise ShutdownError(f"nats: channel {self._channel} is closed")
            self._scanners.add(s)
        return s

    def _start_seq(self, opt: ReadOption) -> int:
        p = opt.deliver_policy
        if p.kind is DeliverPolicyKind.ALL:
            return 1
        if p.kind is DeliverPolicyKind.LATEST:
            return self._opener.run_api(self._last_seq(), f"stream info {self._names.stream}") + 1
        mid = p.message_id
        if not isinstance(mid, NatsMessageID):
            raise InvalidArgumentError(f"nats: deliver policy needs a nats message ID, got {mid!r}")
        return mid.value + 1 if p.kind is DeliverPolicyKind.START_AFTER else mid.value

    async def _last_seq(self) -> int:
        info = await self._opener.js.stream_info(self._names.stream)
        return int(info.state.last_seq)

    def _forget(self, s: NatsScanner) -> None:
        with self._lock:
            self._scanners.discard(s)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            scanners = list(self._scanners)
        for s in scanners:
            s.close()
        if self._pub is not None:
            pub = self._pub
            try:
                self._opener.lt.call_soon(pub.close)
            except WALIOError:
                pass
        self._opener.forget(self)
