"""The writer's publish chain: pipelined, ordered, fenced publishes to one channel's stream.

Every data message is published with ``Nats-Expected-Last-Sequence`` set to the sequence its predecessor will get:
the writer predicts sequences itself (it is the only writer since its fence record), so many publishes can be in
flight while the server still refuses any message whose predecessor is missing. On single-replica streams each
message also carries ``Nats-Expected-Last-Msg-Id``, its predecessor's ``Nats-Msg-Id`` (which holds a random writer
id), so the chain can only be continued by the writer that started it. That gives, with no extra round trip:

* order: messages are stored in the order they were sent, with no gap and no reordering, even across retries;
* exactly once: a resent message whose first attempt was stored is refused (wrong last sequence) and recognised
  by its ``Nats-Msg-Id`` at the predicted sequence;
* fencing: once a newer writer stored its fence record, every later publish of an older writer is refused (its
  expected last message ID never comes back); the older writer then reads the fence record and raises
  :class:`FencedError` for ever.

Replicated streams cannot use the message-ID check (nats-server re-checks it when a restarted follower replays its
log, and halts the stream there), and sequences alone do not fence: an old in-flight message expecting sequence N
is accepted if the stream happens to end at N. There a writer waits for the stream to settle after its fence, and
acknowledges an append only after reading from the leader that no newer fence precedes it; scanners skip messages
whose ``Wal-Fence`` is older than a fence record before them (see ``_scanner``).

A publish that is not acknowledged within ``publish_timeout`` (server restart, leader election) is resent with
every other unacknowledged message, in order, until ``append_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import FencedError, InvalidArgumentError, ShutdownError, WALIOError, WALTimeoutError
from ...message import decode_int
from ._headers import (
    H_EXPECTED_LAST_MSG_ID,
    H_EXPECTED_LAST_SEQ,
    H_EXPECTED_LAST_SUBJECT_SEQ,
    H_FENCE,
    H_MSG_ID,
    H_TERM,
    H_WRITER,
)
from ._naming import ChannelNames
from ._options import NatsOptions

__all__ = ["Publisher", "TermFloor", "await_replicas_current", "raise_term_floor", "read_fence", "read_term_floor"]

ERR_WRONG_LAST_SEQ = 10071
ERR_WRONG_LAST_MSG_ID = 10070
_CONFLICT_CODES = (ERR_WRONG_LAST_SEQ, ERR_WRONG_LAST_MSG_ID)
ERR_STREAM_NOT_FOUND = 10059
_K_WAL_TERM = "_wt"  # the adaptor's term stamp (wal.message), as stored in a data message's headers
_CONFLICT = "conflict"
_RETRY = "retry"
_MAX_CONFLICT_ROUNDS = 4
SETTLE_QUIET = 0.3  # seconds without growth before a writer of a replicated stream starts its chain


def _api_code(exc: BaseException) -> int | None:
    code = getattr(exc, "err_code", None)
    return code if isinstance(code, int) else None


def _no_stream_yet(exc: BaseException) -> bool:
    """A publish that no stream answered: nothing was stored. Seen on a replicated stream just created, before
    its leader is elected (the server then has no interest on the subject yet)."""
    import nats.errors
    import nats.js.errors

    return isinstance(exc, (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError))


class _Entry:
    __slots__ = ("attempt", "conflicts", "done", "flag", "headers", "msg_id", "payload", "seq", "wake")

    def __init__(self, seq: int, payload: bytes, headers: dict[str, str], msg_id: str, done: asyncio.Future[int]):
        self.seq = seq
        self.payload = payload
        self.headers = headers
        self.msg_id = msg_id
        self.done = done
        self.attempt = 0
        self.conflicts = 0
        self.flag: str | None = None
        self.wake: asyncio.Future[None] | None = None


def _wake(e: _Entry) -> None:
    w = e.wake
    if w is not None and not w.done():
        w.set_result(None)


async def read_fence(js: Any, names: ChannelNames) -> tuple[int, int, str]:
    """The channel's last fence record: (its stream sequence, term, writer id); (0, 0, "") when never fenced.

    Limits retention (``max_bytes``, ``max_age``) deletes the oldest messages, fence records included. A writer that
    found none took the channel for unowned: a lower term opened it (and fenced the owner), and the owner's own
    re-fence after a failure (a server restart) fenced it for good, by "term 0". With no fence record left, the
    owner is the writer of the last data message (its ``Wal-Term`` and the writer id of its ``Nats-Msg-Id``; a
    newer writer's fence would be newer than it, so deleted after it), at sequence 0 (nothing on the fence subject,
    as the compare-and-set expects).
    """
    import nats.js.errors

    try:
        m = await js.get_msg(names.stream, subject=names.fence_subject)  # from the leader, not a replica
    except nats.js.errors.NotFoundError:
        pass
    else:
        h = m.headers or {}
        return int(m.seq), int(h.get(H_TERM, "0")), str(h.get(H_WRITER, ""))
    try:
        m = await js.get_msg(names.stream, subject=names.data_subject)
    except nats.js.errors.NotFoundError:
        return 0, 0, ""
    h = m.headers or {}
    writer, dot, _ = str(h.get(H_MSG_ID, "")).rpartition(".")
    try:  # messages of older versions carry only the adaptor's stamp, if any
        term = int(h[H_TERM]) if H_TERM in h else decode_int(h.get(_K_WAL_TERM) or "0")
    except ValueError:
        term = 0
    return 0, term, writer if dot else ""


@dataclass(frozen=True, slots=True)
class TermFloor:
    """Where a channel whose stream has ``max_age`` keeps its term: ``key`` of the KV bucket ``bucket``.

    ``max_age`` deletes fence records with the data, so a channel idle for longer than it had no term left and any
    term opened it. Per-message TTLs (``Nats-TTL: never`` on the fence records) do not help: nats-server 2.15.1
    expires such records at its restart all the same. The bucket has no limits.
    """

    bucket: str
    key: str
    replicas: int  # for the bucket, when a writer's open makes it


async def _floor_bucket(js: Any, floor: TermFloor) -> Any:
    import nats.js.api as api
    import nats.js.errors

    try:
        kv = await js.key_value(floor.bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    else:
        if floor.replicas > 1:
            await _floor_replicas(js, floor)
        return kv
    cfg = api.KeyValueConfig(
        bucket=floor.bucket,
        description="wal: the term and writer that last opened each channel whose stream has max_age",
        history=1,
        storage=api.StorageType.FILE,
        replicas=floor.replicas,
    )
    try:
        return await js.create_key_value(cfg)
    except nats.js.errors.BadRequestError as e:
        if _api_code(e) != 10058:  # stream name already in use: another opener made it meanwhile
            raise
        return await js.key_value(floor.bucket)


async def _floor_replicas(js: Any, floor: TermFloor) -> None:
    """Give the bucket at least the stream's replicas. One bucket serves every channel of the prefix, and the first
    writer that needs it makes it with its own stream's replicas: a replicated channel's floor then had one copy,
    and with its node down no writer could open the channel (nor, with its disk lost, keep its term)."""
    stream = "KV_" + floor.bucket
    info = await js.stream_info(stream)
    if int(info.config.num_replicas or 1) >= floor.replicas:
        return
    for _ in range(3):  # another opener may have set fewer meanwhile
        info.config.num_replicas = floor.replicas
        await js.update_stream(info.config)
        info = await js.stream_info(stream)
        if int(info.config.num_replicas or 1) >= floor.replicas:
            break
    await await_replicas_current(js, stream, 10.0)


async def await_replicas_current(js: Any, stream: str, timeout: float) -> None:
    """Wait (at most ``timeout``) until ``stream``'s leader has every replica its configuration asks for, all
    current: after more replicas were asked for, a write meanwhile may go unanswered, and a node lost before the new
    ones caught up left the stream without a leader (seen: over 40 s). The first answers after the update still show
    the old group, with no replicas, hence the count: "all current" alone passed at once."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.stream_info(stream)
        cl = info.cluster
        peers = list(cl.replicas or ()) if cl is not None else []
        wanted = int(info.config.num_replicas or 1) - 1
        if cl is None or (cl.leader and len(peers) >= wanted and all(r.current for r in peers)):
            return
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.1)


async def _read_floor(kv: Any, key: str) -> tuple[int, str, int, int]:
    """(term, writer id, sequence of that writer's fence record, revision) of the floor; (0, "", 0, 0) when none.
    The writer and sequence are "" and 0 while the term's first writer has not stored its fence record."""
    import nats.js.errors

    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return 0, "", 0, 0
    parts = bytes(entry.value or b"0").decode().split()  # "<term>[ <writer> <fence sequence>]"
    writer = parts[1] if len(parts) > 1 else ""
    fseq = int(parts[2]) if len(parts) > 2 else 0
    return int(parts[0]), writer, fseq, int(entry.revision or 0)


async def read_term_floor(js: Any, floor: TermFloor) -> tuple[int, str]:
    """The channel's term and owner (writer id, "" until the term's first fence record is stored), as its floor
    says; (0, "") when none."""
    import nats.js.errors

    try:
        kv = await js.key_value(floor.bucket)
    except nats.js.errors.BucketNotFoundError:
        return 0, ""
    term, writer, _, _ = await _read_floor(kv, floor.key)
    return term, writer


async def raise_term_floor(
    js: Any, floor: TermFloor, term: int, writer: str, channel: str, fseq: int = 0
) -> None:
    """Raise the floor to ``term`` before a fence record (``writer`` ""), and name ``writer``, the owner, once its
    record is stored at ``fseq`` (0: a data message told it); :class:`FencedError` if the floor holds a higher term.

    Raised before the fence record, with a compare-and-set on the key's revision, so it is never below the term of a
    stored fence record; the fence record's own compare-and-set still decides between writers opening at once (a
    floor made by a writer that then lost to a higher term is overwritten by that term's, made before its fence).
    The writer is named after its fence record, and only by the term's highest record: an open of the owner's term
    that failed before its record (or lost to a later one) named itself before, and once ``max_age`` emptied the
    channel the owner, reading the floor at its re-fence, fenced itself (or the fenced writer took the channel back).
    """
    import nats.js.errors

    kv = await _floor_bucket(js, floor)
    while True:
        have, _, have_seq, rev = await _read_floor(kv, floor.key)
        if have > term:
            raise FencedError(f"nats: channel {channel!r} is owned by term {have}, cannot open with term {term}")
        if have == term and (not fseq or have_seq >= fseq):
            return  # the term is in, and its writer is named by the highest of its records so far
        value = (f"{term} {writer} {fseq}" if writer else str(term)).encode()
        try:
            if rev:
                await kv.update(floor.key, value, last=rev)
            else:
                await kv.create(floor.key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # changed meanwhile: read again
        return


async def next_fence(js: Any, names: ChannelNames, after: int) -> tuple[int, int, str] | None:
    """The first fence record after sequence ``after`` (its sequence, term and writer id), read from the leader; or
    None."""
    import nats.js.errors

    try:
        m = await js.get_msg(names.stream, seq=after + 1, subject=names.fence_subject, next=True)
    except nats.js.errors.NotFoundError:
        return None
    h = m.headers or {}
    return int(m.seq), int(h.get(H_TERM, "0")), str(h.get(H_WRITER, ""))


class Publisher:
    """Owns the predicted sequence and the in-flight window of one RW channel; runs on the client's loop."""

    def __init__(
        self,
        js: Any,
        names: ChannelNames,
        opts: NatsOptions,
        channel: str,
        term: int,
        writer: str,
        replicated: bool,
        floor: TermFloor | None = None,
    ) -> None:
        self._js = js
        self._names = names
        self._opts = opts
        self._channel = channel
        self._term = term
        self._writer = writer
        self._floor = floor  # streams with max_age: the term kept outside the stream
        self._next = 0  # set by fence()
        self._last_msg_id = ""
        self._fences = 0
        self._fence_seq = 0
        self._fence_str = "0"
        self._term_str = str(term)
        # Replicated streams check Nats-Expected-Last-Msg-Id again when a restarted follower replays its Raft log
        # (nats-server 2.15 halts the stream on that node: "last msgid mismatch"), so there the chain uses
        # sequences only, and an append is acknowledged after checking that no newer fence precedes it.
        self._strict = not replicated
        self._max_acked = 0
        self._verified = 0
        self._verify_lock = asyncio.Lock()
        self._inflight: dict[int, _Entry] = {}
        self._lock = asyncio.Lock()
        self._gen = 0
        self._need_resync = False
        self._fenced: BaseException | None = None
        self._closed = False
        self._nc: Any = None
        self._sub: Any = None
        self._inbox = ""

    # -- hot path -------------------------------------------------------------------------------------------------
    async def publish(self, items: Sequence[tuple[bytes, dict[str, str]]]) -> list[int]:
        """Publish ``items`` (payload, headers) in order, pipelined; their stream sequences."""
        self._check_sizes(items)
        loop = asyncio.get_running_loop()
        entries: list[_Entry] = []
        deadline = time.monotonic() + self._opts.append_timeout
        while True:
            async with self._lock:
                self._check()
                if not (self._need_resync and self._busy()):
                    if self._need_resync:
                        await self._resync()
                    for payload, headers in items:
                        seq = self._next
                        self._next = seq + 1
                        msg_id = f"{self._writer}.{seq}"
                        headers[H_EXPECTED_LAST_SEQ] = str(seq - 1)
                        if self._strict:
                            headers[H_EXPECTED_LAST_MSG_ID] = self._last_msg_id
                        headers[H_MSG_ID] = self._last_msg_id = msg_id
                        headers[H_FENCE] = self._fence_str
                        headers[H_TERM] = self._term_str
                        e = _Entry(seq, payload, headers, msg_id, loop.create_future())
                        self._inflight[seq] = e
                        entries.append(e)
                        try:
                            await self._send(e)
                        except Exception as ex:  # connection closed, buffer full: the chain must restart
                            self._need_resync = True
                            self._fail(e, WALIOError(f"nats: {self._where()}: publish failed: {ex!r}"))
                            break
                    break
            # a failure broke the chain: restart it once the messages still in flight are settled
            if time.monotonic() > deadline:
                raise WALTimeoutError(f"nats: {self._where()}: appends in flight did not settle in time")
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + self._opts.append_timeout
        try:
            seqs = [await self._wait(e, deadline) for e in entries]
            if not self._strict and seqs:
                await self._verify(seqs[-1])
            return seqs
        finally:
            for e in entries:
                if not e.done.done():  # the caller went away (cancelled): abandon, and re-learn the tail later
                    self._need_resync = True
                    self._fail(e, ShutdownError(f"nats: {self._where()}: append abandoned"))
                self._inflight.pop(e.seq, None)

    async def _verify(self, seq: int) -> None:
        """Replicated streams: acknowledge ``seq`` only once the last fence record, read from the stream leader after
        ``seq`` was stored, is still ours. Concurrent appends share one check."""
        async with self._verify_lock:
            if self._verified >= seq:
                return
            target = max(self._max_acked, seq)
            deadline = time.monotonic() + self._opts.append_timeout
            after = self._fence_seq
            while True:
                try:
                    nxt = await next_fence(self._js, self._names, after)
                except Exception as e:  # no leader for a moment (election, restart): ask again
                    if time.monotonic() > deadline:
                        raise WALTimeoutError(f"nats: {self._where()}: cannot check the fence: {e!r}") from e
                    await asyncio.sleep(0.1)
                    continue
                if nxt is None or (nxt[1], nxt[2]) != (self._term, self._writer):
                    break
                after = nxt[0]  # this writer's own re-fence (after a failure, maybe stored unacknowledged): go on
            if nxt is None:
                self._verified = target
                return
            fseq, term, _ = nxt
            self._verified = min(target, fseq - 1)
            self._fence(term)
            if seq > fseq:  # stored after a newer writer's fence: readers skip it, the caller gets FencedError
                self._check()

    def _busy(self) -> bool:
        return any(not x.done.done() for x in self._inflight.values())

    def _check_sizes(self, items: Sequence[tuple[bytes, dict[str, str]]]) -> None:
        """Refuse what the server would refuse, before it takes a place in the chain."""
        limit = int(getattr(self._nc, "max_payload", 0) or 0)
        if not limit:
            return
        for payload, headers in items:
            size = len(payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 256
            if size > limit:
                raise InvalidArgumentError(
                    f"nats: {self._where()}: a message of about {size} bytes exceeds the server's max_payload "
                    f"({limit} bytes)"
                )

    async def start(self, nc: Any) -> None:
        """Subscribe to the acks of this writer (one wildcard inbox; the token names the entry and attempt)."""
        self._nc = nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(
            self._inbox + ".*", cb=self._on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def _send(self, e: _Entry) -> None:
        e.attempt += 1
        reply = f"{self._inbox}.{e.seq}-{e.attempt}"
        await self._nc.publish(self._names.data_subject, e.payload, reply=reply, headers=e.headers)

    async def _on_reply(self, msg: Any) -> None:
        token = msg.subject[len(self._inbox) + 1 :]
        seq_s, _, att_s = token.partition("-")
        e = self._inflight.get(int(seq_s))
        if e is None or e.done.done():
            return
        if not msg.data:  # a status (503 no responders: no stream leader right now)
            if int(att_s) == e.attempt:
                e.flag = _RETRY
                _wake(e)
            return
        resp = json.loads(msg.data)
        err = resp.get("error")
        if err is None:
            seq = int(resp["seq"])
            if seq == e.seq:
                e.done.set_result(seq)
                if seq > self._max_acked:
                    self._max_acked = seq
            else:  # only possible if someone bypassed the fence protocol
                e.done.set_exception(WALIOError(f"nats: {self._where()}: message stored at {seq}, expected {e.seq}"))
        elif int(att_s) != e.attempt:
            return  # an older attempt's verdict; the newer one decides
        elif err.get("err_code") in _CONFLICT_CODES:
            e.flag = _CONFLICT
        elif err.get("err_code") == ERR_STREAM_NOT_FOUND:
            self._fail(e, WALIOError(f"nats: {self._where()}: stream {self._names.stream} not found"))
        elif int(err.get("code", 0)) >= 500:
            e.flag = _RETRY
        else:
            self._fail(e, WALIOError(f"nats: {self._where()}: publish refused: {err.get('description', err)}"))
        _wake(e)

    async def _wait(self, e: _Entry, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        while not e.done.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._need_resync = True
                self._fail(e, WALTimeoutError(f"nats: {self._where()}: append not acknowledged in time"))
                break
            gen = self._gen
            if e.flag is None:
                e.wake = loop.create_future()
                h = loop.call_later(min(self._opts.publish_timeout, remaining), _wake, e)
                await e.wake
                h.cancel()
                if e.done.done():
                    break
            flag, e.flag = e.flag, None
            if flag == _CONFLICT:
                await self._resolve_conflict(e, gen)
            else:
                if flag == _RETRY:
                    await asyncio.sleep(0.05)
                await self._resend(gen)
        return e.done.result()

    # -- recovery -------------------------------------------------------------------------------------------------
    async def _resend(self, gen: int) -> None:
        """Resend every unacknowledged message, in order (once per stall, whoever notices first)."""
        async with self._lock:
            if gen != self._gen or self._closed:
                return
            self._gen += 1
            for e in sorted(self._inflight.values(), key=lambda e: e.seq):
                if not e.done.done():
                    try:
                        await self._send(e)
                    except Exception:  # disconnected: the next stall resends again
                        return

    async def _resolve_conflict(self, e: _Entry, gen: int) -> None:
        import nats.js.errors

        try:
            m = await self._js.get_msg(self._names.stream, seq=e.seq)
            if (m.headers or {}).get(H_MSG_ID) == e.msg_id:
                if not e.done.done():
                    e.done.set_result(e.seq)  # an earlier attempt was stored
                return
        except nats.js.errors.NotFoundError:
            pass
        except Exception:
            await self._resend(gen)
            return
        try:
            _, term, writer = await self._owner()
        except Exception:
            await self._resend(gen)
            return
        if term != self._term or writer != self._writer:
            self._fence(term)
            return
        e.conflicts += 1
        if e.conflicts >= _MAX_CONFLICT_ROUNDS:  # predecessor lost for good: fail this and every later message
            self._need_resync = True
            err = WALIOError(f"nats: {self._where()}: message {e.seq} lost its predecessor; retry the append")
            for x in list(self._inflight.values()):
                if x.seq >= e.seq:
                    self._fail(x, err)
            return
        await self._resend(gen)

    async def fence(self, first: bool) -> None:
        """Store a fence record (term, writer id) and start the chain after it.

        At open (``first``) the stored term must not be newer than ours; later (re-fencing after a failure) the
        stored record must still be ours. The record is a compare-and-set on the fence subject (expected last
        subject sequence), so two writers opening at once cannot both pass the check.
        """
        if first and self._floor is not None:
            await raise_term_floor(self._js, self._floor, self._term, "", self._channel)
        deadline = time.monotonic() + self._opts.request_timeout * 3
        while True:
            fseq, term, writer = await self._owner()
            if term > self._term:
                if first and self._floor is not None:
                    # A floor below the stream's owner (one that opened with an earlier version, or before the
                    # bucket was lost) was just raised to our term: give it the owner's, or once max_age empties the
                    # channel a term between the two opens it.
                    with contextlib.suppress(FencedError):
                        await raise_term_floor(self._js, self._floor, term, writer, self._channel, fseq)
                raise FencedError(
                    f"nats: channel {self._channel!r} is owned by term {term}, cannot open with term {self._term}"
                )
            # Re-fencing: the last record must still be this writer's. It may sit at a later sequence than the one
            # we know (a re-fence stored whose ack was lost): writer ids are unique per open, so it is still ours.
            if not first and (term, writer) != (self._term, self._writer):
                self._fence(term)
                self._check()
            self._fences += 1
            msg_id = f"{self._writer}.f{self._fences}"
            headers = {
                H_TERM: str(self._term),
                H_WRITER: self._writer,
                H_EXPECTED_LAST_SUBJECT_SEQ: str(fseq),
                H_MSG_ID: msg_id,
            }
            try:
                ack = await self._js.publish(self._names.fence_subject, b"", headers=headers)
            except Exception as e:
                if _api_code(e) in _CONFLICT_CODES:
                    continue  # another writer fenced meanwhile: read again
                if _no_stream_yet(e) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)  # nothing stored: read the fence again and retry
                    continue
                raise
            self._fence_seq = int(ack.seq)
            self._fence_str = str(self._fence_seq)
            if first and self._floor is not None:
                await raise_term_floor(
                    self._js, self._floor, self._term, self._writer, self._channel, self._fence_seq
                )
            self._next = (self._fence_seq if self._strict else await self._settle(self._fence_seq)) + 1
            self._last_msg_id = msg_id
            return

    async def _owner(self) -> tuple[int, int, str]:
        """The last fence record (or, with none left, the last data message: :func:`read_fence`); on a channel that
        ``max_age`` emptied, the floor's term and writer. With nothing left, a re-fence (after a server restart) took
        the channel for a newer writer's, "term 0", and fenced its owner for good."""
        fseq, term, writer = await read_fence(self._js, self._names)
        if self._floor is not None and term == 0 and not writer:
            term, writer = await read_term_floor(self._js, self._floor)
        return fseq, term, writer

    async def _settle(self, last: int) -> int:
        """Replicated streams: wait until the stream stops growing, so that a previous writer's publishes still in
        flight when our fence landed are refused or stored (and skipped by readers) before our chain starts; our
        sequence-only chain could otherwise be continued by one of them. Returns the stream's last sequence."""
        quiet = 0.0
        deadline = time.monotonic() + max(5.0, self._opts.publish_timeout * 2)
        while quiet < SETTLE_QUIET and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            info = await self._js.stream_info(self._names.stream)
            now = int(info.state.last_seq)
            quiet = quiet + 0.05 if now == last else 0.0
            last = now
        return last

    async def _resync(self) -> None:
        """After a failure, restart the chain from a new fence record of ours (nothing is in flight)."""
        await self.fence(first=False)
        self._need_resync = False

    def _fence(self, term: int) -> None:
        self._fenced = FencedError(
            f"nats: channel {self._channel!r}: a newer writer (term {term}) opened it; this writer (term "
            f"{self._term}) is fenced"
        )
        for x in list(self._inflight.values()):
            self._fail(x, self._fenced)

    def _fail(self, e: _Entry, err: BaseException) -> None:
        if not e.done.done():
            e.done.set_exception(err)
            e.done.exception()  # mark retrieved: a caller may be gone
        _wake(e)

    async def _unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except Exception:
            pass

    def _check(self) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._closed:
            raise ShutdownError(f"nats: {self._where()}: closed")

    def _where(self) -> str:
        return f"channel {self._channel!r} (stream {self._names.stream})"

    def close(self) -> None:
        self._closed = True
        if self._sub is not None:
            asyncio.get_running_loop().create_task(self._unsubscribe())
        err = ShutdownError(f"nats: {self._where()}: closed")
        for x in list(self._inflight.values()):
            self._fail(x, err)
