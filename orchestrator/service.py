"""The service layer: accepting, cancelling and reading commands over the event store.

`CommandService` accepts commands (validation, entity locks and every expected
task in one transaction), records cancels, and reads commands and the
inventory back. It knows neither the agents nor the read models: the
composition root (orchestrator/bootstrap.py) hands it what validation asks of
the read models (`running_tasks_on`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic
from pydantic import BaseModel

from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import ENTITY_CLASSES, InventoryEntity
from orchestrator.domain.model import EntityRef
from orchestrator.errors import (
    CommandRefusedError,
    DuplicateCommandError,
    EntityLockedError,
    NotFoundError,
    OrchestratorError,
)
from orchestrator.flows import get_flow
from orchestrator.flows.base import Flow, FlowParams, PlanContext
from orchestrator.store import EventStore, StoreConfig
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator")
ACCEPT_ATTEMPTS = 20
CLIENT_STAMP = {"phase": "client"}  # events written by a user's call (submit, cancel), not by an engine
SUBMIT_MANY_BATCH = 500  # commands per transaction in submit_many
RunningTasksLookup = Callable[[EntityRef], list[str]]


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


class CancelResult(BaseModel):
    """The answer to `cancel`."""

    command_id: UUID
    requested: bool  # False: a cancel had already been requested
    reason: str  # the reason on record


class CommandService:
    """Commands in and out of one store."""

    def __init__(self, config: StoreConfig, store: EventStore, running_tasks_on: RunningTasksLookup) -> None:
        self.config = config
        self.store = store
        self._running_tasks_on = running_tasks_on

    def save(self, *aggregates: Any) -> None:
        """Record aggregates' pending events as a user's call does (stamped as the client's)."""
        self.store.save(*aggregates, stamp=CLIENT_STAMP)

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
            unit = InventoryUnit(self.store)
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
            unit = InventoryUnit(self.store)
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
            self.store.forget(e.id for e in unit.entities.values())
            return False
        except BaseException:
            self.store.forget(e.id for e in unit.entities.values())
            raise
        return True

    def _existing_command(self, command_id: UUID) -> RootCommand | None:
        command = self.store.get(command_id)
        if command is None:
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

    def command(self, command_id: UUID | str, version: int | None = None) -> RootCommand:
        try:
            ident = command_id if isinstance(command_id, UUID) else UUID(str(command_id))
        except ValueError:
            raise NotFoundError(f"{command_id!r} is not a command id (a UUID)") from None
        command = self.store.get(ident, version=version)
        if command is None:
            raise NotFoundError(f"no command {ident} in {self.config.redacted}")
        if not isinstance(command, RootCommand):
            raise NotFoundError(f"{ident} is not a command")
        return command

    def request_cancel(self, command_id: UUID | str, reason: str = "cancelled by user") -> CancelResult:
        """Record a cancel (refused once the command's end action has begun, or it has ended)."""
        for _ in range(ACCEPT_ATTEMPTS):
            command = self.command(command_id)
            try:
                recorded = command.request_cancel(reason)
                if recorded:
                    self.save(command)
            except IntegrityError:
                self.store.forget([command.id])  # the cached copy holds the unsaved change: read afresh
                continue
            except BaseException:
                self.store.forget([command.id])
                raise
            assert command.cancel_reason is not None
            return CancelResult(command_id=command.id, requested=recorded, reason=command.cancel_reason)
        raise CommandRefusedError("the command kept changing; try again")

    # ---- inventory -------------------------------------------------------------------------

    def entity(self, ref: EntityRef) -> InventoryEntity | None:
        return InventoryUnit(self.store).get(ref)

    def entity_ids(self) -> Iterator[UUID]:
        return self.store.originators(registered_topics())

    def inventory(self) -> list[InventoryEntity]:
        ids = list(dict.fromkeys(self.entity_ids()))
        loaded = self.store.load_aggregates(ids)
        return [loaded[i] for i in ids if isinstance(loaded.get(i), InventoryEntity)]


def registered_topics() -> list[str]:
    return [get_topic(cls.Registered) for cls in ENTITY_CLASSES.values()]
