"""``tail``: follow a channel another process writes, like ``tail -f``, through a read-only WAL."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from .. import registry
from .._types import AccessMode, OpenOption, PChannelInfo, ReadOption
from ..errors import ShutdownError, WALTimeoutError
from ..message import MessageType
from ..options import DeliverPolicy
from ._common import (
    EXIT_CODES_HELP,
    MESSAGE_HEADER,
    channel_dir_or_fail,
    json_line,
    message_line,
    message_record,
    reports_errors,
    root_option,
)
from ._inspect import parse_message_id

__all__ = ["tail"]


def _policy(value: str) -> DeliverPolicy:
    if value == "latest":
        return DeliverPolicy.latest()
    if value == "all":
        return DeliverPolicy.all()
    return DeliverPolicy.start_from(parse_message_id(value))


def _sigterm_as_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command(epilog=EXIT_CODES_HELP, short_help="Follow a channel another process writes (like tail -f).")
@root_option()
@click.option("--channel", required=True, metavar="NAME", help="channel (pchannel) name.")
@click.option("--from", "start", default="latest", show_default=True, metavar="latest|all|ID",
              help="where to start: new messages only, everything kept, or a message ID (inclusive).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per message.")
@click.option("--payload", type=click.Choice(["hex", "text"]), help="also show each payload, as hex or as UTF-8 text.")
@click.option("--time-ticks", is_flag=True, help="also show TIME_TICK messages (hidden by default).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="exit after N messages.")
@reports_errors
def tail(root: str, channel: str, start: str, as_json: bool, payload: str | None, time_ticks: bool,
         limit: int | None) -> None:
    """Follow a channel that another process writes, printing each message as it arrives, until Ctrl-C.

    Opens the channel read-only (it never takes the write lock, so the writer is not disturbed). A committed
    transaction arrives as one TXN message with its body; rolled-back ones never show. Exits 0 on Ctrl-C or
    SIGTERM.
    """
    channel_dir_or_fail(root, channel)  # a typo must not leave a new empty channel behind and wait forever
    policy = _policy(start)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    opener = registry.must_get_builder("localfs").build(root=root)
    shown = 0
    try:
        w = opener.open(OpenOption(channel=PChannelInfo(name=channel, term=0, access_mode=AccessMode.RO)))
        s = w.read(ReadOption(deliver_policy=policy, name="wal-tail"))
        click.echo(f"following channel {channel!r} under {root} from {start} (Ctrl-C to stop)", err=True)
        if not as_json:
            click.echo(MESSAGE_HEADER)
        sys.stdout.flush()
        while limit is None or shown < limit:
            try:
                m = s.recv(timeout=0.5)  # short, so that signals are handled promptly
            except WALTimeoutError:
                continue
            except ShutdownError:
                break
            if m.message_type is MessageType.TIME_TICK and not time_ticks:
                continue
            click.echo(json_line(message_record(m, payload)) if as_json
                       else message_line(m, payload))
            sys.stdout.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the close short
        opener.close()
