"""What every subcommand shares: options, exit codes, error reporting, logging setup, tables and message rows."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from .._types import validate_channel_name
from ..errors import InvalidArgumentError, WALError
from ..message import ImmutableMessage, ImmutableTxnMessage, MessageType, physical_ms
from ..walimpls.localfs import tools as fstools

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "channel_dir_or_fail",
    "channel_name",
    "channel_option",
    "configure_logging",
    "fail",
    "format_table",
    "json_line",
    "message_line",
    "message_record",
    "percentile",
    "printable",
    "reports_errors",
    "root_option",
    "time_of",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # problems found, or the command could not do its job
EXIT_USAGE = 2  # bad arguments (click's own code for usage errors)

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 problems found or failure, 2 usage error."

DEFAULT_ROOT = "./wal-data"  # the localfs backend's default when $WAL_LOCALFS_ROOT is unset

F = TypeVar("F", bound=Callable[..., Any])


def root_option(must_exist: bool = True) -> Callable[[F], F]:
    return click.option(
        "--root",
        type=click.Path(file_okay=False, dir_okay=True, exists=must_exist),
        envvar="WAL_LOCALFS_ROOT",
        default=DEFAULT_ROOT,
        show_default=True,
        show_envvar=True,
        help="localfs root directory (one sub-directory per channel).",
    )


def channel_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--channel",
        required=required,
        metavar="NAME",
        help="channel (pchannel) name." if required else "only this channel (default: every channel under --root).",
    )


def channel_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: ``value`` if it is a valid channel name, else a usage error (exit 2)."""
    try:
        validate_channel_name(value)
    except InvalidArgumentError as e:
        raise click.BadParameter(str(e)) from None
    return value


def channel_dir_or_fail(root: str, channel: str) -> str:
    """The channel's directory; a bad or unknown name is a usage error (exit 2), said before any work."""
    try:
        validate_channel_name(channel)
    except InvalidArgumentError as e:
        raise click.BadParameter(str(e), param_hint="--channel") from None
    path = os.path.join(root, channel)
    if os.path.islink(path):
        raise click.BadParameter(f"channel {channel!r} under {root} is a symbolic link; refusing to follow it",
                                 param_hint="--channel")
    if not os.path.isdir(path):
        hint = ""
        if fstools.is_channel_dir(root):  # --root one level too deep: the channel's own directory
            parent, name = os.path.split(os.path.normpath(root))
            hint = f" ({root} is itself a channel's directory: pass --root {parent or '.'} --channel {name})"
        raise click.BadParameter(f"no channel {channel!r} under {root}{hint}", param_hint="--channel")
    if not fstools.is_channel_dir(path):
        try:
            os.listdir(path)
        except OSError as e:  # it may be a channel: not a usage error, and not "not a channel"
            raise fail(f"cannot list {path}: {e.strerror or e} (a channel's files can be read by its writer's "
                       "user or root)") from None
        raise click.BadParameter(
            f"{path} is a directory but not a localfs channel (no LOCK, TERM or segment)", param_hint="--channel"
        )
    return path


def fail(message: str) -> click.exceptions.Exit:
    """Print ``message`` to stderr; the caller raises the result to exit with code 1."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(EXIT_FAILURE)


def reports_errors(fn: F) -> F:
    """Turn a library error into one line on stderr and exit code 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WALError as e:
            raise fail(f"{type(e).__name__}: {e}") from None
        except OSError as e:
            raise fail(f"{e.strerror or e} ({e.filename})" if e.filename else str(e)) from None

    return wrapper  # type: ignore[return-value]


def configure_logging(verbosity: int) -> None:
    """The library installs no handler; the command line shows warnings, ``-v`` info, ``-vv`` debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def time_of(time_tick: int) -> str | None:
    """The wall-clock time of a hybrid time tick (UTC, ms), or None when the tick is not a hybrid timestamp."""
    ms = physical_ms(time_tick)
    if not 946_684_800_000 <= ms <= 7_258_118_400_000:  # 2000 .. 2200: anything else is a plain counter
        return None
    t = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# What stored text must not send to a terminal as it is: C0 and C1 controls (escape sequences, a newline that
# forges an output line), DEL, and the invisible or direction-changing characters that make text read differently
# from what it is. Messages come from whoever could append; dump and tail print them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: re.Match[str]) -> str:
    ch = c.group()
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def printable(text: str) -> str:
    """``text`` with what a terminal would act on (see ``_UNSAFE``) shown as backslash escapes."""
    return _UNSAFE.sub(_escape, text)


def json_line(obj: object) -> str:
    """One JSON line, non-ASCII text kept readable, with the characters of ``_UNSAFE`` that JSON leaves raw
    (DEL, C1 controls, direction marks) escaped as ``\\uXXXX``."""
    return _UNSAFE.sub(lambda c: f"\\u{ord(c.group()):04x}", json.dumps(obj, ensure_ascii=False))


def _payload(m: ImmutableMessage, mode: str) -> str:
    data = bytes(m.payload)
    if mode == "hex":
        return data.hex()
    return data.decode("utf-8", errors="backslashreplace")


def message_record(m: ImmutableMessage, payload: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of a message (``payload`` is ``"hex"``, ``"text"`` or None to leave it out)."""
    rec: dict[str, Any] = {
        "id": m.message_id.marshal(),
        "time_tick": m.time_tick,
        "time": time_of(m.time_tick),
        "type": m.message_type.name,
        "vchannel": m.vchannel,
        "properties": dict(m.properties),
        "payload_size": len(m.payload),
        "last_confirmed_id": m.last_confirmed_message_id.marshal(),
        "term": m.wal_term,
        "txn_id": m.txn_ctx.txn_id if m.txn_ctx is not None else None,
    }
    if payload == "text":
        data = bytes(m.payload)
        try:
            rec["payload"] = data.decode("utf-8")
        except UnicodeDecodeError:
            # Escaped as the text form does, byte 0xff and the four characters "\xff" came out alike: a consumer
            # of the JSON could not tell the bytes. Not UTF-8: the exact bytes, as hex, under their own key.
            rec["payload"] = None
            rec["payload_hex"] = data.hex()
    elif payload is not None:
        rec["payload"] = _payload(m, payload)
    if isinstance(m, ImmutableTxnMessage):
        rec["messages"] = [message_record(b, payload) for b in m.messages]
    return rec


MESSAGE_HEADER = (
    f"{'ID':>10}  {'TIME TICK':>20}  {'TIME':<24}  {'TYPE':<17}  {'VCHANNEL':<12}  {'BYTES':>7}  PROPERTIES"
)


def message_line(m: ImmutableMessage, payload: str | None = None) -> str:
    """One line per message, aligned under :data:`MESSAGE_HEADER` (a TXN adds one indented line per body message)."""
    props = printable(" ".join(f"{k}={v}" for k, v in sorted(m.properties.items())))
    mtype = m.message_type.name
    if m.txn_ctx is not None:  # the transaction first, in the properties column (txn IDs are long)
        props = f"[txn {m.txn_ctx.txn_id}] {props}"
    line = (
        f"{m.message_id.marshal():>10}  {m.time_tick:>20}  {time_of(m.time_tick) or '-':<24}  {mtype:<17}  "
        f"{printable(m.vchannel) or '*':<12}  {len(m.payload):>7}  {props}"
    ).rstrip()
    if payload is not None and m.message_type is not MessageType.TXN:
        line += f"\n{'':>10}  payload: {printable(_payload(m, payload)) if len(m.payload) else '(empty)'}"
    if isinstance(m, ImmutableTxnMessage):
        for b in m.messages:
            line += "\n" + "\n".join("    " + part for part in message_line(b, payload).splitlines())
    return line


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool] | None = None) -> str:
    """A plain-text table; columns are right-aligned where ``right`` says so (numbers)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    align = list(right) if right is not None else [False] * len(headers)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)).rstrip()

    out = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(fmt(r) for r in cells)
    return "\n".join(out)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]
