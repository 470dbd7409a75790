"""A WAL copied into a forked child (``os.fork``, ``multiprocessing``'s fork workers) refuses to act for its
parent, fast and loudly, and its ``close()`` returns: the child has none of the parent's threads, so appends
waited for ever for the append thread and ``close()`` hung waiting for it to end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from wal import AccessMode, DeliverPolicy, OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import ShutdownError
from wal.message import MessageType, MutableMessage


def _localfs_opts(tmp_path: Path, backend: str) -> dict[str, Any]:
    return {"root": str(tmp_path), "segment_bytes": 1 << 20} if backend == "localfs" else {}


def _msg(p: bytes) -> MutableMessage:
    return MutableMessage(MessageType.INSERT, p, vchannel="v")


def _child(w, op) -> int:  # type: ignore[no-untyped-def]
    """Runs in the child; the exit code says which check failed (0: all held)."""
    t0 = time.monotonic()
    try:
        w.append(_msg(b"child-sync"))
        return 2
    except ShutdownError as e:
        if "forked" not in str(e):
            return 3
    f = w.append_async(_msg(b"child-async"))
    try:
        f.result(5)
        return 4
    except ShutdownError:
        pass
    except TimeoutError:
        return 5
    w.close()
    op.close()
    return 0 if time.monotonic() - t0 < 10 else 6


def _wait_child(pid: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -1  # hung


def _in_child(child: Callable[[], int], seconds: float = 30) -> int:
    """Fork; the child runs ``child`` and exits with what it returns (1 if it raised). The child's exit code, or
    -1 when it did not end within ``seconds`` (then it is killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = child()
        finally:
            os._exit(code)
    return _wait_child(pid, seconds)


@contextmanager
def _held_by_another_thread(lock: Any) -> Iterator[None]:
    """Another thread holds ``lock`` for the duration (as a parent thread inside a short critical section would at
    a fork; in the child that thread does not exist)."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait()

    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(5)
    try:
        yield
    finally:
        release.set()
        t.join()


@pytest.mark.parametrize("backend", ["localfs", "memory"])
def test_a_forked_child_cannot_use_its_parents_wal_and_closes_it_without_hanging(tmp_path: Path, backend: str) -> None:
    op = registry.must_get_builder(backend).build(**_localfs_opts(tmp_path, backend))
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    stop = threading.Event()
    acked: list[bytes] = []

    def produce() -> None:  # the parent's append thread and producers are busy at the fork
        i = 1
        while not stop.is_set():
            fs = [w.append_async(_msg(f"p{i + k}".encode())) for k in range(50)]
            for k, f in enumerate(fs):
                f.result()
                acked.append(f"p{i + k}".encode())
            i += 50

    t = threading.Thread(target=produce)
    t.start()
    try:
        codes = []
        for _ in range(5):
            time.sleep(0.02)
            codes.append(_in_child(lambda: _child(w, op)))
        assert codes == [0] * 5, codes
    finally:
        stop.set()
        t.join()
    w.append(_msg(b"last"))  # the parent writes on
    got = []
    with w.read(ReadOption(deliver_policy=DeliverPolicy.all())) as s:
        while len(got) < len(acked) + 2:
            m = s.recv(5)
            if m.message_type is MessageType.INSERT:
                got.append(bytes(m.payload))
    assert got == [b"p0", *acked, b"last"]  # nothing of the children's, nothing of the parent's lost
    w.close()
    op.close()


@pytest.mark.parametrize("held", ["dispatcher", "memory log"])
def test_a_child_forked_while_a_parent_thread_holds_a_lock_does_not_hang(held: str) -> None:
    """Deterministic form of the race above: another thread of the parent holds the dispatcher's lock, or the
    memory backend's log lock (as an append does), at the fork; in the child that thread does not exist."""
    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    lock = w._dispatcher._lock if held == "dispatcher" else w._impls._log.lock
    with _held_by_another_thread(lock):
        assert _in_child(lambda: _child(w, op)) == 0
    w.close()
    op.close()


def test_a_child_closing_a_copied_follower_leaves_the_parents_inotify_watch_alone(tmp_path: Path) -> None:
    """A follower's watchdog observer shares its inotify descriptor and kill pipe with a forked child's copy: the
    child's close of the follower removed the parent's watch (no more wake-ups), and its opener's close wrote the
    kill pipe, on which the parent's inotify thread then spun at 100 % CPU until the parent closed its opener."""
    pytest.importorskip("watchdog")
    wop = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20, sync="never")
    w = wop.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    rop = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    r = rop.open(OpenOption(PChannelInfo("c", 1, access_mode=AccessMode.RO)))
    hub = r._impls._hub

    def bumps() -> int:
        v0 = hub.version
        for i in range(5):
            (tmp_path / "c" / f"junk{i}").write_bytes(b"x")
        deadline = time.monotonic() + 2
        while hub.version == v0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return hub.version - v0

    try:
        assert bumps() > 0

        def close_copies() -> int:
            r.close()
            rop.close()
            return 0

        assert _in_child(close_copies) == 0
        assert bumps() > 0  # the parent's watch is still there
        t0 = os.times()
        time.sleep(1)
        t1 = os.times()
        assert t1.user + t1.system - t0.user - t0.system < 0.5  # and its inotify thread does not spin
    finally:
        r.close()
        rop.close()
        w.close()
        wop.close()


@pytest.mark.parametrize("backend", ["localfs", "memory"])
@pytest.mark.parametrize("during", ["wal close", "opener open", "opener close"])
def test_a_child_closes_its_copies_while_a_parent_thread_was_opening_or_closing(
    tmp_path: Path, backend: str, during: str
) -> None:
    """A parent thread was inside ``w.close()``, ``op.open()`` or ``op.close()`` at the fork: the child's
    ``w.close()`` waited for ever for that close to end, and its ``op.close()`` for that open or close."""
    op = registry.must_get_builder(backend).build(**_localfs_opts(tmp_path, backend))
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    inside, go = threading.Event(), threading.Event()
    if during == "opener open":
        target: Any = op._impls
        name, run = "open", lambda: op.open(OpenOption(PChannelInfo("d", 1)))
    else:
        target = w._impls
        name, run = "close", (w.close if during == "wal close" else op.close)
    orig = getattr(target, name)
    parent = os.getpid()

    def blocked(*a: Any) -> Any:
        if os.getpid() == parent:  # the parent's call waits, holding the fork inside it
            inside.set()
            go.wait()
        return orig(*a)

    setattr(target, name, blocked)
    t = threading.Thread(target=run)
    t.start()
    try:
        assert inside.wait(5)

        def close_copies_twice() -> int:
            w.close()
            w.close()
            op.close()
            op.close()
            return 0

        assert _in_child(close_copies_twice, 10) == 0
    finally:
        go.set()
        t.join()
    w.close()
    op.close()


def _child_of_pending(w, s, fut) -> int:  # type: ignore[no-untyped-def]
    """In the child: a future pending at the fork and a scanner copied from the parent end at once."""
    import asyncio

    try:
        fut.result(10)
        return 2
    except ShutdownError as e:
        if "forked" not in str(e):
            return 3
    except TimeoutError:
        return 4
    try:
        s.recv(None)
        return 5
    except ShutdownError as e:
        if "forked" not in str(e):
            return 6

    async def first() -> None:
        async for _m in s:
            return

    try:
        asyncio.run(asyncio.wait_for(first(), 10))
        return 7
    except ShutdownError:
        pass
    except TimeoutError:
        return 8
    s.close()
    w.close()
    return 0


def test_a_future_pending_and_a_scanner_waiting_at_the_fork_end_at_once_in_the_child() -> None:
    """Review 10e: in a forked child, result() of an append pending at the fork and recv(None) / async for on a
    scanner copied from the parent waited for ever (nothing can settle or arrive there)."""
    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.latest()))

    def wait_in_recv() -> None:  # a parent thread in recv at the fork; the parent's close ends it
        try:
            while True:
                s.recv(None)
        except ShutdownError:
            pass

    waiting = threading.Thread(target=wait_in_recv, daemon=True)
    waiting.start()
    with _held_by_another_thread(w._impls._log.lock):
        fut = w.append_async(_msg(b"pending"))  # its batch waits for the log lock: pending at the fork
        time.sleep(0.05)
        assert not fut.done()
        assert _in_child(lambda: _child_of_pending(w, s, fut), 60) == 0
    assert fut.result(5).message_id is not None  # the parent's append settles in the parent
    s.close()
    waiting.join(5)
    w.close()
    op.close()


def _child_closes_copies(w, s) -> int:  # type: ignore[no-untyped-def]
    try:
        s.recv(None)
        return 2
    except ShutdownError:
        pass
    s.close()
    w.close()
    return 0


def test_a_child_closes_a_copied_scanner_while_a_parent_thread_held_the_wals_scanner_lock() -> None:
    """Review 10g: the copied scanner's close took the WAL copy's scanner lock (to forget itself), which a parent
    thread opening or closing another scanner held at the fork: the child's close hung for ever (3 forks in 300
    with a thread opening and closing scanners)."""
    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all()))
    with _held_by_another_thread(w._scanners_lock):
        assert _in_child(lambda: _child_closes_copies(w, s)) == 0
    s.close()
    w.close()
    op.close()


@pytest.mark.parametrize("backend", ["localfs", "memory"])
def test_a_childs_copy_of_its_parents_writer_says_it_is_not_available(tmp_path: Path, backend: str) -> None:
    """``is_available()`` said True in the child while every append and read there raised ``ShutdownError``, so a
    program that checks it before writing (as Milvus's callers check ``Available()``) went on to fail. A read-only
    WAL's copy still reads in the child, and stays available."""
    op = registry.must_get_builder(backend).build(**_localfs_opts(tmp_path, backend))
    w = op.open(OpenOption(PChannelInfo("c", 1)))
    w.append(_msg(b"p0"))
    ro = op.open(OpenOption(PChannelInfo("c", 1, AccessMode.RO)))

    def child() -> int:
        if w.is_available() or not w.available().is_set():
            return 2
        if not ro.is_available():
            return 3
        return 0

    assert _in_child(child) == 0
    assert w.is_available() and ro.is_available()  # the parent's own are untouched
    ro.close()
    w.close()
    op.close()
