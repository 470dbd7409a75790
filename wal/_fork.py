"""How many forks made this process: objects that own threads, locks or files note it when made, and a copy a
fork made (``multiprocessing``'s fork workers, ``os.fork``) refuses to act for its parent.

Why: a forked child gets a copy of every object but only the forking thread. A writer's copy would write where
the parent writes next without holding its lock, and a WAL's copy waits for an append thread that does not exist
(its ``close()`` hung for ever). The count is read, never a pid: it changes in the child before any user code runs.
"""

from __future__ import annotations

import os

__all__ = ["generation"]

generation = 0
"""Forks since the program started (this process's copy). Read it as ``_fork.generation``: a value imported
with ``from`` would not change."""


def _count() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_count)
