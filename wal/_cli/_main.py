"""The command group: global options (``-v``), the subcommands, and the entry point."""

from __future__ import annotations

import click

from .. import __version__
from ._bench import bench
from ._common import EXIT_CODES_HELP, configure_logging
from ._demo import demo
from ._inspect import dump, info, repair, verify
from ._tail import tail

__all__ = ["cli", "main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_HELP + " The --root of info, dump, tail, verify and repair defaults to $WAL_LOCALFS_ROOT, "
    "else ./wal-data.",
)
@click.version_option(__version__, prog_name="wal")
@click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug) to stderr.")
def cli(verbose: int) -> None:
    """Inspect, follow, check and repair localfs write-ahead logs; measure and demonstrate the library."""
    configure_logging(verbose)


for _cmd in (info, dump, tail, verify, repair, bench, demo):
    cli.add_command(_cmd)


def main() -> None:
    """Console entry point (``wal`` and ``python -m wal``)."""
    cli(prog_name="wal")
