"""Retention: an operator's prune of old root commands, archived first, so the store does not grow forever.

`prune(store, read_models, PruneRequest(...))` takes every root command that has
ended and whose tasks were all cleared on the agent before a cut-off, writes
each one's whole history to an archive (JSON lines, `read_archive` reads it
back), records the prune in the log, then removes the commands' events (and
snapshots) and their read-model rows, in bounded batches, each one transaction.
Inventory entities and their histories stay. See docs/retention.md. The package: `archive` (the format, reading, safe
writing), `log` (`PruneLog`), `scan` (what a prune takes), `prune` (the prune).

Crash safety. Nothing is deleted before the archive is complete on disk: it is
written to `FILE.partial`, flushed and fsynced, renamed into place, and its
directory fsynced. Then the log records the prune (`PruneLog.Started`: the
archive's digest, the cut-off), which also keeps SQLite from reusing the
notification ids (rowids) of deleted rows: the newest row of the log is never
one a prune deletes. A batch deletes a command only if its history still ends
at the version archived (checked under the lock that holds new events back),
so nothing unarchived is ever removed. Killed at any moment, a re-run with the
same archive path finishes the same prune from the archive: commands already
gone are simply not found, nothing is written twice.

A prune takes the store lock that read-model rebuilds and verifications take
(`projections.runner.REBUILD_LOCK`): a rebuild never sees a command half gone.
It is refused, before anything is written, while any command accepted before
the cut-off is still in flight (or ended with tasks not yet cleared).
"""

from orchestrator.retention.archive import (
    ARCHIVE_FORMAT,
    ArchivedCommand,
    ArchivedCommandLine,
    ArchivedCommandView,
    ArchivedEvent,
    ArchiveEnd,
    ArchiveError,
    ArchiveHeader,
    ArchiveListing,
    archive_listing,
    iter_archive,
    read_archive,
    read_archive_header,
)
from orchestrator.retention.log import PRUNE_LOG_ID, PRUNE_STAMP, PruneLog, prune_log
from orchestrator.retention.prune import (
    DEFAULT_BATCH,
    PRUNE_LOCK,
    PruneBusyError,
    PruneReport,
    PruneRequest,
    check_archive_path,
    parse_cutoff,
    prune,
)
from orchestrator.retention.scan import PruneRefusedError

__all__ = [
    "ARCHIVE_FORMAT",
    "DEFAULT_BATCH",
    "PRUNE_LOCK",
    "PRUNE_LOG_ID",
    "PRUNE_STAMP",
    "ArchiveEnd",
    "ArchiveError",
    "ArchiveHeader",
    "ArchiveListing",
    "ArchivedCommand",
    "ArchivedCommandLine",
    "ArchivedCommandView",
    "ArchivedEvent",
    "PruneBusyError",
    "PruneLog",
    "PruneRefusedError",
    "PruneReport",
    "PruneRequest",
    "archive_listing",
    "check_archive_path",
    "iter_archive",
    "parse_cutoff",
    "prune",
    "prune_log",
    "read_archive",
    "read_archive_header",
]
