"""The adaptor at a process's resource limits: what an open WAL can still do once the process has no descriptor
left (a server at its ``RLIMIT_NOFILE``), on a backend that needs none to read or to run a txn.

Each case runs in a fresh interpreter, since what it checks depends on which modules the process has not loaded yet.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_AT_THE_LIMIT = textwrap.dedent(
    """
    import os, resource
    from wal import OpenOption, PChannelInfo, ReadOption, registry
    from wal.message import MessageType, MutableMessage
    from wal.options import DeliverPolicy

    op = registry.must_get_builder("memory").build()
    w = op.open(OpenOption(channel=PChannelInfo(name="c", term=1)))
    w.append(MutableMessage(MessageType.INSERT, b"before", vchannel="v"))
    n = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 8, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        if {what!r} == "read":
            s = w.read(ReadOption(deliver_policy=DeliverPolicy.all(), vchannel="v"))
            m = s.recv(timeout=10)
            while m.message_type is not MessageType.INSERT:
                m = s.recv(timeout=10)
            print(m.payload.decode())
            s.close()
        else:
            t = w.begin_txn(vchannel="v")
            t.append(MutableMessage(MessageType.INSERT, b"in a txn", vchannel="v"))
            t.commit()
            print("committed")
    finally:
        for fd in hog:
            os.close(fd)
        w.close()
        op.close()
    """
)


@pytest.mark.parametrize(("what", "out"), [("read", "before"), ("txn", "committed")])
def test_an_open_wal_reads_and_runs_txns_with_no_descriptor_left(what: str, out: str) -> None:
    """``read()`` and ``begin_txn()`` imported their modules at their first call, and an import opens the module's
    file: in a process at its descriptor limit the first read (or txn) of its life raised a bare ``OSError``
    ("Too many open files: '.../wal/adaptor/_scanner.py'"), not a WAL error, on a memory WAL that needs no
    descriptor to read; the same for a ``MemoryError`` in that import. They are imported with the WAL now."""
    r = subprocess.run(
        [sys.executable, "-c", _AT_THE_LIMIT.format(what=what)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == out.split()
