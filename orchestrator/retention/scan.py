"""The scan of a prune: which root commands ended and were cleared before the cut-off, streamed to
the archive as they are found; and the refusal when anything accepted before it is still in flight.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    StoredEvent,
)

from orchestrator.domain.commands import RootCommand
from orchestrator.errors import CommandRefusedError
from orchestrator.retention.archive import (
    ACCEPTED_TOPIC,
    PARTIAL_SUFFIX,
    ArchiveEnd,
    ArchiveHeader,
    _fsync_directory,
    _HashingWriter,
    _line,
    _move_into_place,
    _Selection,
    _uuid,
)
from orchestrator.store.event_store import LOAD_CHUNK, EventStore, writer_of

SHOWN = 3  # commands named in a refusal
SETTLING = (RootCommand.Ended, RootCommand.Terminated, RootCommand.TasksCleared)


class PruneRefusedError(CommandRefusedError):
    """A prune that would take commands still in flight (or not yet cleared): nothing is changed."""


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
