"""Random fault schedules on localfs through the full WAL (issue #6, item 1, beyond the fixed set of
test_reliability_faults.py): each trial arms one to three faults of random kind, errno, position and shape (short
write or error), appends from one to four threads, then reopens the same directory healthily and checks every
message acknowledged by any trial so far. Trials chain on one directory, so faults also hit recovery, segment
rolls and logs that were already recovered once.

Reduced form in the suite (``WAL_FAULT_TRIALS``, default 12); full form in docs/RELIABILITY.md.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest
from _faults import Fault, FaultyFileOps
from test_reliability_faults import _Appender, _check_recovered, _full, _user_messages

from wal import OpenOption, PChannelInfo
from wal.errors import WALError
from wal.message import MessageType, MutableMessage

pytestmark = pytest.mark.timeout(300)

TRIALS = int(os.environ.get("WAL_FAULT_TRIALS", "12"))
SEED = int(os.environ.get("WAL_FAULT_SEED", "20261127"))

# op -> errnos it may fail with; write-like ops may also be short (half written, then ENOSPC)
_OPS: dict[str, tuple[int, ...]] = {
    "pwritev": (errno.ENOSPC, errno.EIO),
    "pwrite": (errno.ENOSPC, errno.EIO),
    "write": (errno.ENOSPC, errno.EIO),
    "fdatasync": (errno.EIO,),
    "fsync": (errno.EIO,),
    "fallocate": (errno.ENOSPC,),
    "rename": (errno.EIO, errno.ENOSPC),
    "open": (errno.EMFILE, errno.ENOSPC, errno.EIO),
    "mmap": (errno.ENOMEM,),
}
_SHORTABLE = {"pwritev", "pwrite", "write"}


def _random_fault(rng: random.Random) -> Fault:
    op = rng.choice(sorted(_OPS))
    short = op in _SHORTABLE and rng.random() < 0.3
    return Fault(
        op,
        rng.choice(_OPS[op]),
        nth=rng.randint(1, 40),
        times=rng.choice((1, 1, 1, 2, 0)),  # 0: the fault stays (a disk that stays full or broken)
        short=short,
    )


def _open(root: Path, term: int, fops: FaultyFileOps | None = None) -> tuple[Any, Any]:
    opener = _full(root, fops)
    try:
        return opener, opener.open(OpenOption(channel=PChannelInfo(name="p1", term=term)))
    except BaseException:
        opener.close()
        raise


def test_random_fault_schedules_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    acked: dict[bytes, int] = {}
    attempted: set[bytes] = set()
    fired_kinds: set[str] = set()
    surfaced = 0
    term = 1
    for trial in range(TRIALS):
        faults = [_random_fault(rng) for _ in range(rng.randint(1, 3))]
        fops = FaultyFileOps(*faults)  # counted from the start: faults may hit recovery and the first tick too
        term += 1
        try:
            opener, w = _open(tmp_path, term, fops)
        except WALError:
            surfaced += 1  # the open failed cleanly; the healthy reopen below checks nothing was lost
        else:

            def append(p: bytes, w: Any = w) -> int:
                m = MutableMessage(MessageType.INSERT, p, None, "v1")
                if rng.random() < 0.5:
                    r = w.append(m, timeout=20)
                else:
                    r = w.append_async(m).result(timeout=20)
                return int(r.message_id.value)

            app = _Appender(append, rng.randint(1, 4), trial * 100_000)
            app.run(limit=rng.randint(20, 120))
            for e in app.errors:
                assert isinstance(e, WALError), f"trial {trial}: {type(e).__name__} is not a WALError: {e!r}"
            surfaced += bool(app.errors)
            acked.update(app.acked)
            attempted |= app.attempted
            w.close()
            opener.close()
        fired_kinds |= {f.kind for f in faults if f.fired}

        term += 1
        opener, w = _open(tmp_path, term)  # healthy: recovery must succeed after any of these faults
        try:
            check = _Appender(lambda p: 0, 1, 0)
            check.acked, check.attempted = acked, attempted
            _check_recovered(_user_messages(w), check, f"trial {trial} (seed {SEED}, faults {faults})")
        finally:
            w.close()
            opener.close()
    print(f"\nrandom fault schedules: {TRIALS} trials, {surfaced} surfaced a WALError, "
          f"{len(acked)} acknowledged messages checked, kinds fired: {sorted(fired_kinds)}")
    assert surfaced > 0, "no fault ever reached an appender: the schedule is not exercising anything"
