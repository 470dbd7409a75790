"""The write-ahead buffer: the in-memory tail of a WAL, which tailing scanners read instead of the backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from operator import lt as _lt
from typing import Any

from ..errors import InvalidArgumentError, ShutdownError, WALTimeoutError
from ..message import ImmutableMessage, IntMessageID, MessageID, MessageType
from ._errors import EvictedError
from ._wab_compact import COMPACT_TICK, entry_time_tick, expand, id_class_of
from ._wab_queue import ENTRY_OVERHEAD, WABQueue, WABSnapshot

__all__ = ["WriteAheadBuffer", "WriteAheadBufferReader"]

_EMPTY: list[ImmutableMessage] = []
_TT = MessageType.TIME_TICK
PENDING_MAX = 64
"""At most this many messages of :meth:`WriteAheadBuffer.append_batch_tick` wait outside the queue (its size and age
bounds apply to them once queued: any read, a waiting reader, the next :meth:`~WriteAheadBuffer.append`)."""


def _increasing(msgs: list[Any]) -> bool:
    """Whether the entries' time ticks strictly increase (checked in C when they are all compact)."""
    try:
        tts = list(map(COMPACT_TICK, msgs))
    except TypeError:  # a message among them (not subscriptable)
        tts = list(map(entry_time_tick, msgs))
    return all(map(_lt, tts, tts[1:]))


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class WriteAheadBuffer:
    """Messages of one WAL in time-tick order, fed by the time-tick sync, read by any number of scanners.

    Only messages confirmed by a time tick enter (``append`` is called with everything up to that tick), so a
    reader never sees a hole. Entries are evicted by age (``keepalive`` seconds) and total size
    (``capacity_bytes``); a reader that falls behind gets :class:`EvictedError` and reads the backend instead.

    ``on_demand`` (the adaptor's choice): messages are kept only while someone reads the buffer, that is while a
    reader waits on it or one asked it for messages within the last ``keepalive`` seconds. Why: only scanners of
    the writing WAL in this process read it (followers in other processes read the files), and feeding it is about
    a tenth of a pipelined append's cost and up to ``capacity_bytes`` of memory, which a writer without such a
    scanner paid for nothing. Messages not kept are a gap: every reader positioned before it gets
    :class:`EvictedError` (:attr:`_min_tt`), so the gap costs a reader a backend read, never a message. The first
    read makes the buffer keep the following batches, and a scanner catching up switches to it at the next
    persisted tick after that.
    """

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        keepalive: float,
        first_time_tick: ImmutableMessage,
        *,
        now: Callable[[], float] = time.monotonic,
        entry_overhead: int = ENTRY_OVERHEAD,
        on_demand: bool = False,
        on_wanted: Callable[[], None] | None = None,
    ) -> None:
        if first_time_tick.message_type is not MessageType.TIME_TICK:
            raise InvalidArgumentError(f"write-ahead buffer {name!r} must start from a TIME_TICK message")
        self.name = name
        # The condition's lock: an RLock, entered as ``with self._lock`` (see docs/ARCHITECTURE.md, "Interrupts").
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue = WABQueue(capacity_bytes, keepalive, first_time_tick, now, entry_overhead)
        self._id_cls = id_class_of(first_time_tick)  # rebuilds the queue's compact entries (see _wab_compact)
        self._last_tick: ImmutableMessage | None = first_time_tick  # None: not built yet (see _tick)
        self._last_tt = first_time_tick.time_tick
        self._last_lc: MessageID = first_time_tick.message_id  # the ID of a not-built tick
        # Messages confirmed by append_batch_tick, not in the queue yet: every read folds them in first (under the
        # lock), so no reader can tell; they spare the hot path the queue's bookkeeping and eviction per batch.
        self._pending: list[Any] = []  # messages or compact entries
        self._closed = False
        self._waiting = 0  # readers blocked in _wait (under the lock): append notifies only then
        self._on_demand = on_demand
        # Called (lock released) when a read first finds a gap: the writer then makes a persisted tick, which the
        # reader's catch-up meets and switches to this buffer at (else it waits for the next periodic one, up to a
        # time-tick interval). Once per gap (``_asked_at``: its _min_tt), not at every old tick a catch-up meets.
        self._on_wanted = on_wanted
        self._asked_at = 0
        self._keepalive = keepalive
        self._now = now
        self._read_at = float("-inf")  # when a reader last asked for messages (on_demand: see wants_messages)
        # Readers positioned before this tick are evicted: messages up to it were not kept (on_demand).
        self._min_tt = first_time_tick.time_tick
        # The newest time tick of messages a writer did not hand over (0: none): every tick up to it drops.
        self._gap_tt = 0

    def wants_messages(self) -> bool:
        """Whether the messages of the next batch will be kept (always, unless ``on_demand`` and nobody reads):
        the writer may skip building what it hands over when not, and must then call :meth:`mark_gap`. Read
        without the lock: a reader that arrives just after is still safe, as the gap evicts it."""
        return not self._on_demand or bool(self._waiting) or self._now() - self._read_at < self._keepalive

    def mark_gap(self, up_to: int) -> None:
        """The writer did not hand over messages with time ticks up to ``up_to`` (see :meth:`wants_messages`):
        the ticks that confirm them drop what the buffer holds and evict every reader positioned before them."""
        if up_to > self._gap_tt:
            self._gap_tt = up_to

    def _gap_error(self) -> EvictedError:
        """What a reader positioned before the gap gets (lock held on entry, released for ``on_wanted``, which
        takes the writer's lock)."""
        ask = self._asked_at != self._min_tt
        self._asked_at = self._min_tt
        self._lock.release()
        try:
            if ask and self._on_wanted is not None:
                self._on_wanted()
        finally:
            self._lock.acquire()
        return EvictedError(
            f"write-ahead buffer {self.name!r} did not keep the messages up to time tick {self._min_tt} (nobody was "
            "reading it)"
        )

    def _keeps(self) -> bool:
        """Whether the batch being added is kept (lock held); else it is dropped by :meth:`_drop`."""
        return not self._gap_tt and self.wants_messages()

    def _drop(self, time_tick: int) -> None:
        """Keep nothing up to ``time_tick`` (lock held): the messages of the batch it confirms were not handed over
        or are not wanted. Readers before it are evicted (``_min_tt`` first: an interrupt after it only evicts)."""
        self._min_tt = time_tick
        self._pending.clear()
        self._queue.drop_all_but_last()
        if self._gap_tt <= time_tick:  # else messages above this tick were not handed over either
            self._gap_tt = 0

    @property
    def last_time_tick(self) -> int:
        return self._last_tt

    @property
    def compact_id_class(self) -> type[IntMessageID] | None:
        """The message-ID class of the entries this buffer may store compact (None: it stores messages only);
        a writer may hand it entries already compact (``_wab_compact.compact_written``) for IDs of this class.
        """
        return self._id_cls

    @property
    def last_time_tick_message(self) -> ImmutableMessage:
        """The newest tick; a reader that starts after it (``latest()``) reads the buffer next, so it counts as a
        read (see ``on_demand``)."""
        with self._lock:
            self._read_at = self._now()
            return self._tick()

    def _tick(self) -> ImmutableMessage:
        """The newest tick (lock held), built on first use when :meth:`append_batch_tick` left it as fields."""
        t = self._last_tick
        if t is None:
            lc = self._last_lc
            t = self._last_tick = ImmutableMessage(
                message_id=lc, message_type=_TT, payload=b"", time_tick=self._last_tt, last_confirmed_message_id=lc,
                not_persisted=True,
            )
        return t

    def _fold(self) -> None:
        """Queue the pending messages (lock held): before anything reads the queue or changes it otherwise.

        Readers fold too, in their own threads, where a Ctrl-C may land: the push empties the pending list in the
        same uninterruptible step that queues it (``consume``), so an interrupt leaves them either queued or
        pending, never both (the next fold would queue them twice, out of order). ``evict`` is safe to cut short.
        """
        if self._pending:
            q = self._queue
            q.push(self._pending, compact=True, consume=True)
            q.evict()

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, msgs: list[Any], time_tick_msg: ImmutableMessage) -> None:
        """Add the messages confirmed by ``time_tick_msg`` (all with tt in (last tick, its tt]), then the tick.
        ``msgs`` may hold compact entries (see ``_wab_compact``), as may those of :meth:`append_batch_tick`.

        A not-persisted tick is not stored (a reader could not resume from its ID) but is served as the newest
        tick to readers that have caught up.
        """
        tt = time_tick_msg.time_tick
        with self._lock:
            if self._closed:
                raise ShutdownError(f"write-ahead buffer {self.name!r} is closed")
            last = self._last_tt
            if time_tick_msg.message_type is not MessageType.TIME_TICK or tt <= last:
                raise InvalidArgumentError(
                    f"write-ahead buffer {self.name!r}: expected a TIME_TICK above {last}, got "
                    f"{time_tick_msg.message_type.name} at {tt}"
                )
            # The queue's push checks the order within msgs, so the bounds need only the first and the last.
            for m in (msgs[0], msgs[-1]) if msgs else ():
                mtt = entry_time_tick(m)
                if not last < mtt <= tt:
                    raise InvalidArgumentError(
                        f"write-ahead buffer {self.name!r}: message time tick {mtt} outside ({last}, {tt}]"
                    )
            q = self._queue
            if not self._keeps():
                self._drop(tt)
            elif msgs:
                if self._pending:
                    self._fold()
                q.push(msgs, compact=True)
            elif self._pending:
                self._fold()
            if not time_tick_msg.not_persisted:
                q.push([time_tick_msg])
            q.evict()
            self._last_tick = time_tick_msg
            self._last_tt = tt
            if self._waiting:  # after every batch: a notify with nobody waiting still costs a lock check
                self._cond.notify_all()

    def append_batch_tick(self, msgs: list[Any], time_tick: int, last_confirmed: MessageID) -> None:
        """:meth:`append` with a not-persisted tick at ``time_tick`` whose ID and last-confirmed ID are
        ``last_confirmed``: the per-batch tick of the append path. The tick is built only if a reader asks for it,
        and the messages reach the queue when a reader looks, a reader waits, or :data:`PENDING_MAX` of them wait.
        """
        with self._lock:
            if self._closed:
                raise ShutdownError(f"write-ahead buffer {self.name!r} is closed")
            last = self._last_tt
            if time_tick <= last:
                raise InvalidArgumentError(
                    f"write-ahead buffer {self.name!r}: expected a TIME_TICK above {last}, got one at {time_tick}"
                )
            if msgs:
                first_tt, last_msg_tt = entry_time_tick(msgs[0]), entry_time_tick(msgs[-1])
                if not (last < first_tt and last_msg_tt <= time_tick):
                    bad = first_tt if first_tt <= last else last_msg_tt
                    raise InvalidArgumentError(
                        f"write-ahead buffer {self.name!r}: message time tick {bad} outside ({last}, {time_tick}]"
                    )
            if not self._keeps():
                self._drop(time_tick)
            elif msgs:
                pending = self._pending
                if len(msgs) + len(pending) < PENDING_MAX and (len(msgs) == 1 or _increasing(msgs)):
                    # in order after the pending ones
                    pending += msgs
                else:  # a large batch, or a repeated tick (the queue's rule decides): straight to the queue
                    q = self._queue
                    if pending:
                        q.push(pending, compact=True, consume=True)
                    q.push(msgs, compact=True)  # all or nothing
                    q.evict()
            self._last_tick = None
            self._last_tt = time_tick
            self._last_lc = last_confirmed
            if self._waiting:
                self._fold()
                self._cond.notify_all()

    def read_from_exclusive_time_tick(self, time_tick: int, timeout: float | None = None) -> WriteAheadBufferReader:
        """A reader of every message with ``tt > time_tick``; blocks until the buffer has one.

        Raises :class:`EvictedError` when ``time_tick`` is older than the buffer, ``WALTimeoutError`` after
        ``timeout`` seconds, ``ShutdownError`` when closed.
        """
        deadline = _deadline(timeout)
        with self._lock:
            while True:
                if self._closed:
                    raise ShutdownError(f"write-ahead buffer {self.name!r} is closed")
                self._read_at = self._now()  # keep the next batches (on_demand)
                if time_tick < self._min_tt:
                    raise self._gap_error()
                if self._pending:
                    self._fold()
                q = self._queue
                snap = q.snapshot_from_exclusive_time_tick(time_tick)
                if snap is not None:
                    return WriteAheadBufferReader(self, snap.msgs, snap.pos, snap.end, snap.next_offset, time_tick)
                nxt = q.current_offset + 1
                if q.last_time_tick == time_tick:
                    return WriteAheadBufferReader(self, _EMPTY, 0, 0, nxt, time_tick)
                if self._last_tt > time_tick:
                    return WriteAheadBufferReader(self, [self._tick()], 0, 1, nxt, time_tick)
                self._wait(deadline, f"no message after time tick {time_tick}")

    def _wait(self, deadline: float | None, what: str) -> None:
        """Wait on the condition (lock held) until notified or the deadline passes."""
        left = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WALTimeoutError(f"write-ahead buffer {self.name!r}: timed out waiting: {what}")
        self._waiting += 1
        try:
            self._cond.wait(left)  # the caller re-checks its state, then comes back here to time out
        finally:
            self._waiting -= 1

    def _refill(
        self, reader: WriteAheadBufferReader, deadline: float | None
    ) -> WABSnapshot | ImmutableMessage:
        """The reader's next snapshot, or the newest (not stored) tick when nothing is stored after the reader."""
        with self._lock:
            while True:
                if self._closed:
                    raise ShutdownError(f"write-ahead buffer {self.name!r} is closed")
                self._read_at = self._now()
                if reader._last_tt < self._min_tt:
                    raise self._gap_error()
                if self._pending:
                    self._fold()
                snap = self._queue.snapshot_from_offset(reader._next_offset)
                if snap is not None:
                    return snap
                if self._last_tt > reader._last_tt:
                    return self._tick()
                self._wait(deadline, f"no message after time tick {reader._last_tt}")

    def close(self) -> None:
        """Wake and fail every blocked reader; later calls raise ``ShutdownError``."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._lock:
            if self._pending:
                self._fold()
            return len(self._queue)

    @property
    def size(self) -> int:
        with self._lock:
            if self._pending:
                self._fold()
            return self._queue.size


class WriteAheadBufferReader:
    """Reads one buffer forward from a position; owned by one scanner (not thread-safe)."""

    __slots__ = ("_buf", "_end", "_last_tt", "_msgs", "_next_offset", "_pos")

    def __init__(
        self,
        buf: WriteAheadBuffer,
        msgs: list[Any],
        pos: int,
        end: int,
        next_offset: int,
        last_tt: int,
    ) -> None:
        self._buf = buf
        self._msgs = msgs
        self._pos = pos
        self._end = end
        self._next_offset = next_offset
        self._last_tt = last_tt

    def _ensure(self, timeout: float | None) -> None:
        if self._buf._closed:
            raise ShutdownError(f"write-ahead buffer {self._buf.name!r} is closed")
        if self._pos < self._end:
            return
        got = self._buf._refill(self, _deadline(timeout))
        if isinstance(got, WABSnapshot):
            self._msgs, self._pos, self._end, self._next_offset = got.msgs, got.pos, got.end, got.next_offset
        else:
            self._msgs, self._pos, self._end = [got], 0, 1

    def next(self, timeout: float | None = None) -> ImmutableMessage:
        """The next message; blocks up to ``timeout`` seconds (``WALTimeoutError``), ``EvictedError`` if it fell
        out of the buffer, ``ShutdownError`` once the buffer is closed."""
        self._ensure(timeout)
        e = self._msgs[self._pos]
        m: ImmutableMessage = expand(e, self._buf._id_cls) if e.__class__ is tuple else e
        self._pos += 1
        self._last_tt = m.time_tick
        return m

    def next_batch(self, max_messages: int, timeout: float | None = None) -> list[ImmutableMessage]:
        """Up to ``max_messages`` messages at once: the rest of the current snapshot (refilled if empty)."""
        self._ensure(timeout)
        pos = self._pos
        end = min(self._end, pos + max(1, max_messages))
        out = self._msgs[pos:end]
        if self._buf._id_cls is not None:  # else nothing is compact
            id_cls = self._buf._id_cls
            out = [expand(e, id_cls) if e.__class__ is tuple else e for e in out]
        self._pos = end
        self._last_tt = out[-1].time_tick
        return out

    @property
    def last_time_tick(self) -> int:
        """Time tick of the last message returned (the exclusive start before the first)."""
        return self._last_tt
