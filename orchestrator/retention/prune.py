"""The prune itself: archive first, record it, then delete in bounded batches (crash-safe, resumable).

See the package's docstring (orchestrator/retention/__init__.py) and docs/retention.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from orchestrator.crashpoints import CRASH_POINTS, crash_point
from orchestrator.errors import InputError, OrchestratorError
from orchestrator.retention.archive import (
    ArchiveError,
    ArchiveHeader,
    _archive_totals,
    _end_of,
    _entries,
    _Entry,
    _Selection,
    _sha256,
    _uuid,
    read_archive_header,
)
from orchestrator.retention.log import PRUNE_STAMP, PruneLog, prune_log
from orchestrator.retention.scan import _scan, _write_archive
from orchestrator.store.event_store import LOAD_CHUNK, EventStore
from projections import ReadModels
from projections.pruning import delete_command_rows
from projections.runner import REBUILD_LOCK

PRUNE_LOCK = REBUILD_LOCK  # the store lock of rebuilds and verifications: they and a prune exclude each other
DEFAULT_BATCH = 500  # commands per deletion transaction (about 3,500 events for RemoveVm of 4 disks)
log = logging.getLogger("orchestrator")
# The crash point of the prune (orchestrator/crashpoints.py): the 1st pass is with the archive in place
# and the prune recorded, nothing deleted; the N-th (N > 1) is after the (N-1)-th deletion batch commits.
CRASH_POINTS.setdefault(
    "in_prune", "prune: the archive written and the prune recorded (1), or after deletion batch N-1 (N)"
)


class PruneBusyError(OrchestratorError):
    """Another prune, rebuild or verification holds the store's lock."""

    exit_code = 13


# ---- the report ---------------------------------------------------------------------------------------


class PruneReport(BaseModel):
    """`prune --json`: what a prune took (or, with --dry-run, would take)."""

    format: Literal["orchestrator.prune/1"] = "orchestrator.prune/1"
    store: str
    ended_before: datetime
    dry_run: bool
    prune_id: UUID | None = Field(description="null for a dry run that would write a new archive")
    archive: str | None = Field(description="the archive file; null with --no-archive")
    archive_sha256: str | None
    resumed: bool = Field(description="this run finished an earlier, interrupted prune from its archive")
    commands: int = Field(description="root commands in the prune")
    events: int = Field(description="their events")
    stored_bytes: int = Field(description="bytes of their stored event states")
    archive_bytes: int = Field(description="bytes of the archive (that it would take, for a dry run)")
    oldest_settled_at: datetime | None
    newest_settled_at: datetime | None
    kept_settled_after: int = Field(description="commands accepted before the cut-off, settled after it: kept")
    deleted_commands: int = Field(description="deleted by this run")
    deleted_events: int
    already_gone: int = Field(description="commands of the archive no longer in the store (a re-run)")
    changed: list[UUID] = Field(description="commands whose history grew since archived: left in place")
    batches: int
    seconds: float


# ---- pruning ----------------------------------------------------------------------------------------


def parse_cutoff(text: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InputError(
            f"--ended-before {text[:40]!r} is not an ISO date or date-time (e.g. 2025-01-31 or 2025-01-31T12:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class PruneRequest:
    ended_before: datetime  # aware, UTC
    archive: Path | None  # None: no archive (the caller asked for none explicitly)
    dry_run: bool = False
    batch_size: int = DEFAULT_BATCH


@dataclass
class _Deleted:
    commands: int = 0
    events: int = 0
    gone: int = 0
    batches: int = 0
    changed: list[UUID] = field(default_factory=list)


def check_archive_path(path: Path) -> ArchiveHeader | None:
    """Refuse an archive path that cannot be written; the header of an archive already there (or None)."""
    if not path.parent.is_dir():
        raise InputError(f"--archive {path}: the directory {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"--archive {path}: the directory {path.parent} is not writable for this user")
    if path.is_dir():
        raise InputError(f"--archive {path} is a directory; give a file name")
    if not path.exists():
        return None
    try:
        return read_archive_header(path)
    except ArchiveError:
        raise InputError(
            f"--archive {path} exists and is not an orchestrator archive; it was left as it is: give a new file"
        ) from None


def prune(store: EventStore, read_models: ReadModels, request: PruneRequest) -> PruneReport:
    """Archive then remove every root command that ended, all its tasks cleared, before the cut-off."""
    started = time.monotonic()
    existing = check_archive_path(request.archive) if request.archive else None
    if request.dry_run:
        return _dry_run(store, request, existing, started)
    with read_models.tables.exclusive(PRUNE_LOCK) as got:
        if not got:
            raise PruneBusyError(
                "another prune, or a rebuild or verification of the read models, holds this store's lock; "
                "wait for it to finish, then try again"
            )
        existing = check_archive_path(request.archive) if request.archive else None  # again, under the lock
        record = prune_log(store)
        if existing is not None:
            assert request.archive is not None
            digest = _resumable(store, record, request, existing)
            return _finish(store, read_models, request, request.archive, existing, record, digest, None, started)
        archive = request.archive or _scratch_archive()
        header = _new_header(store, request)
        try:
            digest, found = _write_archive(store, request.ended_before, archive, header)
            report = _finish(store, read_models, request, archive, header, record, digest, found, started)
        finally:
            if request.archive is None:
                archive.unlink(missing_ok=True)
        return report


def _new_header(store: EventStore, request: PruneRequest) -> ArchiveHeader:
    return ArchiveHeader(
        prune_id=uuid.uuid4(),
        store=store.config.redacted,
        ended_before=request.ended_before,
        written_at=datetime.now(UTC),
    )


def _scratch_archive() -> Path:
    """With --no-archive the histories still go to a private scratch file first (the deletion list)."""
    handle, name = tempfile.mkstemp(prefix="orchestrator-prune-", suffix=".jsonl")
    os.close(handle)
    return Path(name)


def _resumable(store: EventStore, record: PruneLog, request: PruneRequest, header: ArchiveHeader) -> str:
    """An archive already at the path: the same, unfinished prune of this store, or a refusal."""
    path = request.archive
    prune_id = str(header.prune_id)
    if header.ended_before != request.ended_before:
        raise InputError(
            f"--archive {path} holds the prune with cut-off {header.ended_before.isoformat()}; give a new file "
            f"(or --ended-before {header.ended_before.isoformat()} to finish that prune)"
        )
    if prune_id in record.finished:
        raise InputError(
            f"--archive {path} holds a prune of this store that finished at "
            f"{record.finished[prune_id].isoformat()}; it is left as it is: give a new file"
        )
    started = record.started.get(prune_id)
    if started is None and header.store != store.config.redacted:
        raise InputError(f"--archive {path} is an archive of another store ({header.store}); give a new file")
    assert path is not None
    digest = _sha256(path)
    if started is not None and started["archive_sha256"] not in (None, digest):
        raise InputError(f"--archive {path} was changed since the prune wrote it; nothing was deleted from it")
    return digest


def _finish(
    store: EventStore,
    read_models: ReadModels,
    request: PruneRequest,
    archive: Path,
    header: ArchiveHeader,
    record: PruneLog,
    digest: str,
    found: _Selection | None,
    started: float,
) -> PruneReport:
    """Record the prune, then delete what the archive holds, batch by batch; then record its end.

    `found`: what the scan that wrote the archive found (None: a re-run, counted from the archive).
    """
    end = _end_of(archive)
    prune_id = str(header.prune_id)
    if prune_id not in record.started:
        record.record_started(header, request.archive, digest if request.archive else None, end)
        store.save(record, stamp=PRUNE_STAMP)
    log.info("prune %s: %d command(s) archived in %s; deleting", prune_id, end.commands, archive)
    crash_point("in_prune")
    totals = found or _Selection(archive_bytes=archive.stat().st_size)
    deleted = _delete(store, read_models, archive, request.batch_size, None if found else totals)
    record.record_finished(header.prune_id, deleted.commands, deleted.events, deleted.changed)
    store.save(record, stamp=PRUNE_STAMP)
    return PruneReport(
        store=store.config.redacted,
        ended_before=request.ended_before,
        dry_run=False,
        prune_id=header.prune_id,
        archive=str(request.archive) if request.archive else None,
        archive_sha256=digest if request.archive else None,
        resumed=found is None,
        commands=end.commands,
        events=end.events,
        stored_bytes=totals.stored_bytes,
        archive_bytes=totals.archive_bytes if request.archive else 0,
        oldest_settled_at=totals.oldest,
        newest_settled_at=totals.newest,
        kept_settled_after=totals.kept,
        deleted_commands=deleted.commands,
        deleted_events=deleted.events,
        already_gone=deleted.gone,
        changed=deleted.changed,
        batches=deleted.batches,
        seconds=round(time.monotonic() - started, 3),
    )


def _dry_run(store: EventStore, request: PruneRequest, existing: ArchiveHeader | None, started: float) -> PruneReport:
    """What a prune would do, changing nothing (no archive written, no lock taken)."""
    if existing is not None:
        assert request.archive is not None
        digest = _resumable(store, prune_log(store), request, existing)
        totals = _archive_totals(request.archive)
        present = _present(store, totals.versions)
        return PruneReport(
            store=store.config.redacted,
            ended_before=request.ended_before,
            dry_run=True,
            prune_id=existing.prune_id,
            archive=str(request.archive),
            archive_sha256=digest,
            resumed=True,
            commands=len(totals.versions),
            events=totals.events,
            stored_bytes=totals.stored_bytes,
            archive_bytes=totals.archive_bytes,
            oldest_settled_at=totals.oldest,
            newest_settled_at=totals.newest,
            kept_settled_after=0,
            deleted_commands=0,
            deleted_events=0,
            already_gone=len(totals.versions) - len(present),
            changed=sorted(i for i, v in present.items() if v != totals.versions[i]),
            batches=0,
            seconds=round(time.monotonic() - started, 3),
        )
    header = _new_header(store, request)
    found = _scan(store, request.ended_before, header, None)
    return PruneReport(
        store=store.config.redacted,
        ended_before=request.ended_before,
        dry_run=True,
        prune_id=None,
        archive=str(request.archive) if request.archive else None,
        archive_sha256=None,
        resumed=False,
        commands=len(found.versions),
        events=found.events,
        stored_bytes=found.stored_bytes,
        archive_bytes=found.archive_bytes if request.archive else 0,
        oldest_settled_at=found.oldest,
        newest_settled_at=found.newest,
        kept_settled_after=found.kept,
        deleted_commands=0,
        deleted_events=0,
        already_gone=0,
        changed=[],
        batches=0,
        seconds=round(time.monotonic() - started, 3),
    )


def _present(store: EventStore, versions: Mapping[UUID, int]) -> dict[UUID, int]:
    """The last stored version of each of these commands still in the store (read only)."""
    ids = list(versions)
    out: dict[UUID, int] = {}
    for start in range(0, len(ids), LOAD_CHUNK):
        wanted = [(i, versions[i] - 1) for i in ids[start : start + LOAD_CHUNK]]
        for stored in store.dialect.events_after(store.recorder, wanted):
            ident = _uuid(stored.originator_id)
            out[ident] = max(out.get(ident, 0), stored.originator_version)
    return out


def _batches(entries: Iterable[_Entry], size: int) -> Iterator[list[_Entry]]:
    batch: list[_Entry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _delete(
    store: EventStore, read_models: ReadModels, archive: Path, batch_size: int, totals: _Selection | None
) -> _Deleted:
    """Each batch one transaction: the commands' events and snapshots and their read-model rows.

    A command is deleted only if its history still ends at the archived version; one that grew
    since (a retry recorded on it) is left in place and reported.
    """
    out = _Deleted()
    dialect = store.dialect
    for batch in _batches(_entries(archive, totals), max(1, batch_size)):
        ids = [e.command_id for e in batch]
        with read_models.tables.write() as cur:
            current = dialect.lock_versions(cur, ids)
            doomed = [e for e in batch if current.get(e.command_id) == e.version]
            out.gone += sum(1 for e in batch if e.command_id not in current)
            out.changed += [e.command_id for e in batch if current.get(e.command_id, e.version) != e.version]
            if doomed:
                out.events += dialect.delete_aggregates(cur, [e.command_id for e in doomed])
                delete_command_rows(cur, read_models.tables, [(str(e.command_id), e.accepted) for e in doomed])
        store.forget(ids)
        out.commands += len(doomed)
        out.batches += 1
        crash_point("in_prune")
    return out
