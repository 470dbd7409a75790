"""The opener adaptor: opens backend channels and wraps each in a WAL adaptor; closing it closes them all."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from .. import _fork
from .._interfaces import WAL, Opener
from .._types import AccessMode, OpenOption
from ..errors import InvalidArgumentError
from ..interceptors import InterceptorBuilder
from ..walimpls import OpenerImpls
from ._lifetime import Lifetime
from ._options import AdaptorOptions
from ._slow import CloseWatch
from ._wal import ROWALAdaptor, WALAdaptor

__all__ = ["OpenerAdaptor"]


class OpenerAdaptor(Opener):
    def __init__(
        self, name: str, impls: OpenerImpls, opts: AdaptorOptions, builders: Sequence[InterceptorBuilder]
    ) -> None:
        self._name = name
        self._impls = impls
        self._opts = opts
        self._builders = tuple(builders)
        self._lifetime = Lifetime(f"wal opener {name!r}")
        self._wals: set[ROWALAdaptor] = set()
        # Read-only WALs weakly: one dropped without close() is collected and its backend closed in the reaper's
        # thread (a localfs follower's channel kept its watchdog thread, one per channel, for the opener's life).
        self._ro_wals: weakref.WeakSet[ROWALAdaptor] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._close_cut_short = False  # the first close did not finish (a Ctrl-C): the next close finishes it
        self._close_retry = threading.Lock()
        self._forks = _fork.generation  # a forked child's copy differs (see close)

    def __repr__(self) -> str:
        return f"<Opener {self._name!r}{' closed' if self._lifetime.stopped else ''}>"

    def open(self, opt: OpenOption) -> WAL:
        if not isinstance(opt, OpenOption):
            raise InvalidArgumentError(f"open takes an OpenOption, got {type(opt).__name__}")
        opt.validate()
        with self._lifetime.call():
            impls = self._impls.open(opt)
            try:
                w: ROWALAdaptor
                ro = opt.channel.access_mode is AccessMode.RO
                if ro:
                    w = ROWALAdaptor(impls, self._opts, self._forget, reap=True)
                else:
                    w = WALAdaptor(impls, self._opts, self._builders, self._forget)
            except BaseException:
                impls.close()
                raise
            with self._lock:
                (self._ro_wals if ro else self._wals).add(w)
            return w

    def _forget(self, w: ROWALAdaptor) -> None:
        if self._forks != _fork.generation:  # a forked child's copy: a parent thread may have held the lock
            self._wals.discard(w)
            self._ro_wals.discard(w)
            return
        with self._lock:
            self._wals.discard(w)
            self._ro_wals.discard(w)

    def close(self) -> None:
        if self._forks != _fork.generation:
            # A forked child's copy: calls in flight (an open) and a close under way are the parent's threads',
            # which do not exist here, and so may be holders of the locks (waiting hung for ever: review 10e).
            self._lifetime.stop()
            for w in [*self._wals, *self._ro_wals]:
                w.close()  # its copy's close, which waits for nothing either
            self._impls.close()
            return
        if not self._lifetime.stop():
            self._closed.wait()
            if self._close_cut_short:  # as WAL.close: every step may rerun (a WAL's close finishes its own)
                with self._close_retry:
                    if self._close_cut_short:
                        self._close_inner()
                        self._close_cut_short = False
            return
        try:
            self._close_inner()
        except BaseException:
            self._close_cut_short = True  # else its WALs stay open, their channels locked, until the process ends
            raise
        finally:
            self._closed.set()

    def _close_inner(self) -> None:
        # Watched for the opens in flight and the backend's close: each WAL's close warns for itself.
        with CloseWatch(f"wal opener {self._name!r}") as watch:
            watch.step = "opens in flight (an open writes its first time tick)"
            self._lifetime.wait()
            with self._lock:
                wals = [*self._wals, *self._ro_wals]
            watch.step = "its WALs to close"
            for w in wals:
                w.close()
            watch.step = "the backend to close"
            self._impls.close()
