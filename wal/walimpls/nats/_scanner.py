"""A scanner: an ephemeral pull consumer per read, driven by hand so that it survives anything.

nats-py's pull subscriptions are not re-created after a server restart, and its ``fetch`` waits for a full batch
when tailing. So the scanner speaks the pull protocol itself: an ephemeral, in-memory, no-ack consumer starting at
the next wanted sequence, long-polling pull requests with idle heartbeats, and the consumer sequence in each reply
subject to detect gaps. On any doubt (gap, missing heartbeats, consumer gone, server restarted, leader changed) it
drops the consumer and makes a new one at the sequence after the last message it delivered: nothing is lost and
nothing is delivered twice.

The fetch task runs on the client's loop and fills a bounded buffer; ``recv`` runs on the caller's thread and
decodes messages there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from ...errors import InvalidMessageError, ShutdownError, WALError, WALIOError, WALTimeoutError
from ...message import ImmutableMessage, MessageID
from .._interfaces import ScannerImpls
from ._headers import H_FENCE, decode_properties
from ._loop import LoopThread
from ._message_id import NatsMessageID
from ._naming import ChannelNames
from ._publisher import ERR_STREAM_NOT_FOUND, _api_code, next_fence

__all__ = ["NatsScanner"]

_HEARTBEAT = 1.0
_EXPIRES = 10.0
_FENCE_WALK = 8  # fence records walked one by one before _fence_before bisects
_Raw = tuple[int, bytes, Any]  # stream sequence, payload, headers


async def _fence_before(js: Any, names: ChannelNames, start: int) -> int:
    """The sequence of the last fence record before ``start`` (0 when none).

    Fence records are never purged (one per writer open, and per re-fence after a failure), so a walk over them cost
    every scanner that starts past the first message a round trip per open in the channel's history (0.4 s for
    1,000 opens on loopback, at each start and each reopen after trouble). A few steps of the walk, then a bisection
    of the sequences: O(log start) round trips.
    """
    last = 0
    for _ in range(_FENCE_WALK):
        nxt = await next_fence(js, names, last)
        if nxt is None or nxt[0] >= start:
            return last
        last = nxt[0]
    lo, hi = last, start - 1  # the answer is in [lo, hi], and lo is a fence record
    while lo < hi:
        mid = (lo + hi + 1) // 2
        nxt = await next_fence(js, names, mid - 1)  # the first fence record at or after mid
        if nxt is None or nxt[0] >= start:
            hi = mid - 1
        else:
            lo = nxt[0]
    return lo


class _Restart(Exception):
    """Drop this consumer and make a new one after the last delivered message."""


def _seqs(reply: str) -> tuple[int, int]:
    """(stream sequence, consumer sequence) from a ``$JS.ACK`` reply subject (v1 and v2 token layouts)."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[6])
    return int(t[7]), int(t[8])


_deleting: set[asyncio.Task[None]] = set()  # deletions of consumers made after their scanner closed


class NatsScanner(ScannerImpls):
    """What the caller holds: a handle on a :class:`_Reader`, which its fetch task (on the client's loop) keeps
    alive. The reader was the scanner itself, so one dropped without ``close()`` was never collected: its consumer,
    subscription and task lived until the WAL closed (the WAL holds its scanners weakly too). The handle is
    collected, and its finalizer hands the reader's ``close`` to the loop: a finalizer may run in any thread, even one
    holding a lock that ``close`` takes, and ``call_soon_threadsafe`` takes none."""

    def __init__(
        self,
        name: str,
        lt: LoopThread,
        nc: Any,
        js: Any,
        names: ChannelNames,
        start_seq: int,
        buffer: int,
        on_close: Any,
    ) -> None:
        self._r = _Reader(name, lt, nc, js, names, start_seq, buffer)
        self._on_close = on_close
        self._reap = weakref.finalize(self, lt.call_soon, self._r.close)
        self._reap.atexit = False

    @property
    def name(self) -> str:
        return self._r.name

    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        return self._r.recv(timeout)

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        return self._r.recv_batch(max_messages, timeout)

    def skipped_to(self) -> MessageID | None:
        return self._r.skipped_to()

    def done(self) -> threading.Event:
        return self._r.done()

    def error(self) -> BaseException | None:
        return self._r.error()

    @property
    def reconnects(self) -> int:
        """Consumers re-created after trouble (for tests and metrics)."""
        return self._r.reconnects

    def close(self) -> None:
        self._reap.detach()
        self._r.close()
        self._on_close(self)


class _Reader:
    def __init__(
        self,
        name: str,
        lt: LoopThread,
        nc: Any,
        js: Any,
        names: ChannelNames,
        start_seq: int,
        buffer: int,
    ) -> None:
        self._name = name
        self._lt = lt
        self._nc = nc
        self._js = js
        self._names = names
        self._next = start_seq  # next stream sequence to deliver (owned by the fetch task)
        self._fence = 0 if start_seq <= 1 else -1  # sequence of the fence record in force (-1: look it up)
        self._cap = max(16, buffer)
        self._buf: deque[_Raw] = deque()
        # (first sequence after a stretch deleted before the consumer reached it, last sequence of the stretch), in
        # order: the fetch task runs ahead of recv, so a stretch is reported once recv hands out what follows it
        self._gaps: deque[tuple[int, int]] = deque()
        self._skipped_to: NatsMessageID | None = None
        self._cond = threading.Condition()
        self._space: asyncio.Event | None = None
        self._waiting_space = False
        self._done = threading.Event()
        self._err: BaseException | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0  # consumers re-created after trouble (for tests and metrics)
        lt.submit(self._start()).result(10)

    async def _start(self) -> None:
        self._space = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def name(self) -> str:
        return self._name

    # -- caller side ----------------------------------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> ImmutableMessage:
        return self._decode(self._take(1, timeout)[0])

    def recv_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        return [self._decode(r) for r in self._take(max(1, max_messages), timeout)]

    def _take(self, n: int, timeout: float | None) -> list[_Raw]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buf or self._closed:
                if self._closed:
                    raise ShutdownError(f"nats scanner {self._name!r} is closed")
                if self._err is not None:
                    raise self._err
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WALTimeoutError(f"nats scanner {self._name!r}: no message within {timeout}s")
                    self._cond.wait(left)
            buf = self._buf
            out = [buf.popleft() for _ in range(min(n, len(buf)))]
            gaps = self._gaps
            while gaps and gaps[0][0] <= out[-1][0]:
                self._skipped_to = NatsMessageID(gaps.popleft()[1])
            if self._waiting_space and len(buf) <= self._cap // 2:
                self._waiting_space = False
                self._lt.call_soon(self._wake_space)
        return out

    def _wake_space(self) -> None:
        if self._space is not None:
            self._space.set()

    def _decode(self, r: _Raw) -> ImmutableMessage:
        seq, data, headers = r
        try:
            return ImmutableMessage.from_wire(NatsMessageID(seq), data, decode_properties(headers))
        except ValueError as e:  # not a WALIOError: the adaptor retries those, and would read it again for ever
            where = f"message {seq} of stream {self._names.stream}"
            raise InvalidMessageError(f"nats scanner {self._name!r}: undecodable {where}: {e}") from e

    def skipped_to(self) -> NatsMessageID | None:
        """Stream sequences are contiguous: a consumer that jumps over some was handed no message there because
        they were deleted (limits retention, a purge, ``truncate``) before it reached them."""
        with self._cond:
            return self._skipped_to

    def done(self) -> threading.Event:
        return self._done

    def error(self) -> BaseException | None:
        return self._err

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        t = self._task
        if t is not None:
            self._lt.call_soon(t.cancel)
        self._done.set()

    # -- fetch task (event loop) ----------------------------------------------------------------------------------
    def _push(self, items: list[_Raw], gaps: list[tuple[int, int]]) -> None:
        with self._cond:
            self._gaps.extend(gaps)
            self._buf.extend(items)
            self._cond.notify_all()

    def _free(self) -> int:
        with self._cond:
            free = self._cap - len(self._buf)
            if free < self._cap // 2:
                self._waiting_space = True
                if self._space is not None:
                    self._space.clear()
                return 0
            return free

    async def _run(self) -> None:
        backoff = 0.05
        try:
            while not self._closed:
                try:
                    await self._consume()
                    backoff = 0.05
                except asyncio.CancelledError:
                    raise
                except WALError:
                    raise
                except Exception as e:
                    if _api_code(e) == ERR_STREAM_NOT_FOUND:
                        raise WALIOError(f"nats scanner {self._name!r}: stream {self._names.stream} is gone") from e
                    # connection trouble, server restart, election: make a new consumer after a pause
                    self.reconnects += 1
                    await asyncio.sleep(backoff)
                    backoff = min(1.0, backoff * 2)
        except asyncio.CancelledError:
            pass
        except BaseException as e:
            with self._cond:
                self._err = e
                self._cond.notify_all()
            self._done.set()

    async def _consume(self) -> None:
        """One consumer's life: create it at ``self._next``, pull until something looks wrong, then return."""
        import nats.js.api as api

        cfg = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, self._next),
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=30.0,
        )  # no subject filter: the fence records come too, to tell which writer owned each stretch of the log
        if self._fence < 0:
            self._fence = await _fence_before(self._js, self._names, self._next)
        # Shielded: a close right after read() cancels this task while the request is out, and the server makes the
        # consumer all the same; it is then deleted once made (else it stayed for its inactive_threshold).
        add = asyncio.ensure_future(self._js.add_consumer(self._names.stream, config=cfg))
        try:
            info = await asyncio.shield(add)
        except asyncio.CancelledError:
            add.add_done_callback(self._delete_made)
            raise
        consumer = info.name
        inq: deque[Any] = deque()
        arrived = asyncio.Event()

        async def on_msg(msg: Any) -> None:  # cheaper than next_msg (a task and a uuid per message)
            inq.append(msg)
            arrived.set()

        sub: Any = None
        pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._names.stream}.{consumer}"
        fence_subject = self._names.fence_subject
        cseq = 0
        try:
            sub = await self._nc.subscribe(
                self._nc.new_inbox(), cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
            )
            while not self._closed:
                free = self._free()
                if free == 0:
                    assert self._space is not None
                    await self._space.wait()
                    continue
                req = {"batch": free, "expires": int(_EXPIRES * 1e9), "idle_heartbeat": int(_HEARTBEAT * 1e9)}
                await self._nc.publish(pull_subject, json.dumps(req).encode(), reply=sub.subject)
                got = 0
                ended = False
                while got < free and not ended:
                    if not inq:
                        arrived.clear()
                        await asyncio.wait_for(arrived.wait(), 3 * _HEARTBEAT)  # no heartbeat: TimeoutError
                    batch: list[_Raw] = []
                    gaps: list[tuple[int, int]] = []
                    while inq:
                        msg = inq.popleft()
                        if not msg.data and msg.headers and "Status" in msg.headers:
                            status = msg.headers["Status"]
                            if status == "100":
                                if int(msg.headers.get("Nats-Last-Consumer", 0)) > cseq:
                                    # delivered into a connection that died before we read it: the consumer
                                    # went on, and the gap would be seen only at the next message, if any
                                    raise _Restart("lost")
                                continue  # heartbeat: the consumer is alive, nothing new
                            if status in ("404", "408"):
                                ended = True  # request expired: pull again
                                break
                            raise _Restart(status)  # 409 (consumer deleted, leader change...), 503...
                        sseq, c = _seqs(msg.reply)
                        if c != cseq + 1:
                            raise _Restart("gap")  # start over after the last delivered message
                        cseq = c
                        got += 1
                        if sseq < self._next:
                            continue
                        if sseq > self._next:
                            gaps.append((sseq, sseq - 1))
                        self._next = sseq + 1
                        if msg.subject == fence_subject:
                            self._fence = sseq
                            continue
                        f = msg.headers.get(H_FENCE) if msg.headers else None
                        if f is not None:
                            fseq = int(f)
                            if fseq < self._fence:
                                continue  # an older writer's message stored after a newer fence: never acknowledged
                            self._fence = fseq
                        batch.append((sseq, msg.data, msg.headers))
                    if batch or gaps:
                        self._push(batch, gaps)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await self._delete_consumer(consumer)

    async def _delete_consumer(self, consumer: str) -> None:
        if not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._js.delete_consumer(self._names.stream, consumer), 1.0)

    def _delete_made(self, add: asyncio.Future[Any]) -> None:
        if add.cancelled() or add.exception() is not None:
            return
        t = asyncio.get_running_loop().create_task(self._delete_consumer(add.result().name))
        _deleting.add(t)  # the loop holds tasks weakly
        t.add_done_callback(_deleting.discard)


async def tail_headers(nc: Any, js: Any, names: ChannelNames, start: int) -> AsyncIterator[dict[str, str]]:
    """Headers of the data messages from ``start`` to the current end: a headers-only consumer, one no-wait pull."""
    import nats.js.api as api

    cfg = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start),
        filter_subject=names.data_subject,
        headers_only=True,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=10.0,
    )
    info = await js.add_consumer(names.stream, config=cfg)
    sub = await nc.subscribe(nc.new_inbox(), pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        pending = int(info.num_pending)
        if pending:
            # no_wait: a message counted in num_pending and deleted since (max_age, a purge) never comes, and a
            # waiting pull then stalled the caller (every writer open) for the whole expiry; the server ends a no-wait
            # pull with a status once it has sent what is stored.
            req = {"batch": pending, "expires": int(_EXPIRES * 1e9), "no_wait": True}
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{info.name}", json.dumps(req).encode(), reply=sub.subject
            )
        for _ in range(pending):
            msg = await sub.next_msg(timeout=_EXPIRES)
            h = msg.headers or {}
            if "Status" in h and not msg.reply:
                break
            yield h
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(names.stream, info.name)
