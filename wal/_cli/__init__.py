"""The ``wal`` console command (also ``python -m wal``): inspect, follow, check, repair, measure, demonstrate.

Private: the command line is the interface, not these modules. Each subcommand lives in its own module.
"""

from ._main import cli as cli
from ._main import main as main

__all__ = ["cli", "main"]
