"""Real Ctrl-Cs at random moments, for tests of what an interrupt leaves behind.

pytest-timeout takes SIGALRM, so SIGUSR1 stands in for SIGINT: its handler raises KeyboardInterrupt in the main
thread at whatever bytecode that thread is running, as Python's own SIGINT handler does.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


def _raise(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigusr1_interrupts() -> Iterator[int]:
    """While inside, SIGUSR1 raises KeyboardInterrupt in the main thread (which must be the caller's); yields its
    ident, for :func:`run_interrupted`."""
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGUSR1, _raise)
    try:
        yield main
    finally:
        signal.signal(signal.SIGUSR1, old)


def run_interrupted(main: int, delay: float, fn: Callable[[], object]) -> None:
    """Run ``fn`` while a timer thread interrupts the main thread after ``delay`` seconds; the interrupt is
    swallowed wherever it lands (in ``fn``, after it, or in the except clause that catches it)."""
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGUSR1))
    try:
        timer.start()
        try:
            fn()
        except KeyboardInterrupt:
            pass
        timer.join()
    except KeyboardInterrupt:
        timer.join()


def returns_within(fn: Callable[[], object], seconds: float) -> bool:
    """Whether ``fn`` (a close, say) returns within ``seconds``, run in a daemon thread so a hang cannot hang the
    test too."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


@contextmanager
def interrupt_at_line(func: Callable[..., object], text: str) -> Iterator[list[bool]]:
    """While inside, the first time ``func`` (in this thread) is about to run a line containing ``text``, a
    KeyboardInterrupt is raised there: a Ctrl-C landing at that exact point, deterministically. Yields a
    one-item list that turns True once it fired."""
    code = func.__code__
    with open(code.co_filename) as f:
        lines = f.read().splitlines()
    fired = [False]

    def local(frame: FrameType, event: str, arg: object) -> object:
        if fired[0]:
            return None
        if event == "line" and text in lines[frame.f_lineno - 1]:
            fired[0] = True
            raise KeyboardInterrupt(f"at {text!r}")
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        return local if frame.f_code is code and not fired[0] else None

    old = sys.gettrace()
    sys.settrace(tracer)  # type: ignore[arg-type]
    try:
        yield fired
    finally:
        sys.settrace(old)
