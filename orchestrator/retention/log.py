"""The log's own record of prunes (`PruneLog`): each prune's archive digest and cut-off, and its end.

Its topic stays `orchestrator.retention:PruneLog` for the events of stores pruned before
the package was split (the package re-exports it, so those topics resolve).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from orchestrator.retention.archive import ArchiveEnd, ArchiveHeader
from orchestrator.store.event_store import EventStore

PRUNE_STAMP = {"phase": "prune"}  # the writer stamp of the prune's own events


# ---- the log's record of prunes ---------------------------------------------------------------------

PRUNE_LOG_ID = uuid.uuid5(uuid.NAMESPACE_URL, "orchestrator:prune-log")


class PruneLog(Aggregate):
    """The store's own record of every prune: one stream, written by prunes only, never pruned."""

    class Opened(Aggregate.Created):
        pass

    class Started(Aggregate.Event):
        """Recorded after the archive is in place, before anything is deleted."""

        prune_id: str
        ended_before: str
        archive: str | None
        archive_sha256: str | None
        commands: int
        events: int

        def apply(self, aggregate: PruneLog) -> None:
            aggregate.started[self.prune_id] = {"archive_sha256": self.archive_sha256, "at": self.timestamp}

    class Finished(Aggregate.Event):
        prune_id: str
        deleted_commands: int
        deleted_events: int
        changed: list[str]

        def apply(self, aggregate: PruneLog) -> None:
            aggregate.finished[self.prune_id] = self.timestamp

    def __init__(self) -> None:
        self.started: dict[str, dict[str, Any]] = {}
        self.finished: dict[str, datetime] = {}

    @classmethod
    def open(cls) -> PruneLog:
        return cls._create(cls.Opened, id=PRUNE_LOG_ID)

    def record_started(self, header: ArchiveHeader, archive: Path | None, digest: str | None, end: ArchiveEnd) -> None:
        self.trigger_event(
            self.Started,
            prune_id=str(header.prune_id),
            ended_before=header.ended_before.isoformat(),
            archive=str(archive) if archive else None,
            archive_sha256=digest,
            commands=end.commands,
            events=end.events,
        )

    def record_finished(self, prune_id: UUID, commands: int, events: int, changed: Sequence[UUID]) -> None:
        self.trigger_event(
            self.Finished,
            prune_id=str(prune_id),
            deleted_commands=commands,
            deleted_events=events,
            changed=[str(i) for i in changed],
        )


def prune_log(store: EventStore) -> PruneLog:
    found = store.get(PRUNE_LOG_ID)
    return found if isinstance(found, PruneLog) else PruneLog.open()
