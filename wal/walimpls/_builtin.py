"""Registers the built-in backends; imported once by :mod:`wal`. A backend that is not written yet is skipped."""

from __future__ import annotations

import importlib

for _name in ("memory", "localfs"):
    try:
        importlib.import_module(f"wal.walimpls.{_name}")
    except ModuleNotFoundError as e:  # only while a backend package does not exist yet
        if e.name != f"wal.walimpls.{_name}":
            raise
