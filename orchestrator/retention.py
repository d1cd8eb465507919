"""Retention: an operator's prune of old root commands, archived first, so the store does not grow forever.

`prune(store, read_models, PruneRequest(...))` takes every root command that has
ended and whose tasks were all cleared on the agent before a cut-off, writes
each one's whole history to an archive (JSON lines, `read_archive` reads it
back), records the prune in the log, then removes the commands' events (and
snapshots) and their read-model rows, in bounded batches, each one transaction.
Inventory entities and their histories stay. See docs/retention.md.

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

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic
from pydantic import BaseModel, Field, ValidationError

from orchestrator.crashpoints import CRASH_POINTS, crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.errors import CommandRefusedError, InputError, OrchestratorError
from orchestrator.store.event_store import LOAD_CHUNK, CheckedMapper, EventStore, writer_of
from projections import ReadModels
from projections.pruning import delete_command_rows
from projections.runner import REBUILD_LOCK

log = logging.getLogger("orchestrator")
M = TypeVar("M", bound=BaseModel)

ARCHIVE_FORMAT = "orchestrator.archive/1"
PRUNE_LOCK = REBUILD_LOCK  # the store lock of rebuilds and verifications: they and a prune exclude each other
DEFAULT_BATCH = 500  # commands per deletion transaction (about 3,500 events for RemoveVm of 4 disks)
PRUNE_STAMP = {"phase": "prune"}  # the writer stamp of the prune's own events
PARTIAL_SUFFIX = ".partial"
ACCEPTED_TOPIC = get_topic(RootCommand.Accepted)
# The events after which a command may have left flight: it ended (or was terminated), its tasks cleared.
SETTLING = (RootCommand.Ended, RootCommand.Terminated, RootCommand.TasksCleared)
SHOWN = 3  # commands named in a refusal

# The crash point of the prune (orchestrator/crashpoints.py): the 1st pass is with the archive in place
# and the prune recorded, nothing deleted; the N-th (N > 1) is after the (N-1)-th deletion batch commits.
CRASH_POINTS.setdefault(
    "in_prune", "prune: the archive written and the prune recorded (1), or after deletion batch N-1 (N)"
)


class PruneRefusedError(CommandRefusedError):
    """A prune that would take commands still in flight (or not yet cleared): nothing is changed."""


class PruneBusyError(OrchestratorError):
    """Another prune, rebuild or verification holds the store's lock."""

    exit_code = 13


class ArchiveError(InputError):
    """A file that is not a complete, readable archive."""


# ---- the archive's lines ----------------------------------------------------------------------------


class ArchiveHeader(BaseModel):
    """The first line of an archive."""

    format: Literal["orchestrator.archive/1"] = "orchestrator.archive/1"
    kind: Literal["header"] = "header"
    prune_id: UUID = Field(description="this prune; the store's log records it (PruneLog)")
    store: str = Field(description="the store the commands came from (URL, password hidden)")
    ended_before: datetime = Field(description="the cut-off: commands ended and cleared before it")
    written_at: datetime


class ArchivedEvent(BaseModel):
    """One stored event of a command, as the store held it."""

    originator_id: UUID
    version: int
    topic: str = Field(description="module:Class.Event")
    timestamp: datetime
    state: dict[str, Any] = Field(description="the event's stored state, decoded JSON (the library's encoding)")
    written_by: dict[str, Any] = Field(description="the writer stamp ({} for events written before stamps)")


class ArchivedCommandLine(BaseModel):
    """One line per root command: its whole history."""

    kind: Literal["command"] = "command"
    command_id: UUID
    flow: str
    outcome: str = Field(description="succeeded | failed")
    accepted_at: datetime
    ended_at: datetime | None
    settled_at: datetime = Field(description="when it left flight: ended, every task cleared")
    events: list[ArchivedEvent]


class ArchiveEnd(BaseModel):
    """The last line: an archive without it is incomplete."""

    kind: Literal["end"] = "end"
    prune_id: UUID
    commands: int
    events: int


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


# ---- reading an archive -----------------------------------------------------------------------------


@dataclass
class ArchivedCommand:
    """One command of an archive: its line, the command replayed from its events, and those events."""

    record: ArchivedCommandLine
    command: RootCommand
    events: list[Any]  # the domain events, as the store's mapper decodes them

    @property
    def command_id(self) -> UUID:
        return self.record.command_id

    @property
    def flow(self) -> str:
        return self.command.flow

    @property
    def outcome(self) -> str:
        return self.command.status.value

    @property
    def ended_at(self) -> datetime | None:
        return self.command.ended_at


class ArchivedCommandView(BaseModel):
    command_id: UUID
    flow: str
    outcome: str = Field(description="succeeded | failed")
    accepted_at: datetime
    ended_at: datetime | None
    events: int


class ArchiveListing(BaseModel):
    """`archive show --json`: what an archive holds, each command replayed from its archived events."""

    format: Literal["orchestrator.archive-show/1"] = "orchestrator.archive-show/1"
    archive: str
    header: ArchiveHeader
    commands: list[ArchivedCommandView]
    events: int


def archive_listing(path: Path | str) -> ArchiveListing:
    """The commands of an archive, each replayed (ArchiveError if it is not a complete, readable one)."""
    header = read_archive_header(path)
    commands = [
        ArchivedCommandView(
            command_id=c.command_id,
            flow=c.flow,
            outcome=c.outcome,
            accepted_at=c.command.accepted_at,
            ended_at=c.ended_at,
            events=len(c.events),
        )
        for c in read_archive(path)
    ]
    return ArchiveListing(archive=str(path), header=header, commands=commands, events=sum(c.events for c in commands))


def archive_mapper() -> Mapper[UUID]:
    """The mapper that decodes archived states (the store's transcodings; archives are never compressed)."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return CheckedMapper(transcoder=transcoder)


def read_archive_header(path: Path | str) -> ArchiveHeader:
    """The header of an archive (ArchiveError if the file is not one)."""
    with _open_archive(Path(path)) as lines:
        return _header(Path(path), next(lines, (0, b"")))


def read_archive(path: Path | str) -> Iterator[ArchivedCommand]:
    """Every command of an archive, in log order, replayed from its archived events.

    Checks as it reads: the header's format, each history complete (versions 1..n of one
    command, starting with `Accepted`), and the last line's counts; ArchiveError otherwise.
    """
    mapper = archive_mapper()
    for record in iter_archive(path):
        events: list[Any] = [mapper.to_domain_event(_stored(e)) for e in record.events]
        command: Any = None
        for event in events:
            command = event.mutate(command)
        if not isinstance(command, RootCommand):
            raise ArchiveError(f"{path}: command {record.command_id} does not replay to a root command")
        yield ArchivedCommand(record, command, events)


def iter_archive(path: Path | str) -> Iterator[ArchivedCommandLine]:
    """Every command line of an archive, validated, without replaying (see `read_archive`)."""
    file = Path(path)
    with _open_archive(file) as lines:
        header = _header(file, next(lines, (0, b"")))
        commands = events = 0
        for number, raw in lines:
            data = _json_line(file, number, raw)
            if data.get("kind") == "end":
                end = _model(ArchiveEnd, file, number, data)
                if (end.prune_id, end.commands, end.events) != (header.prune_id, commands, events):
                    raise ArchiveError(f"{file}: line {number}: the counts do not match the archive's lines")
                if next(lines, None) is not None:
                    raise ArchiveError(f"{file}: lines follow the end line {number}")
                return
            record = _model(ArchivedCommandLine, file, number, data)
            versions = [e.version for e in record.events]
            if versions != list(range(1, len(versions) + 1)) or record.events[0].topic != ACCEPTED_TOPIC:
                raise ArchiveError(f"{file}: line {number}: the history of {record.command_id} is not complete")
            if any(e.originator_id != record.command_id for e in record.events):
                raise ArchiveError(f"{file}: line {number}: an event of another aggregate")
            commands += 1  # noqa: SIM113 - counts command lines, not lines
            events += len(record.events)
            yield record
    raise ArchiveError(f"{file}: incomplete: it has no end line (was it cut short?)")


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[Iterator[tuple[int, bytes]]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive {path}: {exc.strerror or exc}") from None
    with handle:
        yield ((n, line) for n, line in enumerate(handle, start=1) if line.strip())


def _json_line(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise ArchiveError(f"{path}: line {number} is not JSON; not an orchestrator archive") from None
    if not isinstance(data, dict):
        raise ArchiveError(f"{path}: line {number} is not a JSON object; not an orchestrator archive")
    return data


def _model(model: type[M], path: Path, number: int, data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ArchiveError(f"{path}: line {number}: {where}: {first['msg']}") from None


def _header(path: Path, first: tuple[int, bytes]) -> ArchiveHeader:
    number, raw = first
    if not raw:
        raise ArchiveError(f"{path} is empty; not an orchestrator archive")
    data = _json_line(path, number, raw)
    if data.get("format") != ARCHIVE_FORMAT:
        raise ArchiveError(f"{path}: not an orchestrator archive (format {ARCHIVE_FORMAT} expected on line 1)")
    return _model(ArchiveHeader, path, number, data)


def _stored(event: ArchivedEvent) -> StoredEvent:
    state = json.dumps(event.state, separators=(",", ":")).encode()
    return StoredEvent(event.originator_id, event.version, event.topic, state)


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
class _Selection:
    """What the scan found (or an archive holds): the commands to prune, with the version each ends at."""

    versions: dict[UUID, int] = field(default_factory=dict)
    events: int = 0
    stored_bytes: int = 0
    archive_bytes: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    kept: int = 0
    blocking: list[tuple[UUID, str]] = field(default_factory=list)


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


# ---- writing the archive ----------------------------------------------------------------------------


def _write_archive(store: EventStore, cutoff: datetime, path: Path, header: ArchiveHeader) -> tuple[str, _Selection]:
    """Scan and write the archive to FILE.partial, make it durable, move it into place (never over a
    file that appeared meanwhile); its sha256 and what the scan found."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)  # left by a prune killed while it wrote (the lock is ours now)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private: it holds every history
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _HashingWriter(handle)
            found = _scan(store, cutoff, header, writer)
            handle.flush()
            os.fsync(handle.fileno())
        _move_into_place(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _fsync_directory(path.parent)
    return writer.digest(), found


def _move_into_place(partial: Path, path: Path) -> None:
    """A hard link, which fails if the name is taken, then the partial name goes; a rename where the
    file system has no hard links (a scratch file of --no-archive may be replaced)."""
    try:
        os.link(partial, path)
    except FileExistsError:
        if path.name.startswith("orchestrator-prune-") and path.stat().st_size == 0:
            os.replace(partial, path)  # our own empty scratch file (--no-archive)
            return
        raise InputError(f"--archive {path} appeared while the prune was writing it; nothing was deleted") from None
    except OSError:
        if path.exists() and path.stat().st_size > 0:
            raise
        os.replace(partial, path)
        return
    partial.unlink()


class _HashingWriter:
    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha.update(data)

    def digest(self) -> str:
        return self.sha.hexdigest()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _line(model: BaseModel | Mapping[str, Any]) -> bytes:
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _scan(store: EventStore, cutoff: datetime, header: ArchiveHeader, out: _HashingWriter | None) -> _Selection:
    """Find the commands to prune and write each one's line (or only count its bytes, with no writer).

    Candidates are the root commands accepted before the cut-off (from the log's `Accepted`
    notifications); each is replayed from its events, which are the archive's content. Any
    candidate in flight (by the in-flight index or by its replay) refuses the whole prune.
    """
    found = _Selection()
    in_flight = set(store.in_flight_ids())
    candidates: list[UUID] = []
    for page in store.notifications(after=0, topics=[ACCEPTED_TOPIC]):
        for n in page:
            ident = _uuid(n.originator_id)
            if _accepted_at(store, n.state) >= cutoff:
                continue
            if ident in in_flight:
                found.blocking.append((ident, ""))
            else:
                candidates.append(ident)
    if found.blocking:
        _refuse(store, cutoff, found.blocking)
    first = _line(header)
    found.archive_bytes += len(first)
    if out is not None:
        out.write(first)
    for start in range(0, len(candidates), LOAD_CHUNK):
        chunk = candidates[start : start + LOAD_CHUNK]
        by_id: dict[UUID, list[StoredEvent]] = {}
        for stored in store.dialect.events_after(store.recorder, [(i, 0) for i in chunk]):
            by_id.setdefault(_uuid(stored.originator_id), []).append(stored)
        for ident in chunk:
            stored_events = by_id.get(ident)
            if stored_events:
                _consider(store, cutoff, ident, stored_events, found, out)
    if found.blocking:
        _refuse(store, cutoff, found.blocking)
    last = _line(ArchiveEnd(prune_id=header.prune_id, commands=len(found.versions), events=found.events))
    found.archive_bytes += len(last)
    if out is not None:
        out.write(last)
    return found


def _consider(
    store: EventStore,
    cutoff: datetime,
    ident: UUID,
    stored_events: list[StoredEvent],
    found: _Selection,
    out: _HashingWriter | None,
) -> None:
    events: list[Any] = [store.app.mapper.to_domain_event(s) for s in stored_events]
    command: Any = None
    for event in events:
        command = event.mutate(command)
    if not isinstance(command, RootCommand):
        return
    if command.in_flight:
        found.blocking.append((ident, f"{command.flow} {command.status.value}"))
        return
    settled = max((e.timestamp for e in events if isinstance(e, SETTLING)), default=None)
    if settled is None or settled >= cutoff:
        found.kept += 1
        return
    head = {
        "kind": "command",
        "command_id": str(ident),
        "flow": command.flow,
        "outcome": command.status.value,
        "accepted_at": command.accepted_at.isoformat(),
        "ended_at": command.ended_at.isoformat() if command.ended_at else None,
        "settled_at": settled.isoformat(),
    }
    # Each event's state goes in as the JSON text the store holds (the mapper has just decoded it, so
    # it is valid JSON): decoding it again and encoding it back would cost more than the rest.
    quoted_id = json.dumps(str(ident))
    lines = [
        f'{{"originator_id":{quoted_id},"version":{s.originator_version},"topic":{json.dumps(s.topic)},'
        f'"timestamp":"{e.timestamp.isoformat()}","state":{_state_text(store, s.state)},'
        f'"written_by":{json.dumps(writer_of(e), separators=(",", ":"))}}}'
        for s, e in zip(stored_events, events, strict=True)
    ]
    encoded = _line(head)[:-2] + b',"events":[' + ",".join(lines).encode() + b"]}\n"
    if out is not None:
        out.write(encoded)
    found.versions[ident] = stored_events[-1].originator_version
    found.events += len(stored_events)
    found.stored_bytes += sum(len(s.state) for s in stored_events)
    found.archive_bytes += len(encoded)
    found.oldest = settled if found.oldest is None else min(found.oldest, settled)
    found.newest = settled if found.newest is None else max(found.newest, settled)


def _refuse(store: EventStore, cutoff: datetime, blocking: list[tuple[UUID, str]]) -> None:
    shown = []
    for ident, known in blocking[:SHOWN]:
        what = known
        if not what:
            command = store.fresh(ident)
            what = f"{command.flow} {command.status.value}" if isinstance(command, RootCommand) else "unreadable"
        shown.append(f"{ident} {what}")
    more = f" and {len(blocking) - SHOWN} more" if len(blocking) > SHOWN else ""
    raise PruneRefusedError(
        f"cannot prune: {len(blocking)} command(s) accepted before {cutoff.isoformat()} are still in flight or "
        f"have tasks not yet cleared on the agent ({', '.join(shown)}{more}); wait until they end and are "
        "cleared, or give an earlier --ended-before; nothing was changed"
    )


def _plain_state(store: EventStore, raw: bytes) -> bytes:
    mapper = store.app.mapper
    if mapper.cipher:
        raw = mapper.cipher.decrypt(raw)
    if mapper.compressor:
        raw = mapper.compressor.decompress(raw)
    return raw


def _state_text(store: EventStore, raw: bytes) -> str:
    return _plain_state(store, raw).decode()


def _state(store: EventStore, raw: bytes) -> dict[str, Any]:
    data = json.loads(_plain_state(store, raw))
    assert isinstance(data, dict)
    return data


# The library writes an event's timestamp first: read it without decoding the whole state.
_LEADING_TIMESTAMP = re.compile(rb'^\{"timestamp":\{"_type_":"datetime_iso","_data_":"([^"\\]{10,40})"\}')


def _accepted_at(store: EventStore, raw: bytes) -> datetime:
    plain = _plain_state(store, raw)
    found = _LEADING_TIMESTAMP.match(plain)
    if found is not None:
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(found.group(1).decode())
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return _timestamp(_state(store, raw))


def _timestamp(state: Mapping[str, Any]) -> datetime:
    stamp = state["timestamp"]
    text = stamp["_data_"] if isinstance(stamp, dict) else stamp
    value = datetime.fromisoformat(str(text))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# ---- deleting -----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """What deleting one archived command needs: its id, the version it ends at, its Accepted state."""

    command_id: UUID
    version: int
    accepted: dict[str, Any]


def _entries(path: Path, totals: _Selection | None = None) -> Iterator[_Entry]:
    """The archive's commands, read fast (the archive was checked when written or resumed); with
    `totals`, what they add up to is counted on the way."""
    with _open_archive(path) as lines:
        next(lines, None)
        for number, raw in lines:
            data = _json_line(path, number, raw)
            if data.get("kind") != "command":
                continue
            events = data["events"]
            if totals is not None:
                totals.events += len(events)
                totals.stored_bytes += sum(len(json.dumps(e["state"], separators=(",", ":"))) for e in events)
                settled = datetime.fromisoformat(data["settled_at"])
                totals.oldest = settled if totals.oldest is None else min(totals.oldest, settled)
                totals.newest = settled if totals.newest is None else max(totals.newest, settled)
            yield _Entry(UUID(data["command_id"]), int(events[-1]["version"]), events[0]["state"])


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


# ---- the archive's totals ------------------------------------------------------------------------------


def _archive_totals(path: Path) -> _Selection:
    """What an archive holds (a resumed prune's figures; stored bytes as the compact JSON of each state)."""
    totals = _Selection(archive_bytes=path.stat().st_size)
    for entry in _entries(path, totals):
        totals.versions[entry.command_id] = entry.version
    return totals


def _end_of(path: Path) -> ArchiveEnd:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        tail = [line for line in handle.read().splitlines() if line.strip()]
    data = _json_line(path, 0, tail[-1]) if tail else {}
    if data.get("kind") != "end":
        raise ArchiveError(f"{path}: incomplete: it has no end line (was it cut short?)")
    return _model(ArchiveEnd, path, 0, data)


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


__all__ = [
    "ARCHIVE_FORMAT",
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
