"""``info``, ``dump``, ``verify``, ``repair``: the on-disk commands, built on ``wal.walimpls.localfs.tools``.

Only ``repair`` writes, and only with the channel's write lock held (so never under a running writer).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ..errors import CorruptedError, InvalidMessageIDError, WALError, WALIOError, WALLockedError
from ..message import MessageID, unmarshal_message_id
from ..walimpls.localfs import WAL_NAME
from ..walimpls.localfs import tools as fstools
from ._common import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    MESSAGE_HEADER,
    channel_dir_or_fail,
    channel_option,
    fail,
    format_table,
    json_line,
    message_line,
    message_record,
    reports_errors,
    root_option,
    time_of,
)

__all__ = ["dump", "info", "parse_message_id", "repair", "verify"]


def parse_message_id(value: str, param_hint: str = "--from") -> MessageID:
    try:
        return unmarshal_message_id(WAL_NAME, value)
    except InvalidMessageIDError as e:
        raise click.BadParameter(f"{value!r} is not a localfs message ID ({e})", param_hint=param_hint) from None


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _tick(tt: int) -> str:
    t = time_of(tt)
    return f"{tt} ({t})" if t else str(tt)


@click.command(epilog=EXIT_CODES_HELP, short_help="Channels, segments, IDs, time ticks, term, lock.")
@root_option()
@channel_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per channel instead of tables.")
@reports_errors
def info(root: str, channel: str | None, as_json: bool) -> None:
    """Channels, segments, sizes, first/last message ID and time tick, term, and whether a writer holds the lock.

    Read-only and safe while a writer appends. A segment, index or TERM it cannot read is named, with why, and the
    rest is shown (an unreadable segment's messages are not counted). A channel whose files cannot be understood
    is shown as DAMAGED, with the error, and the others are still shown (exit 0: `wal verify` is the check; exit 1
    only when a channel, or a directory under the root that may be one, could not be read at all). `wal verify`
    says more.
    """
    if channel is not None:
        channel_dir_or_fail(root, channel)
    names = [channel] if channel is not None else fstools.list_channels(root)
    unlistable = [] if channel is not None else fstools.unlistable_dirs(root)
    if not names:
        _refuse_a_channel_as_root(root)
    if not names and not unlistable:  # with --json, stdout holds JSON objects only: the line goes to stderr
        click.echo(f"no channels under {root}{_elsewhere(root)}", err=as_json)
        return
    failed = 0
    try:
        failed = _info(root, names, as_json)
        for k, (name, why) in enumerate(unlistable):  # may be channels: never left out in silence
            _channel_problem(name, WALIOError(f"cannot list {os.path.join(root, name)}: {why}; if it is a channel, "
                                              "run as its writer's user or root"), as_json, first=not (names or k))
        failed += len(unlistable)
    except BrokenPipeError:  # `wal info ... | head`
        _quiet_broken_pipe()
    if failed:
        raise fail(f"{failed} channel(s) could not be read (see above)")


def _elsewhere(root: str) -> str:
    """A hint when ``root`` holds no channel but a directory right under it does (a --root one level too high)."""
    try:
        subs = sorted(e.path for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError:
        return ""
    found = [p for p in subs if _holds_channels(p)]
    return f" (channels found under {found[0]}: pass --root {found[0]})" if found else ""


def _refuse_a_channel_as_root(root: str) -> None:
    """A usage error when ``root`` is itself a channel's directory (``--root /data/wal/orders``, a natural slip):
    ``verify`` said "ok: no channels" and exited 0, with ``-q`` in silence, having checked nothing."""
    if fstools.is_channel_dir(root):
        parent, name = os.path.split(os.path.normpath(root))
        raise click.BadParameter(
            f"{root} is a channel's directory, not a root of channels: pass --root {parent or '.'} --channel {name}",
            param_hint="'--root'",
        )


def _holds_channels(path: str) -> bool:
    """Whether channels lie right under ``path``; False when it cannot be listed: a mount point's ``lost+found``,
    which only root may list, must not turn "no channels" into an error for every other user."""
    try:
        return bool(fstools.list_channels(path))
    except OSError:
        return False


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


def _info(root: str, names: list[str], as_json: bool) -> int:
    """Show each channel; returns how many could not be read (damage that cannot be understood is shown, not
    counted: ``info`` shows damage and exits 0, ``verify`` is the check)."""
    failed = 0
    for k, name in enumerate(names):
        try:
            ci = fstools.channel_info(root, name)
        except (WALError, OSError) as e:  # this channel's problem: said, and the channels after it still shown
            failed += not isinstance(e, CorruptedError)
            _channel_problem(name, e, as_json, first=not k)
            continue
        segs = ci.segments
        nonempty = [s for s in segs if s.last_id >= s.first_id]
        total_msgs = sum(s.last_id - s.first_id + 1 for s in nonempty)
        sizes = [_file_size(s.path) for s in segs]  # a live writer's retention may delete any of them meanwhile
        total_bytes = sum(n for n in sizes if n is not None)
        if as_json:
            click.echo(json.dumps({
                "channel": ci.name, "damaged": False, "error": None, "term": ci.term, "writer_locked": ci.writer_locked,
                "lock_missing": ci.lock_missing, "lock_error": ci.lock_error, "lost_from": ci.lost_from,
                "lost_front": None if ci.lost_front is None else list(ci.lost_front), "unreadable": ci.unreadable,
                "messages": total_msgs,
                "bytes_on_disk": total_bytes,
                "segments": [{"path": s.path, "first_id": s.first_id, "last_id": s.last_id,
                              "first_time_tick": s.first_time_tick, "last_time_tick": s.last_time_tick,
                              "bytes_used": s.bytes_used, "sealed": s.sealed} for s in segs],
            }))
            continue
        if k:
            click.echo()
        writer = "yes (a writer holds the lock)" if ci.writer_locked else "no"
        if ci.lock_missing:
            writer = "unknown (LOCK was deleted: a writer may still run; see wal verify)"
        elif ci.lock_error is not None:
            writer = f"unknown (LOCK cannot be read: {ci.lock_error}; see wal verify)"
        click.echo(f"channel {ci.name}")
        term: object = ci.term
        if ci.term is None:
            why = ci.unreadable.get(os.path.join(root, ci.name, "TERM"))
            term = "damaged TERM file (run wal verify)" if why is None else f"unknown (TERM cannot be read: {why})"
        click.echo(f"  term            {term}")
        click.echo(f"  writer running  {writer}")
        click.echo(f"  segments        {len(segs)} ({_human_bytes(total_bytes)} on disk)")
        click.echo(f"  messages        {total_msgs}")
        for path, why in ci.unreadable.items():  # TERM's is on the term line
            if path.endswith(".seg"):
                click.echo(f"  UNREADABLE      {os.path.basename(path)} ({why}): left out, its messages not counted")
            elif path.endswith(".idx"):
                click.echo(f"  UNREADABLE      {os.path.basename(path)} ({why}): its segment was read without it")
            elif os.path.basename(path) == "FIRST":
                click.echo(f"  UNREADABLE      FIRST ({why}): whether oldest segments were lost is unknown, and "
                           "opening for write refuses (see wal verify)")
        if ci.lost_from is not None:
            click.echo(f"  LOST            every message from id {ci.lost_from} on: the newest segments were deleted "
                       "(see wal verify)")
        if ci.lost_front is not None:
            lo, left = ci.lost_front
            lost = f"every message from id {lo} on" if left is None else f"ids {lo}..{left - 1}"
            click.echo(f"  LOST            {lost}: the oldest segments were deleted from outside, not by retention "
                       "(see wal verify)")
        if nonempty:
            click.echo(f"  first message   id {nonempty[0].first_id}, tick {_tick(nonempty[0].first_time_tick)}")
            last_tick = max(s.last_time_tick for s in nonempty)
            click.echo(f"  last message    id {nonempty[-1].last_id}, tick {_tick(last_tick)}")
        if segs:
            rows = [
                (os.path.basename(s.path), s.first_id, s.last_id if s.last_id >= s.first_id else "-",
                 s.first_time_tick if s.last_id >= s.first_id else "-",
                 s.last_time_tick if s.last_id >= s.first_id else "-", s.bytes_used,
                 "-" if n is None else n, "yes" if s.sealed else "no")
                for s, n in zip(segs, sizes, strict=True)
            ]
            table = format_table(
                ("segment", "first id", "last id", "first tick", "last tick", "bytes used", "file size", "sealed"),
                rows, right=(False, True, True, True, True, True, True, False),
            )
            click.echo("\n".join("  " + line for line in table.splitlines()))
    return failed


def _channel_problem(name: str, e: Exception, as_json: bool, first: bool) -> None:
    """A channel ``channel_info`` could not show: files it cannot understand (``CorruptedError``: DAMAGED), or an
    error reading them (an I/O error, a writer changing them too fast)."""
    what = f"{type(e).__name__}: {e}" if isinstance(e, WALError) else (
        f"{e.strerror or e} ({e.filename})" if isinstance(e, OSError) and e.filename else str(e))
    if as_json:
        click.echo(json.dumps({"channel": name, "damaged": isinstance(e, CorruptedError), "error": what}))
        return
    if not first:
        click.echo()
    click.echo(f"channel {name}")
    label = "DAMAGED" if isinstance(e, CorruptedError) else "CANNOT READ"
    click.echo(f"  {label:<16}{what} (see wal verify)")


@click.command(epilog=EXIT_CODES_HELP, short_help="Print stored messages (text or JSON lines).")
@root_option()
@channel_option(required=True)
@click.option("--from", "from_id", metavar="ID", help="first message ID to show (inclusive; default: the oldest kept).")
@click.option("--limit", type=click.IntRange(min=0), help="show at most N messages.", metavar="N")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per message.")
@click.option("--payload", type=click.Choice(["hex", "text"]), help="also show each payload, as hex or as UTF-8 text.")
@reports_errors
def dump(root: str, channel: str, from_id: str | None, limit: int | None, as_json: bool, payload: str | None) -> None:
    """Messages as stored: ID, time tick, type, vchannel, properties, payload size (payload on request).

    Shows the records of the log one by one (a transaction appears as its BEGIN_TXN, body and COMMIT_TXN
    records; TIME_TICK records included). Stops at the end of the valid data; at damage inside it (a bad record,
    a damaged segment header, a missing segment, a segment that is not a regular file) prints every message before
    it, then the error, and exits 1.
    Read-only and safe while a writer appends.
    """
    channel_dir_or_fail(root, channel)
    start = parse_message_id(from_id) if from_id is not None else None
    if not as_json:
        click.echo(MESSAGE_HEADER)
    n = 0
    try:
        if limit == 0:
            return
        for m in fstools.iter_messages(root, channel, start):
            if as_json:
                click.echo(json_line(message_record(m, payload)))
            else:
                click.echo(message_line(m, payload))
            n += 1
            if limit is not None and n >= limit:
                break
    except CorruptedError as e:
        raise fail(f"damage after {n} message(s): {e} (run `wal verify`)") from None
    except BrokenPipeError:  # `wal dump ... | head`
        _quiet_broken_pipe()


def _quiet_broken_pipe() -> None:
    _stdout_to_devnull()
    raise click.exceptions.Exit(0)


def _stdout_to_devnull() -> None:
    # Python would print a second error while flushing stdout at exit; point stdout at /dev/null instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@click.command(epilog=EXIT_CODES_HELP, short_help="Check every record, index and summary (read-only).")
@root_option()
@channel_option(required=False)
@click.option("--quiet", "-q", is_flag=True, help="print only the problems.")
@reports_errors
def verify(root: str, channel: str | None, quiet: bool) -> None:
    """Check every record's checksum, each segment's header and summaries, each index, TERM and FIRST.

    Prints each problem as FILE:OFFSET: WHAT. Exits 0 when everything is clean, 1 when anything is wrong. What a
    crashed writer left and its next open fixes without loss (a stale index of the active segment) is printed as a
    note (not with -q) and is no problem.
    Never changes a file; safe while a writer appends (bytes being written at that moment are not reported).
    Shows a progress bar on stderr when stderr is a terminal.
    """
    if channel is not None:
        channel_dir_or_fail(root, channel)
    names = [channel] if channel is not None else fstools.list_channels(root)
    if not names:
        _refuse_a_channel_as_root(root)
        elsewhere = _elsewhere(root)
        if elsewhere:  # a check of nothing passed (with -q, in silence) while the channels were one level down
            raise click.BadParameter(f"no channels under {root}{elsewhere}", param_hint="'--root'")
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label="verifying", file=sys.stderr,
                                    show_percent=True, show_pos=False)
            bar.__enter__()
        bar.update(done - bar.pos)

    use_bar = sys.stderr.isatty() and not quiet
    notes: list[fstools.Problem] = []
    try:
        problems = fstools.verify(root, channel, progress=progress if use_bar else None, notes=notes)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    try:
        for p in problems:
            click.echo(str(p))
        if not quiet:
            for p in notes:
                click.echo(f"note: {p}")
            segs = _count_segments(root, names)
            what = f"{len(names)} channel(s), {segs} segment(s) under {root}"
            noted = f" ({len(notes)} note(s): left by a crash, fixed by the next open)" if notes else ""
            if problems:
                click.echo(f"{len(problems)} problem(s) in {what}{noted}", err=True)
            else:
                click.echo(f"ok: {what}, no problems{noted}" if names
                           else f"ok: no channels under {root}{_elsewhere(root)}")
    except BrokenPipeError:  # `wal verify ... | head`: quiet, and the exit status still says what was found
        _stdout_to_devnull()
    if problems:
        raise click.exceptions.Exit(EXIT_FAILURE)


def _count_segments(root: str, names: list[str]) -> int:
    n = 0
    for name in names:
        try:
            n += sum(1 for f in os.listdir(os.path.join(root, name)) if f.endswith(".seg"))
        except OSError:
            pass
    return n


@click.command(epilog=EXIT_CODES_HELP, short_help="Cut a torn tail and rebuild indexes.")
@root_option()
@channel_option(required=True)
@click.option("--no-writer-running", is_flag=True,
              help="You checked that no process has the channel open for writing: needed only when its LOCK file "
                   "was deleted (then the lock cannot tell).")
@click.option("--accept-lost-segments", is_flag=True,
              help="The newest or oldest segments were deleted from outside and cannot be restored from a copy: go "
                   "on with what is left (when the newest were lost, new messages reuse their IDs).")
@reports_errors
def repair(root: str, channel: str, no_writer_running: bool, accept_lost_segments: bool) -> None:
    """Cut a torn tail (bytes a crash left half written) and rebuild missing or wrong indexes and seal summaries.

    Also rewrites an unreadable TERM (with the highest term the log shows) and an unreadable FIRST (from the oldest
    segment). Refuses, with exit 1, while a writer holds the channel's lock, and for damage that is not a torn tail
    (a bad record followed by good ones: acknowledged data is never cut), and for a file that is not a regular one
    (a FIFO, a directory: move it away first); a refused repair changes no file. Says what it cut, then verifies the
    channel.
    """
    channel_dir_or_fail(root, channel)
    try:
        report = fstools.repair(root, channel, no_writer_running=no_writer_running,
                                accept_lost_segments=accept_lost_segments)
    except WALLockedError as e:
        raise fail(f"refusing to repair: {e}") from None
    except CorruptedError as e:
        raise fail(f"not repairable by cutting a torn tail: {e}") from None
    if not report.changed:
        click.echo(f"channel {channel}: nothing to repair")
    for line in report.cut:
        click.echo(f"cut: {line}")
    for path in report.rebuilt_indexes:
        click.echo(f"rebuilt index: {path}")
    for path in report.sealed:
        click.echo(f"wrote seal summary: {path}")
    if report.term_restored is not None:
        click.echo(f"rewrote TERM (it was unreadable) with term {report.term_restored}, the highest the log shows")
    if report.first_restored is not None:
        click.echo(f"rewrote FIRST (it was unreadable) with id {report.first_restored}, the oldest segment's first")
    problems = fstools.verify(root, channel)
    for p in problems:
        click.echo(str(p))
    if problems:
        raise fail(f"{len(problems)} problem(s) remain after repair (see above)")
    click.echo(f"channel {channel}: verify ok")
