"""The embedded orchestrator: the service layer over the event store.

`Orchestrator` is the library object a program creates and drives. It accepts
commands (validation, entity locks and all expected tasks in one
transaction), answers questions, seeds an inventory, and hands out the task
manager that executes accepted commands.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, LRUCache
from eventsourcing.persistence import IntegrityError, Mapper, MapperDeserialisationError, PersistenceError, StoredEvent
from eventsourcing.utils import TopicError, get_topic
from pydantic import BaseModel

from orchestrator.agent.simulator import SimulatedAgent, default_agent_state_path
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import (
    ENTITY_CLASSES,
    Disk,
    InventoryEntity,
    StorageDomain,
    Vm,
)
from orchestrator.domain.model import EntityRef, EntityType, entity_aggregate_id
from orchestrator.errors import (
    CommandRefusedError,
    DuplicateCommandError,
    EntityLockedError,
    NotFoundError,
    OrchestratorError,
    StoreError,
    damaged_event,
)
from orchestrator.flows import get_flow
from orchestrator.flows.base import Flow, FlowParams, PlanContext
from orchestrator.store import StoreConfig, parse_store_url, store_layout, store_url_from_env
from projections.db import ViewDatabase
from projections.queries import ViewQueries
from projections.runner import ProjectionRunner

log = logging.getLogger("orchestrator")
ACCEPT_ATTEMPTS = 20
CACHE_SIZE = 20_000
SEED_BATCH = 2_000  # aggregates per transaction when seeding
SUBMIT_MANY_BATCH = 500  # commands per transaction in submit_many
SEED_DOMAINS = ("sd-1", "sd-2")


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

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=CheckedMapper)


def registered_topics() -> list[str]:
    return [get_topic(cls.Registered) for cls in ENTITY_CLASSES.values()]


class InventoryUnit:
    """The inventory entities one transaction reads and changes (a unit of work)."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.app = orch.app
        self.entities: dict[EntityRef, InventoryEntity] = {}

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Load many entities with one query (cached ones are brought up to date in bulk)."""
        wanted = {entity_aggregate_id(r): r for r in refs if r not in self.entities and r.type in ENTITY_CLASSES}
        for ident, aggregate in self.orch.load_aggregates(list(wanted)).items():
            assert isinstance(aggregate, InventoryEntity)
            self.entities[wanted[ident]] = aggregate

    def get(self, ref: EntityRef) -> InventoryEntity | None:
        if ref not in self.entities:
            if ref.type not in ENTITY_CLASSES:
                return None
            try:
                entity: object = self.app.repository.get(entity_aggregate_id(ref))
            except AggregateNotFoundError:
                return None
            assert isinstance(entity, InventoryEntity)
            self.entities[ref] = entity
        return self.entities[ref]

    def add(self, entity: InventoryEntity) -> None:
        self.entities[entity.ref] = entity

    def touched(self) -> list[InventoryEntity]:
        return [e for e in self.entities.values() if e.pending_events]

    def release_locks(self, command: RootCommand) -> None:
        for use in command.entities:
            entity = self.get(use.ref)
            if entity is not None:
                entity.release_lock(str(command.id))


@dataclass
class _Accepted:
    commands: list[RootCommand] = field(default_factory=list)
    results: list[SubmitResult | OrchestratorError] = field(default_factory=list)

    def extend(self, other: _Accepted) -> None:
        self.commands += other.commands
        self.results += other.results


class SubmitResult(BaseModel):
    """The answer to `submit`: the command id is also its idempotency key."""

    command_id: UUID
    flow: str
    summary: str
    tasks: int
    duplicate: bool


class SeededVm(BaseModel):
    vm_id: str
    disk_ids: list[str]


class SeedResult(BaseModel):
    storage_domains: list[str]
    vms: list[SeededVm]


@dataclass
class Orchestrator:
    """The embedded orchestrator over one store and one (simulated) agent."""

    config: StoreConfig
    app: OrchestratorApp
    views: ViewDatabase
    projections: ProjectionRunner
    queries: ViewQueries
    agent_state: Path

    @classmethod
    def open(cls, store: str | None = None, *, agent_state: Path | None = None, create: bool = True) -> Orchestrator:
        config = parse_store_url(store_url_from_env(store))
        with store_layout(config, create=create) as ready:
            return cls._open(config, agent_state, create_tables=not ready)

    @classmethod
    def _open(cls, config: StoreConfig, agent_state: Path | None, *, create_tables: bool) -> Orchestrator:
        env = {
            **config.eventsourcing_env(),
            # Cached aggregates are fast-forwarded with new events on every get, and handed
            # out without a copy: whoever changes one and fails to save it must `forget` it.
            "AGGREGATE_CACHE_MAXSIZE": str(CACHE_SIZE),
            "AGGREGATE_CACHE_FASTFORWARD": "y",
            "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
            "CREATE_TABLE": "y" if create_tables else "n",
        }
        try:
            app = OrchestratorApp(env=env)
        except PersistenceError as exc:
            raise StoreError(f"cannot open {config.redacted}: {config.scrub(str(exc))}") from None
        views = ViewDatabase(config)
        runner = ProjectionRunner(views, app.recorder, app.mapper)
        if create_tables:
            runner.ensure_tables()
        state = agent_state or default_agent_state_path(config.path)
        return cls(config, app, views, runner, ViewQueries(views), state)

    def close(self) -> None:
        self.views.close()
        self.app.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def open_agent(self) -> SimulatedAgent:
        return SimulatedAgent.open(self.agent_state)

    # ---- commands --------------------------------------------------------------------------

    def submit(self, flow_name: str, params: str | dict[str, Any], command_id: UUID | None = None) -> SubmitResult:
        """Validate and durably accept a command with all its expected tasks and locks.

        Nothing is recorded unless everything is: the command, its children,
        every expected task and every entity lock go in one transaction. A
        concurrent change to any entity involved makes the store refuse the
        transaction (optimistic concurrency); we then re-read and re-validate.
        """
        flow = get_flow(flow_name)
        parsed = flow.parse_params(params)
        check_existing = command_id is not None  # a fresh random id cannot exist yet
        command_id = command_id or uuid4()
        for _ in range(ACCEPT_ATTEMPTS):
            existing = self._existing_command(command_id) if check_existing else None
            if existing is not None:
                return self._duplicate(existing, flow.name, parsed.model_dump(mode="json"))
            unit = InventoryUnit(self)
            result = self._accept_into(unit, flow, parsed, command_id)
            if self._save_unit(result.commands, unit):
                crash_point("after_accept")
                accepted = result.results[0]
                assert isinstance(accepted, SubmitResult)
                return accepted
            check_existing = True  # someone changed an entity (or this id) meanwhile: read again
        raise CommandRefusedError("the entities of this command kept changing under it; try again")

    def submit_many(
        self, requests: Sequence[tuple[str, str | dict[str, Any]]]
    ) -> list[SubmitResult | OrchestratorError]:
        """Accept many commands in one transaction (say, the removal of a hundred VMs).

        Each is validated and takes its locks as if submitted alone, in order, so a later
        one that conflicts with an earlier one is refused; the answer for each is its
        SubmitResult or the error that refused it. Those accepted are recorded together,
        in transactions of up to 500 commands (a larger insert can hang PostgreSQL's driver).
        """
        if len(requests) > SUBMIT_MANY_BATCH:
            out: list[SubmitResult | OrchestratorError] = []
            for start in range(0, len(requests), SUBMIT_MANY_BATCH):
                out += self.submit_many(requests[start : start + SUBMIT_MANY_BATCH])
            return out
        for _ in range(ACCEPT_ATTEMPTS):
            unit = InventoryUnit(self)
            batch = _Accepted()
            for flow_name, params in requests:
                try:
                    flow = get_flow(flow_name)
                    batch.extend(self._accept_into(unit, flow, flow.parse_params(params), uuid4()))
                except OrchestratorError as exc:
                    batch.results.append(exc)
            if self._save_unit(batch.commands, unit):
                if batch.commands:
                    crash_point("after_accept")
                return batch.results
        raise CommandRefusedError("the entities of these commands kept changing under them; try again")

    def _accept_into(self, unit: InventoryUnit, flow: Flow, parsed: FlowParams, command_id: UUID) -> _Accepted:
        """Plan one command into a unit of work: validation, new entities, locks. Records nothing."""
        plan = flow.plan(PlanContext(command_id, unit, self._running_tasks_on), parsed)
        for entity in plan.new_entities:
            unit.add(entity)
        try:
            self._check_locks(plan.entities, unit, str(command_id))
        except OrchestratorError:
            for entity in plan.new_entities:
                unit.entities.pop(entity.ref, None)
            raise
        command = RootCommand.accept(
            command_id,
            flow.name,
            parsed.model_dump(mode="json"),
            plan.summary,
            plan.entities,
            [c.to_record() for c in plan.children],
        )
        for use in plan.entities:
            locked = unit.get(use.ref)
            assert locked is not None
            locked.take_lock(str(command_id), flow.name, use.mode)
        tasks = sum(len(c.tasks) for c in plan.children)
        result = SubmitResult(command_id=command_id, flow=flow.name, summary=plan.summary, tasks=tasks, duplicate=False)
        return _Accepted([command], [result])

    def _save_unit(self, commands: list[RootCommand], unit: InventoryUnit) -> bool:
        """Record commands and their entity changes in one transaction; False on a conflict."""
        try:
            self.save(*commands, *unit.touched())
        except IntegrityError:
            self.forget(e.id for e in unit.entities.values())
            return False
        except BaseException:
            self.forget(e.id for e in unit.entities.values())
            raise
        return True

    def _existing_command(self, command_id: UUID) -> RootCommand | None:
        try:
            command: object = self.app.repository.get(command_id)
        except AggregateNotFoundError:
            return None
        if not isinstance(command, RootCommand):
            raise DuplicateCommandError(f"id {command_id} is already used by something that is not a command")
        return command

    @staticmethod
    def _duplicate(existing: RootCommand, flow: str, params: dict[str, Any]) -> SubmitResult:
        if existing.flow != flow or existing.params != params:
            raise DuplicateCommandError(
                f"command id {existing.id} is already used by a {existing.flow} command with other parameters"
            )
        return SubmitResult(
            command_id=existing.id, flow=flow, summary=existing.summary, tasks=len(existing.tasks), duplicate=True
        )

    def _check_locks(self, uses: list[Any], unit: InventoryUnit, command_id: str) -> None:
        for use in uses:
            entity = unit.get(use.ref)
            if entity is None:
                raise CommandRefusedError(f"{use.ref.type.value} {use.ref.id} does not exist")
            conflict = entity.lock_conflict(command_id, use.mode)
            if conflict is not None:
                holder, lock = conflict
                raise EntityLockedError(
                    f"{use.ref.type.value} {use.ref.id} is locked ({lock['mode']}) by {lock['command_type']} "
                    f"command {holder}; try again when it has ended"
                )

    def _running_tasks_on(self, ref: EntityRef) -> list[str]:
        self.projections.catch_up()
        return [row.task_id for row in self.queries.tasks_for_entity(ref, running_only=True)]

    def command(self, command_id: UUID | str, version: int | None = None) -> RootCommand:
        try:
            ident = command_id if isinstance(command_id, UUID) else UUID(str(command_id))
        except ValueError:
            raise NotFoundError(f"{command_id!r} is not a command id (a UUID)") from None
        try:
            command: object = self.app.repository.get(ident, version=version)
        except AggregateNotFoundError:
            raise NotFoundError(f"no command {ident} in {self.config.redacted}") from None
        if not isinstance(command, RootCommand):
            raise NotFoundError(f"{ident} is not a command")
        return command

    def save(self, *aggregates: Any) -> None:
        """Record every pending event of these aggregates in one transaction, then snapshots.

        The same as `Application.save` minus its per-object runtime protocol checks,
        which cost more than the insert itself when a cycle saves thousands of aggregates.
        """
        events: list[Any] = []
        snapshots: list[tuple[UUID, int]] = []
        for aggregate in aggregates:
            collected = aggregate.collect_events()
            events.extend(collected)
            interval = self.app.snapshotting_intervals.get(type(aggregate))
            if interval:
                due = [e.originator_version for e in collected if e.originator_version % interval == 0]
                snapshots += [(aggregate.id, version) for version in due]
        if events:
            self.app.events.put(events)
        for ident, version in snapshots:
            self.app.take_snapshot(ident, version=version)

    def load_aggregates(self, ids: list[UUID]) -> dict[UUID, Any]:
        """Aggregates by id, in two queries whatever their number.

        Cached aggregates are brought up to date, the others start from their latest
        snapshot (one query for all of them); then one query fetches every event after
        those versions. Newly loaded aggregates go into the cache.
        """
        cache: Any = self.app.repository.cache
        found: dict[UUID, Any] = {}
        missing: list[UUID] = []
        for ident in ids:
            try:
                found[ident] = cache.get(ident)
            except KeyError:
                missing.append(ident)
        for snapshot in self._latest_snapshots(missing):
            found[UUID(str(snapshot.originator_id))] = self.app.mapper.to_domain_event(snapshot).mutate(None)  # type: ignore[attr-defined]
        for stored in self._select_events_after([(i, found[i].version if i in found else 0) for i in ids]):
            ident = stored.originator_id if isinstance(stored.originator_id, UUID) else UUID(stored.originator_id)
            aggregate = found.get(ident)
            if aggregate is None and stored.originator_version == 1:
                found[ident] = self.app.mapper.to_domain_event(stored).mutate(None)  # type: ignore[attr-defined]
            elif aggregate is not None and stored.originator_version == aggregate.version + 1:
                self.app.mapper.to_domain_event(stored).mutate(aggregate)  # type: ignore[attr-defined]
        for ident in missing:
            if ident in found:
                cache.put(ident, found[ident])
        return found

    def _latest_snapshots(self, ids: list[UUID]) -> list[StoredEvent]:
        if not ids or self.app.snapshots is None:
            return []
        recorder: Any = self.app.snapshots.recorder
        table = self._qualified(recorder.events_table_name)
        if self.config.kind == "sqlite":
            marks = ",".join("?" * len(ids))
            newest = f"SELECT MAX(originator_version) FROM {table} x WHERE x.originator_id = s.originator_id"
            sql = f"SELECT * FROM {table} s WHERE originator_id IN ({marks}) AND originator_version = ({newest})"
            return self._stored(recorder, sql, [i.hex for i in ids])
        # A LATERAL lookup per id, for the same reason as in _select_events_after: use the index
        # (LIMIT keeps it from being flattened).
        newest_row = f"SELECT * FROM {table} x WHERE x.originator_id = v.id ORDER BY x.originator_version DESC LIMIT 1"
        sql = f"SELECT s.* FROM unnest(%s::uuid[]) AS v(id) CROSS JOIN LATERAL ({newest_row}) s"
        return self._stored(recorder, sql, [ids])

    def _qualified(self, table: str) -> str:
        return table if self.config.kind == "sqlite" else f'"{self.config.schema_name}"."{table}"'

    def _stored(self, recorder: Any, sql: str, params: list[Any]) -> list[StoredEvent]:
        """Run a SELECT of stored-event rows with the recorder's own connections."""
        if self.config.kind == "sqlite":
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(sql, params)
                return [
                    StoredEvent(UUID(r["originator_id"]), r["originator_version"], r["topic"], r["state"])
                    for r in cursor.fetchall()
                ]
        with recorder.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as cursor:
            # Without statistics the planner's cost estimate for these lookups is huge, and
            # compiling the plan (JIT) would take far longer than running it.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(sql, params)
            return [
                StoredEvent(r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
                for r in cursor.fetchall()
            ]

    def _select_events_after(self, versions: list[tuple[UUID, int]], chunk: int = 500) -> list[StoredEvent]:
        """Every event of these aggregates after the given versions, in order."""
        recorder: Any = self.app.recorder
        table = self._qualified(recorder.events_table_name)
        columns = "e.originator_id, e.originator_version, e.topic, e.state"
        order = "ORDER BY e.originator_id, e.originator_version"
        out: list[StoredEvent] = []
        for start in range(0, len(versions), chunk):
            part = versions[start : start + chunk]
            if self.config.kind == "sqlite":
                values = ",".join("(?, ?)" for _ in part)
                join = f"JOIN (VALUES {values}) v ON e.originator_id = v.column1 AND e.originator_version > v.column2"
                sql = f"SELECT {columns} FROM {table} e {join} {order}"
                params: list[Any] = [x for i, v in part for x in (i.hex, v)]
            else:
                # A LATERAL lookup per id pins the planner to the primary-key index; OFFSET 0 keeps
                # PostgreSQL from flattening it into a plain join. A plain join lets the planner
                # pick a hash or merge join over the whole table (it does on a table without
                # statistics: freshly written, autovacuum off), so recovery would cost as much as
                # the history is long rather than as much as is in flight.
                lookup = (
                    f"SELECT * FROM {table} x WHERE x.originator_id = v.id AND x.originator_version > v.ver OFFSET 0"
                )
                sql = (
                    f"SELECT {columns} FROM unnest(%s::uuid[], %s::bigint[]) AS v(id, ver) "
                    f"CROSS JOIN LATERAL ({lookup}) e {order}"
                )
                params = [[i for i, _ in part], [v for _, v in part]]
            out += self._stored(recorder, sql, params)
        return out

    def load_commands(self, ids: Sequence[UUID], chunk: int = 500) -> list[RootCommand]:
        """Replay many commands with one query per chunk (recovery loads everything in flight)."""
        out: list[RootCommand] = []
        for start in range(0, len(ids), chunk):
            out += self._replay_commands(self._select_events_of(list(ids[start : start + chunk])))
        return out

    def _replay_commands(self, stored: list[StoredEvent]) -> list[RootCommand]:
        out: list[RootCommand] = []
        if stored:
            by_id: dict[UUID, list[StoredEvent]] = {}
            for event in stored:
                ident = event.originator_id if isinstance(event.originator_id, UUID) else UUID(event.originator_id)
                by_id.setdefault(ident, []).append(event)
            for events in by_id.values():
                command: Any = None
                for stored_event in events:
                    command = self.app.mapper.to_domain_event(stored_event).mutate(command)  # type: ignore[attr-defined]
                if isinstance(command, RootCommand):
                    out.append(command)
        return out

    def _select_events_of(self, ids: list[UUID]) -> list[StoredEvent]:
        return self._select_events_after([(i, 0) for i in ids])

    def request_cancel(self, command_id: UUID | str, reason: str = "cancelled by user") -> RootCommand:
        for _ in range(ACCEPT_ATTEMPTS):
            command = self.command(command_id)
            if command.ended:
                raise CommandRefusedError(f"command {command.id} has already ended ({command.status.value})")
            command.request_cancel(reason)
            try:
                self.save(command)
            except IntegrityError:
                self.forget([command.id])  # the cached copy holds the unsaved change: read afresh
                continue
            return command
        raise CommandRefusedError("the command kept changing; try again")

    # ---- inventory -------------------------------------------------------------------------

    def entity(self, ref: EntityRef) -> InventoryEntity | None:
        return InventoryUnit(self).get(ref)

    def entity_ids(self) -> Iterator[UUID]:
        position = 0
        topics = registered_topics()
        while True:
            page = self.app.recorder.select_notifications(
                start=position, limit=1000, topics=topics, inclusive_of_start=False
            )
            for n in page:
                yield UUID(str(n.originator_id))
            if len(page) < 1000:
                return
            position = page[-1].id

    def inventory(self) -> list[InventoryEntity]:
        out = []
        for ident in dict.fromkeys(self.entity_ids()):
            entity: object = self.app.repository.get(ident)
            assert isinstance(entity, InventoryEntity)
            out.append(entity)
        return out

    def seed(self, vms: int, disks: int, status: str = "up") -> SeedResult:
        """Create storage domains, VMs and their disks, here and on the simulated agent."""
        existing = {e.ref: e for e in self.inventory()}
        taken = [int(ref.id.split("-")[1]) for ref in existing if ref.type is EntityType.VM and ref.id[3:].isdigit()]
        start = max(taken, default=0) + 1
        new: list[InventoryEntity] = []
        for sd in SEED_DOMAINS:
            if EntityRef(EntityType.STORAGE_DOMAIN, sd) not in existing:
                new.append(StorageDomain.register(sd, name=sd, status="active"))
        seeded: list[SeededVm] = []
        volumes: list[tuple[str, str, str]] = []
        for n in range(start, start + vms):
            vm_id = f"vm-{n:04d}"
            disk_ids = [f"disk-{n:04d}-{k}" for k in range(1, disks + 1)]
            for k, disk_id in enumerate(disk_ids, start=1):
                image, volume = f"img-{n:04d}-{k}", f"vol-{n:04d}-{k}-base"
                new.append(
                    Disk.register(disk_id, vm_id=vm_id, storage_domain_id="sd-1", image_id=image, volumes=[volume])
                )
                volumes.append(("sd-1", image, volume))
            new.append(Vm.register(vm_id, name=vm_id, status=status, disk_ids=disk_ids))
            seeded.append(SeededVm(vm_id=vm_id, disk_ids=disk_ids))
        agent = self.open_agent()
        try:
            agent.backend.seed_storage(SEED_DOMAINS, volumes)  # the agent first: it is the truth
        finally:
            agent.close()
        for start in range(0, len(new), SEED_BATCH):  # one huge insert can hang the PostgreSQL driver
            self.save(*new[start : start + SEED_BATCH])
        return SeedResult(storage_domains=list(SEED_DOMAINS), vms=seeded)
