"""A writer whose channel directory is deleted or renamed away under it (review 16a).

It learned it only when it next made a file there (a roll): until then every append was acknowledged into files
that no open of the channel will find, and a roll, a retention or a ``truncate`` after the directory was replaced
made and deleted files by path in the new directory, another writer's channel.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
from pathlib import Path

import pytest
from _localfs_util import build, msg, open_ro, open_rw, read_all

from wal import OpenOption, PChannelInfo, ReadOption, registry
from wal.errors import ShutdownError, WALIOError
from wal.message import MessageType, MutableMessage
from wal.options import DeliverPolicy
from wal.walimpls.localfs import FileOps, _wal
from wal.walimpls.localfs._message_id import LocalFSMessageID
from wal.walimpls.localfs._wal import DIR_CHECK_INTERVAL


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
@pytest.mark.parametrize("how", ["rmtree", "rename"])
def test_an_append_after_the_channel_directory_is_deleted_or_moved_fails_and_the_writer_stops(
    tmp_path: Path, sync: str, how: str
) -> None:
    op = build(tmp_path, sync=sync)
    w = open_rw(op)
    w.append_batch([msg(b"kept", tt=1 + i) for i in range(3)])
    if how == "rmtree":
        shutil.rmtree(tmp_path / "p1")
    else:
        os.rename(tmp_path / "p1", tmp_path / "moved")
    time.sleep(2 * DIR_CHECK_INTERVAL)  # batches check at most once per DIR_CHECK_INTERVAL
    with pytest.raises(WALIOError, match=r"channel directory .* deleted or renamed away"):
        w.append(msg(b"lost", tt=10))
    assert isinstance(w.failure(), WALIOError)
    with pytest.raises(ShutdownError):  # stopped for good
        w.append(msg(b"later", tt=11))
    w.close()
    op.close()
    assert not (tmp_path / "p1").exists(), "the writer made its directory again"
    if how == "rename":  # what it acknowledged before the move is where the directory went
        assert _payloads_of(tmp_path, "moved")[:3] == [b"kept"] * 3


def _payloads_of(root: Path, name: str) -> list[bytes]:
    with build(root) as op:
        ro = open_ro(op, name)
        try:
            return [bytes(m.payload) for m in read_all(ro) if m.message_type is not MessageType.TIME_TICK]
        finally:
            ro.close()


def test_a_writer_whose_directory_was_replaced_leaves_the_new_channel_alone(tmp_path: Path) -> None:
    """Renamed away and another channel made at its path: the old writer's roll made its segment there, and its
    ``truncate`` deleted the new channel's segments of the same names (IDs start at 1 in both)."""
    old_op = build(tmp_path, segment_bytes=4096)
    old = open_rw(old_op)
    old.append_batch([msg(b"o" * 1500, tt=1 + i) for i in range(6)])  # two records a segment: three segments
    os.rename(tmp_path / "p1", tmp_path / "moved")
    new_op = build(tmp_path, segment_bytes=4096)
    new = open_rw(new_op)
    new.append_batch([msg(b"n" * 1500, tt=1 + i) for i in range(6)])
    new_files = sorted(os.listdir(tmp_path / "p1"))
    with pytest.raises(WALIOError, match="another directory is at its path"):
        old.truncate(LocalFSMessageID(5))
    with pytest.raises(WALIOError, match="another directory is at its path"):  # the next batch, at once
        old.append(msg(b"o" * 1500, tt=20))
    with pytest.raises(ShutdownError):
        old.append(msg(b"o" * 1500, tt=21))
    assert sorted(os.listdir(tmp_path / "p1")) == new_files
    old.close()
    old_op.close()
    new.append(msg(b"n2", tt=30))
    new.close()
    new_op.close()
    assert _payloads_of(tmp_path, "p1") == [b"n" * 1500] * 6 + [b"n2"]
    assert _payloads_of(tmp_path, "moved") == [b"o" * 1500] * 6


def test_a_roll_after_the_directory_was_replaced_makes_nothing_in_the_new_one(tmp_path: Path) -> None:
    old_op = build(tmp_path, segment_bytes=4096)
    old = open_rw(old_op)
    old.append(msg(b"o" * 1500, tt=1))
    os.rename(tmp_path / "p1", tmp_path / "moved")
    new_op = build(tmp_path, segment_bytes=1 << 20)
    new = open_rw(new_op)
    new.append(msg(b"n", tt=1))
    new_files = sorted(os.listdir(tmp_path / "p1"))
    with pytest.raises(WALIOError):
        old.append_batch([msg(b"o" * 1500, tt=2 + i) for i in range(3)])  # fills the segment: a roll
    assert sorted(os.listdir(tmp_path / "p1")) == new_files
    old.close()
    old_op.close()
    new.close()
    new_op.close()
    assert _payloads_of(tmp_path, "p1") == [b"n"]


def test_the_full_wal_stops_and_its_readers_end_when_its_directory_is_deleted(tmp_path: Path) -> None:
    """Through the adaptor: the append that found it and every later one fail with the same WALIOError, the WAL says
    it is unavailable, and a tailing reader ends with that error rather than wait for ever."""
    opener = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=1 << 20)
    w = opener.open(OpenOption(channel=PChannelInfo(name="p1", term=1)))
    w.append(MutableMessage(MessageType.INSERT, b"kept", vchannel="v"))
    s = w.read(ReadOption(deliver_policy=DeliverPolicy.all(), vchannel="v"))
    shutil.rmtree(tmp_path / "p1")
    time.sleep(2 * DIR_CHECK_INTERVAL)
    with pytest.raises(WALIOError, match="deleted or renamed away"):
        w.append(MutableMessage(MessageType.INSERT, b"lost", vchannel="v"))
    assert not w.is_available()
    with pytest.raises(WALIOError, match="deleted or renamed away"):
        w.append(MutableMessage(MessageType.INSERT, b"later", vchannel="v"))
    got = []
    with pytest.raises(WALIOError):
        for m in s:
            got.append(bytes(m.payload))
    assert b"lost" not in got and b"later" not in got
    s.close()
    w.close()
    opener.close()


@pytest.mark.parametrize("sync", ["always", "never"])
def test_a_busy_writer_stops_soon_after_its_directory_is_deleted(tmp_path: Path, sync: str) -> None:
    """No pause needed: a writer appending without a break checks its directory every DIR_CHECK_INTERVAL, so it
    stops within that time (a few appends), not at its next roll (1 MiB here: ~8,000 of these appends)."""
    op = build(tmp_path, sync=sync, segment_bytes=1 << 20)
    w = open_rw(op)
    w.append(msg(b"kept", tt=1))
    shutil.rmtree(tmp_path / "p1")
    acked = 0
    with pytest.raises(WALIOError, match="deleted or renamed away"):
        for i in range(2000):  # each at least a write (and with "always" an fdatasync): far over 1 ms in all
            w.append(msg(b"x" * 100, tt=2 + i))
            acked += 1
    assert acked < 2000
    w.close()
    op.close()


@pytest.mark.parametrize("what", ["all", "segment"])
def test_an_append_after_the_active_segment_is_deleted_fails(tmp_path: Path, what: str) -> None:
    """``rm p1/*`` (the directory kept) or the active segment alone deleted: the writer went on acknowledging into
    the deleted file until its roll, which then made a segment after a gap (or after nothing: the log reopened as if
    it began there, the acknowledged appends gone without a word)."""
    op = build(tmp_path, segment_bytes=4096)
    w = open_rw(op)
    w.append_batch([msg(b"o" * 1500, tt=1 + i) for i in range(3)])  # two segments
    segs = sorted((tmp_path / "p1").glob("*.seg"))
    for f in (tmp_path / "p1").iterdir() if what == "all" else segs[-1:]:
        f.unlink()
    time.sleep(2 * DIR_CHECK_INTERVAL)
    with pytest.raises(WALIOError, match=r"active segment .* deleted"):
        w.append(msg(b"lost", tt=10))
    assert isinstance(w.failure(), WALIOError)
    w.close()
    op.close()


def test_the_log_does_not_tell_to_reopen_a_writer_whose_directory_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reopen recovers from an I/O error, but for a deleted directory it makes a new, empty channel: the error
    logged when the writer stops must not advise it."""
    op = build(tmp_path)
    w = open_rw(op)
    w.append(msg(b"kept", tt=1))
    shutil.rmtree(tmp_path / "p1")
    time.sleep(2 * DIR_CHECK_INTERVAL)
    with caplog.at_level("ERROR", logger="wal.localfs"), pytest.raises(WALIOError):
        w.append(msg(b"lost", tt=2))
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert logged and "deleted or renamed away" in logged[0]
    assert "reopen it to recover" not in logged[0]
    w.close()
    op.close()


@pytest.mark.parametrize("how", ["rmtree", "rename"])
def test_a_writer_closed_right_after_its_directory_is_deleted_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Closed within DIR_CHECK_INTERVAL of the deletion, no batch had checked: the appends acknowledged in that
    window were gone and the close said nothing. The close checks once more: an error logged (close does not raise:
    it reports storage failures in the log), and ``failure()`` says why."""
    monkeypatch.setattr(_wal, "DIR_CHECK_INTERVAL", math.inf)  # every batch inside the window: none checks
    op = build(tmp_path)
    w = open_rw(op)
    w.append(msg(b"kept", tt=1))
    if how == "rmtree":
        shutil.rmtree(tmp_path / "p1")
    else:
        os.rename(tmp_path / "p1", tmp_path / "moved")
    w.append(msg(b"acknowledged, then lost", tt=2))
    with caplog.at_level("ERROR", logger="wal.localfs"):
        w.close()
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(logged) == 1 and "deleted or renamed away" in logged[0], logged
    assert "reopen it to recover" not in logged[0]
    assert isinstance(w.failure(), WALIOError)
    op.close()
    assert not (tmp_path / "p1").exists()
    caplog.clear()
    op = build(tmp_path)  # a writer whose directory stayed closes without a word
    w = open_rw(op)
    w.append(msg(b"kept", tt=1))
    with caplog.at_level("WARNING", logger="wal.localfs"):
        w.close()
    assert not caplog.records and w.failure() is None
    op.close()


class _NoStat(FileOps):
    """``stat`` of one path refused (EACCES), as when a parent directory's mode changes under the process."""

    refused = ""

    def identity(self, path: str) -> tuple[int, int]:
        if path == self.refused:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return super().identity(path)


def test_a_writer_that_may_not_stat_its_directory_goes_on_and_says_so_as_a_follower_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The EACCES stopped the writer at its next batch's check, though its files are open (it can still make them
    durable) and it had gone on until its next roll before the check existed; a read-only follower in the same case
    retries and warns. The writer goes on, warns once (not at every check) and when the check works again; a roll,
    which goes by path, still fails, and a deletion is still found (by the open segment's link count)."""
    ops = _NoStat()
    op = build(tmp_path, segment_bytes=4096, _file_ops=ops)
    w = open_rw(op)
    w.append(msg(b"a", tt=1))
    ops.refused = str(tmp_path / "p1")
    with caplog.at_level("WARNING", logger="wal.localfs"):
        for i in range(3):
            time.sleep(2 * DIR_CHECK_INTERVAL)
            w.append(msg(b"b", tt=2 + i))
        assert w.failure() is None
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and "Permission denied" in warned[0] and ops.refused in warned[0], warned
        ops.refused = ""
        time.sleep(2 * DIR_CHECK_INTERVAL)
        w.append(msg(b"c", tt=5))
        assert "works again" in caplog.records[-1].getMessage()
        ops.refused = str(tmp_path / "p1")
        with pytest.raises(WALIOError, match="Permission denied"):  # a roll: by path
            w.append_batch([msg(b"r" * 1500, tt=6 + i) for i in range(3)])
    w.close()
    op.close()
    with build(tmp_path) as op:
        got = [bytes(m.payload) for m in read_all(open_ro(op)) if m.message_type is not MessageType.TIME_TICK]
    assert got[:5] == [b"a", b"b", b"b", b"b", b"c"]  # and what of the failed batch was written before its roll
    assert set(got[5:]) <= {b"r" * 1500}

    ops.refused = ""
    shutil.rmtree(tmp_path / "p1")
    op = build(tmp_path, _file_ops=ops)
    w = open_rw(op)
    w.append(msg(b"a", tt=1))
    ops.refused = str(tmp_path / "p1")
    shutil.rmtree(tmp_path / "p1")
    time.sleep(2 * DIR_CHECK_INTERVAL)
    with pytest.raises(WALIOError, match=r"active segment .* deleted"):
        w.append(msg(b"lost", tt=2))
    w.close()
    op.close()
