"""The event store: one event-sourced application over one database.

It records aggregates' events (each stamped with who wrote it), reads them back
one by one or in bulk, and keeps the index of root commands in flight
(`orchestrator_in_flight`) in the same transaction as the events that change
it. Reading the log goes through the library's notification log reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, LRUCache
from eventsourcing.persistence import (
    InterfaceError,
    Mapper,
    MapperDeserialisationError,
    Notification,
    OperationalError,
    PersistenceError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import TopicError

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import ENTITY_CLASSES
from orchestrator.errors import StoreError, StoreUnavailableError, damaged_event
from orchestrator.store.codec import OrjsonTranscoder
from orchestrator.store.leases import LeaseTable, WriteFence
from orchestrator.store.tables import Cursor, Tables
from orchestrator.store.url import StoreConfig

CACHE_SIZE = 20_000
LOG_PAGE = 1000
LOAD_CHUNK = 500  # aggregates per bulk query
IN_FLIGHT_TABLE = "orchestrator_in_flight"  # root commands in flight, kept with the events that change it
WRITER_ATTRIBUTE = "written_by"  # who wrote an event: stored with it, read back with it
# What a store that cannot be reached raises (a database restarting, a dropped connection, a
# file locked for too long): the engine waits and tries again rather than stop.
STORE_OUTAGES: tuple[type[BaseException], ...] = (StoreUnavailableError, OperationalError, InterfaceError)


# An entry of the log as the read models read it:
# (position, originator id as text with dashes, originator version, topic, state)
LogEntry = tuple[int, str, int, str, bytes]


class Dialect(Protocol):
    """What each database module provides to the event store (orchestrator/store/sqlite.py, postgres.py)."""

    kind: str
    factory_topic: str
    events_table: str
    snapshots_table: str

    def events_after(self, recorder: Any, versions: Sequence[tuple[UUID, int]]) -> list[StoredEvent]: ...

    def snapshots_and_events(
        self, recorder: Any, snapshots: bool, known: Sequence[tuple[UUID, int | None]]
    ) -> tuple[list[StoredEvent], list[StoredEvent]]:
        """For each (id, known version): the latest snapshot where the version is unknown (None,
        and `snapshots` on), and every event after the known version or that snapshot, in order."""
        ...

    def head_and_news(
        self, recorder: Any, after: int, topics: Sequence[str], limit: int
    ) -> tuple[int, list[Notification]]:
        """The log's head, and up to `limit` entries of these topics after a position and up to that
        head, read together (one statement, or one read transaction)."""
        ...

    def in_flight_ids(self, recorder: Any) -> list[UUID]: ...

    def fill_in_flight(self, recorder: Any, ids: Sequence[UUID]) -> None: ...

    def has_table(self, recorder: Any, table: str) -> bool: ...

    def log_after(self, cursor: Cursor, after: int, limit: int, stop: int | None) -> list[LogEntry]:
        """Up to `limit` entries of the log after a position (to `stop`, inclusive), in order, read
        in a transaction of the store's tables (`Tables`): the read models follow the log this way,
        without building the library's notification objects."""
        ...

    def tables(self, *, read_only: bool = False) -> Tables: ...

    def lock(self, purpose: str) -> StoreLock: ...

    def leases(self) -> LeaseTable: ...

    # An operator's prune (orchestrator/retention/), in a write transaction of the store's tables
    # (`Tables.write()`), so the events and the read-model rows of the commands go together.

    def lock_versions(self, cursor: Cursor, ids: Sequence[UUID]) -> dict[UUID, int]:
        """The last version of each of these aggregates that has events; no event is added until the
        transaction ends."""
        ...

    def delete_aggregates(self, cursor: Cursor, ids: Sequence[UUID]) -> int:
        """Delete every event and snapshot of these aggregates; the number of events deleted."""
        ...


class StoreLock(Protocol):
    """A store-wide lock of one process: a flock beside a SQLite file, a session advisory lock on PostgreSQL."""

    @property
    def held(self) -> bool: ...

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class CheckedMapper(Mapper[UUID]):
    """Turns an unreadable stored event into one clear error (the history is never guessed at)."""

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        try:
            return super().to_domain_event(stored_event)
        except TopicError as exc:
            detail = f"an event kind this version does not know ({str(exc).splitlines()[0][:80]})"
        except MapperDeserialisationError as exc:
            detail = str(exc.__cause__ or exc).splitlines()[0][:120]
        raise damaged_event(stored_event.originator_id, stored_event.originator_version, stored_event.topic, detail)


class OrchestratorApp(Application[UUID]):
    """The event-sourced application: one event store, one notification log."""

    name = "Orchestrator"
    # Entities live long and every command locks some: snapshots keep them quick to load.
    snapshotting_intervals = {cls: 100 for cls in ENTITY_CLASSES.values()}
    log_section_size = LOG_PAGE

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON format, through orjson (orchestrator/store/codec.py)."""
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=CheckedMapper)


def writer_of(event: Any) -> dict[str, Any]:
    """Who wrote an event (empty for events written before events were stamped)."""
    found = getattr(event, WRITER_ATTRIBUTE, None)
    return dict(found) if isinstance(found, dict) else {}


class EventStore:
    """Aggregates in and out of one store; nothing here knows what a command means."""

    def __init__(self, config: StoreConfig, dialect: Dialect, app: OrchestratorApp) -> None:
        self.config = config
        self.dialect = dialect
        self.app = app

    @classmethod
    def open(cls, config: StoreConfig, dialect: Dialect, *, create_tables: bool, read_only: bool = False) -> EventStore:
        env = {
            **config.eventsourcing_env(),
            "PERSISTENCE_MODULE": dialect.factory_topic,
            # Cached aggregates are fast-forwarded with new events on every get, and handed
            # out without a copy: whoever changes one and fails to save it must `forget` it.
            "AGGREGATE_CACHE_MAXSIZE": str(CACHE_SIZE),
            "AGGREGATE_CACHE_FASTFORWARD": "y",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
            "CREATE_TABLE": "y" if create_tables and not read_only else "n",
        }
        if read_only and config.kind == "sqlite":
            from orchestrator.store.url import sqlite_read_only_uri

            assert config.path is not None
            env["SQLITE_DBNAME"] = sqlite_read_only_uri(config.path)
        try:
            app = OrchestratorApp(env=env)
        except PersistenceError as exc:
            raise StoreError(f"cannot open {config.redacted}: {config.scrub(str(exc))}") from None
        return cls(config, dialect, app)

    def close(self) -> None:
        self.app.close()

    @property
    def recorder(self) -> Any:
        return self.app.recorder

    # ---- writing ------------------------------------------------------------------------------

    def save(
        self,
        *aggregates: Any,
        stamp: Mapping[str, Any] | None = None,
        fence: WriteFence | None = None,
        reads: Mapping[UUID, int] | None = None,
        flush: bool = True,
    ) -> int:
        """Record every pending event of these aggregates in one transaction, then snapshots.

        The same as `Application.save` minus its per-object runtime protocol checks (they
        cost more than the insert when a cycle saves thousands of aggregates), plus: each
        event is stamped with its writer, and the in-flight index changes with the events.
        With a fence, the transaction records nothing unless that lease is still current
        (LeaseLostError). `reads`: aggregates the caller decided on without asking the store
        (their cached copies) and does not write; the transaction records nothing unless each
        is still at that version (IntegrityError, as for a written aggregate whose version was
        taken). `flush=False`: the commit does not wait for the disk; for what a crash of the
        database's machine may lose because nothing acted on it yet (see CommandWriter.apply).
        Later commits that wait flush it with them. Returns the number of events recorded.
        """
        events: list[Any] = []
        snapshots: list[Any] = []
        added: list[UUID] = []
        removed: list[UUID] = []
        long_lived: list[Any] = []
        for aggregate in aggregates:
            collected = aggregate.collect_events()
            events.extend(collected)
            if isinstance(aggregate, RootCommand) and collected:
                if collected[0].originator_version == 1:
                    added.append(aggregate.id)
                if not aggregate.in_flight:
                    removed.append(aggregate.id)
            interval = self.app.snapshotting_intervals.get(type(aggregate))
            if interval:
                long_lived.append(aggregate)
                # One snapshot at the version the save leaves, when it passes a multiple of the interval
                # (a cycle's end actions may add a hundred events to a shared storage domain at once).
                if any(e.originator_version % interval == 0 for e in collected):
                    snapshots.append(aggregate)
        if stamp:
            written_by = dict(stamp)
            for event in events:
                object.__setattr__(event, WRITER_ATTRIBUTE, written_by)
        if events:
            self.app.events.put(
                events,
                in_flight_added=added,
                in_flight_removed=removed,
                fence=fence,
                read_versions=reads or {},
                flush=flush,
            )
        cache: Any = self.app.repository.cache
        for aggregate in long_lived:  # the inventory, as just recorded: what optimistic units read
            cache.put(aggregate.id, aggregate)
        for aggregate in snapshots:
            self._snapshot(aggregate)
        return len(events)

    def _snapshot(self, aggregate: Any) -> None:
        """A snapshot of an aggregate just recorded, taken of it in hand (the library replays it from
        the store): a load starts from the latest snapshot, whatever its version."""
        snapshot_class = getattr(type(aggregate), "Snapshot", type(self.app).snapshot_class)
        assert snapshot_class is not None and self.app.snapshots is not None
        self.app.snapshots.put([snapshot_class.take(aggregate)])

    def forget(self, ids: Iterable[UUID] | None = None) -> None:
        """Drop cached aggregates (all, or these) after a change that was not saved."""
        cache: Any = self.app.repository.cache
        if cache is None:
            return
        if ids is None:
            self.app.repository.cache = LRUCache(maxsize=CACHE_SIZE)
            return
        for ident in ids:
            with contextlib.suppress(KeyError):
                cache.get(ident, evict=True)

    # ---- reading one ------------------------------------------------------------------------

    def get(self, ident: UUID, version: int | None = None) -> Any | None:
        try:
            return self.app.repository.get(ident, version=version)
        except AggregateNotFoundError:
            return None

    def fresh(self, ident: UUID) -> Any | None:
        """The aggregate as recorded now, replayed apart from the cache (which may hold unsaved
        changes, and which readers in other threads fast-forward)."""
        self.forget([ident])
        commands = self.load_commands([ident])
        return commands[0] if commands else self.get(ident)

    def events_of(self, ident: UUID) -> list[Any]:
        return list(self.app.events.get(ident))

    # ---- reading many -----------------------------------------------------------------------

    def cached(self, ids: Iterable[UUID]) -> dict[UUID, Any]:
        """The aggregates of these ids this process holds in its cache, as they were last read or
        saved here, without asking the store (another process may have moved them on since)."""
        cache: Any = self.app.repository.cache
        found: dict[UUID, Any] = {}
        if cache is None:
            return found
        for ident in ids:
            with contextlib.suppress(KeyError):
                found[ident] = cache.get(ident)
        return found

    def load_aggregates(self, ids: list[UUID]) -> dict[UUID, Any]:
        """Aggregates by id, in one round trip per chunk whatever their number (two queries on SQLite).

        Cached aggregates are brought up to date, the others start from their latest
        snapshot; every event after those versions comes with the snapshots. Newly
        loaded aggregates go into the cache.
        """
        cache: Any = self.app.repository.cache
        found: dict[UUID, Any] = {}
        missing: list[UUID] = []
        for ident in ids:
            try:
                found[ident] = cache.get(ident)
            except KeyError:
                missing.append(ident)
        for start in range(0, len(ids), LOAD_CHUNK):
            chunk = [(i, found[i].version if i in found else None) for i in ids[start : start + LOAD_CHUNK]]
            snapshots, events = self.dialect.snapshots_and_events(self.recorder, self.app.snapshots is not None, chunk)
            for snapshot in snapshots:
                found[_uuid(snapshot.originator_id)] = self.app.mapper.to_domain_event(snapshot).mutate(None)  # type: ignore[attr-defined]
            for stored in events:
                ident = _uuid(stored.originator_id)
                aggregate = found.get(ident)
                if aggregate is None and stored.originator_version == 1:
                    found[ident] = self.app.mapper.to_domain_event(stored).mutate(None)  # type: ignore[attr-defined]
                elif aggregate is not None and stored.originator_version == aggregate.version + 1:
                    self.app.mapper.to_domain_event(stored).mutate(aggregate)  # type: ignore[attr-defined]
        for ident in missing:
            if ident in found:
                cache.put(ident, found[ident])
        return found

    def load_commands(self, ids: Sequence[UUID]) -> list[RootCommand]:
        """Replay many commands, one query per chunk (recovery loads everything in flight)."""
        by_id: dict[UUID, list[StoredEvent]] = {}
        for event in self._chunked(self._events_after, [(i, 0) for i in ids]):
            by_id.setdefault(_uuid(event.originator_id), []).append(event)
        out: list[RootCommand] = []
        for events in by_id.values():
            command: Any = None
            for stored_event in events:
                command = self.app.mapper.to_domain_event(stored_event).mutate(command)  # type: ignore[attr-defined]
            if isinstance(command, RootCommand):
                out.append(command)
        return out

    def _events_after(self, versions: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        return self.dialect.events_after(self.recorder, versions) if versions else []

    @staticmethod
    def _chunked(select: Any, items: Sequence[Any]) -> Iterator[StoredEvent]:
        for start in range(0, len(items), LOAD_CHUNK):
            yield from select(items[start : start + LOAD_CHUNK])

    # ---- the log and the in-flight index ----------------------------------------------------

    def head(self) -> int:
        return int(self.recorder.max_notification_id() or 0)

    def notifications(
        self, *, after: int, topics: Sequence[str] = (), stop: int | None = None
    ) -> Iterator[Sequence[Notification]]:
        """Pages of the log after a position, optionally of some topics only, up to `stop`."""
        # The library's reader asks again until a page comes back empty; a short page is the last.
        while True:
            page = self.recorder.select_notifications(
                start=after, limit=LOG_PAGE, stop=stop, topics=topics, inclusive_of_start=False
            )
            if page:
                yield page
            if len(page) < LOG_PAGE:
                return
            after = page[-1].id

    def news(self, *, after: int, topics: Sequence[str]) -> tuple[int, list[Notification]]:
        """The log's head, and every entry of these topics after a position up to it: one round trip
        when there are fewer than a page of them (a cycle's discovery), then page by page."""
        head, found = self.dialect.head_and_news(self.recorder, after, topics, LOG_PAGE)
        if len(found) == LOG_PAGE:
            for page in self.notifications(after=found[-1].id, topics=topics, stop=head):
                found.extend(page)
        return head, found

    def originators(self, topics: Sequence[str], *, after: int = 0) -> Iterator[UUID]:
        for page in self.notifications(after=after, topics=topics):
            for n in page:
                yield _uuid(n.originator_id)

    def in_flight_ids(self) -> list[UUID]:
        return self.dialect.in_flight_ids(self.recorder)

    def fill_in_flight(self, ids: Sequence[UUID]) -> None:
        self.dialect.fill_in_flight(self.recorder, ids)

    def has_table(self, table: str) -> bool:
        return self.dialect.has_table(self.recorder, table)

    def log_after(self, cursor: Cursor, after: int, limit: int, stop: int | None = None) -> list[LogEntry]:
        return self.dialect.log_after(cursor, after, limit, stop)


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
