"""``python -m wal``: the ``wal`` console command."""

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
