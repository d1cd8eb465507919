"""Archives of pruned commands: the format (JSON lines), reading one back, writing one safely.

A header line, one line per root command with every stored event of it (and its
children), in log order, then an end line with the totals. Read back by
`read_archive` (each command replayed) and `archive_listing`; written to
`FILE.partial`, fsynced, renamed into place and the directory fsynced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic
from pydantic import BaseModel, Field, ValidationError

from orchestrator.domain.commands import RootCommand
from orchestrator.errors import InputError
from orchestrator.store.codec import OrjsonTranscoder
from orchestrator.store.event_store import CheckedMapper

M = TypeVar("M", bound=BaseModel)
ARCHIVE_FORMAT = "orchestrator.archive/1"
PARTIAL_SUFFIX = ".partial"
ACCEPTED_TOPIC = get_topic(RootCommand.Accepted)


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
    transcoder = OrjsonTranscoder()
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
