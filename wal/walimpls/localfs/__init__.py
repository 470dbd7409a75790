"""localfs: the write-ahead log on local files (the primary backend), registered as ``"localfs"`` on import.

Each channel is a directory ``<root>/<channel>/`` of preallocated segment files (``<first id, 20 digits>.seg``,
so ``ls`` order is log order), a sparse index beside each (``.idx``), a ``LOCK`` file (one writer, ``flock``)
and a ``TERM`` file (the persisted term, never going back). Records carry a CRC32C over header and body; opening
for writing recovers: a torn tail is cut (overwritten with zeros) and logged, damage before it raises
:class:`~wal.errors.CorruptedError` with file and offset. Byte layouts: ``docs/FORMAT.md`` (format version 2).

Build options (``registry.get_impls_builder("localfs").build(**options)``):

- ``root``: the directory holding one sub-directory per channel. Default ``$WAL_LOCALFS_ROOT``, else
  ``./wal-data``. Created with mode 0700 by the first open for writing (``build`` and read-only opens create
  nothing); files are 0600.
- ``segment_bytes`` (64 MiB): size each segment is preallocated to (``posix_fallocate``); a segment rolls when
  the next record does not fit. 4096 ... 2**32-1. A single record larger than that gets a segment of its own.
- ``sync``: ``"always"`` (default): an append returns after its bytes are on disk (``fdatasync``), shared by
  every concurrent append (group commit). ``"interval"``: appends return after the write; a sync runs every
  ``sync_interval`` seconds (default 0.01) while writes are unsynced (one per interval at most), so a crash of
  the machine (not of the process) may lose that long. ``"never"``: the OS decides when; in every mode a segment
  is synced when it is sealed and when the channel is closed cleanly. ``sync_interval`` with another mode than
  ``"interval"`` raises ``InvalidArgumentError`` (it would do nothing).
- ``retention_bytes`` / ``retention_seconds`` (None): delete the oldest sealed segments while the channel is
  larger than that / sealed longer ago than that (checked at each roll and on open), but never a segment that
  an open transaction needs (its begin): a long open txn holds deletion back until it ends. ``truncate(id)`` deletes
  sealed segments whose messages all come before ``id``. Files are deleted, never truncated: a reader that has
  one mapped keeps reading it safely.
- ``max_message_bytes`` (64 MiB; at least 256): the largest encoded message (payload + properties + metadata);
  larger appends raise :class:`~wal.errors.InvalidArgumentError` and store nothing.
- ``_file_ops`` (private): a :class:`FileOps` through which every file operation goes (fault injection).

Anything else raises :class:`~wal.errors.InvalidArgumentError` naming it, the adaptor's options too
(``wal.adaptor.AdaptorOptions``: ``time_tick_interval``...): the bare backend has no use for them, and
``registry.must_get_builder("localfs").build(...)`` takes both kinds in one dict (as for every backend).

Reading: scanners map segments read-only and hand out payloads up to 1 KiB as ``bytes`` copies and larger ones as
``memoryview`` slices of the map (no copy); such a view stays valid as long as the message object (it keeps the map
alive), even after retention deletes the file. Use ``bytes(m.payload)`` for a copy. A read-only WAL
(``AccessMode.RO``, this process or another; opened before its writer made the channel, it waits for the directory
and logs one warning after ``_opener.MISSING_CHANNEL_WARNING_AFTER`` seconds) follows the writer: woken by the
writer of the same opener, by watchdog (inotify) events, and by polling with backoff (at most 50 ms), so a lost
event costs latency, never a message. A
follower in another process may see a record as soon as it is written, which with ``sync="always"`` is at most one
``fdatasync`` ahead of durable. It raises :class:`~wal.errors.CorruptedError` at a bad record of the active segment
that a later flush proves was durable (``docs/FORMAT.md``, "Flush marks"), and
its ``last_time_tick()`` is the largest tick stored (read from summaries and indexes, not by a scan).

A reader given a vchannel (``ReadOption.vchannel``) skips sealed segments whose bloom filter holds neither that
vchannel nor broadcast data; time ticks are not in the filters (``docs/FORMAT.md``).

Message IDs (:class:`LocalFSMessageID`): the record's sequence number in its channel (1, 2, 3...), marshalled
in decimal.
"""

from ...message import register_message_id_unmarshaler
from ...registry import register_builder
from ._fileops import FileOps as FileOps
from ._message_id import WAL_NAME as WAL_NAME
from ._message_id import LocalFSMessageID as LocalFSMessageID
from ._opener import LocalFSBuilder as LocalFSBuilder
from ._opener import LocalFSOpener as LocalFSOpener

__all__ = ["WAL_NAME", "FileOps", "LocalFSBuilder", "LocalFSMessageID", "LocalFSOpener"]

register_builder(LocalFSBuilder())
register_message_id_unmarshaler(WAL_NAME, LocalFSMessageID.parse)
