"""The service layer: accepting, cancelling, terminating, retrying and reading commands over the event store.

`CommandService` accepts commands (validation, entity locks and every expected
task in one transaction), records cancels, terminations (the command fails at
once and its locks go, in one transaction) and retries (a new command linked
to the one it retries, in one transaction), and reads commands and the
inventory back. It logs one line for each command accepted, cancelled,
terminated or retried (fields: event, command_id, flow). It knows neither the agents nor the read models: the
composition root (orchestrator/bootstrap/) hands it what validation asks of
the read models (`running_tasks_on`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic
from pydantic import BaseModel

from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import ENTITY_CLASSES, InventoryEntity, StorageDomain
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType, EntityUse
from orchestrator.errors import (
    CommandRefusedError,
    DuplicateCommandError,
    EntityLockedError,
    InputError,
    NotFoundError,
    OrchestratorError,
)
from orchestrator.flows import get_flow
from orchestrator.flows.base import Flow, FlowParams, PlanContext, check_user_text
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

    format: Literal["orchestrator.submit/1"] = "orchestrator.submit/1"
    command_id: UUID
    flow: str
    summary: str
    tasks: int
    duplicate: bool


class CancelResult(BaseModel):
    """The answer to `cancel`."""

    format: Literal["orchestrator.cancel/1"] = "orchestrator.cancel/1"
    command_id: UUID
    requested: bool  # False: a cancel had already been requested
    reason: str  # the reason on record


class RetryResult(BaseModel):
    """The answer to `retry`: the new command, which does the work of the one it retries."""

    format: Literal["orchestrator.retry/1"] = "orchestrator.retry/1"
    command_id: UUID  # the new command
    retry_of: UUID
    flow: str
    summary: str
    tasks: int


class TerminateResult(BaseModel):
    """The answer to `terminate`: the command failed at once; its locks are released."""

    format: Literal["orchestrator.terminate/1"] = "orchestrator.terminate/1"
    command_id: UUID
    reason: str
    terminated_tasks: list[str]  # every task not yet ended, now ended as terminated by the operator
    to_stop: list[str]  # of those, the ones the agent had: stopped and cleared if it comes back
    released_locks: list[str]  # TYPE:ID of every entity whose lock the command held


class CommandService:
    """Commands in and out of one store."""

    def __init__(self, config: StoreConfig, store: EventStore, running_tasks_on: RunningTasksLookup) -> None:
        self.config = config
        self.store = store
        self._running_tasks_on = running_tasks_on

    # Told how many aggregates each save recorded (a long seed shows its progress with it).
    on_saved: Callable[[int], None] | None = None

    def save(self, *aggregates: Any, reads: Mapping[UUID, int] | None = None) -> None:
        """Record aggregates' pending events as a user's call does (stamped as the client's)."""
        self.store.save(*aggregates, stamp=CLIENT_STAMP, reads=reads)
        if self.on_saved is not None:
            self.on_saved(len(aggregates))

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
            unit = InventoryUnit(self.store, optimistic=True)
            try:
                result = self._accept_into(unit, flow, parsed, command_id)
            except OrchestratorError:
                if not unit.unverified:
                    raise
                self.store.forget(unit.ids())  # refused on cached copies: decide again on fresh ones
                continue
            if self._save_unit(result.commands, unit):
                crash_point("after_accept")
                accepted = result.results[0]
                assert isinstance(accepted, SubmitResult)
                _log_accepted(accepted)
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
        optimistic = True
        for _ in range(ACCEPT_ATTEMPTS):
            unit = InventoryUnit(self.store, optimistic=optimistic)
            batch = _Accepted()
            for flow_name, params in requests:
                try:
                    flow = get_flow(flow_name)
                    batch.extend(self._accept_into(unit, flow, flow.parse_params(params), uuid4()))
                except OrchestratorError as exc:
                    batch.results.append(exc)
            if unit.unverified and any(isinstance(r, OrchestratorError) for r in batch.results):
                self.store.forget(unit.ids())  # refused on cached copies: decide again on fresh ones
                optimistic = False
                continue
            if self._save_unit(batch.commands, unit):
                if batch.commands:
                    crash_point("after_accept")
                for answer in batch.results:
                    if isinstance(answer, SubmitResult):
                        _log_accepted(answer)
                return batch.results
        raise CommandRefusedError("the entities of these commands kept changing under them; try again")

    def _accept_into(
        self, unit: InventoryUnit, flow: Flow, parsed: FlowParams, command_id: UUID, retry_of: UUID | None = None
    ) -> _Accepted:
        """Plan one command into a unit of work: validation, new entities, locks. Records nothing."""
        plan = flow.plan(PlanContext(command_id, unit, self._running_tasks_on), parsed)
        for entity in plan.new_entities:
            unit.add(entity)
        try:
            self._check_locks(plan.entities, unit, str(command_id))
            pool_id = pool_of(plan.entities, unit)
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
            pool_id=pool_id,
            retry_of=retry_of,
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
            self.save(*commands, *unit.touched(), reads=unit.reads())
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
        reason = check_user_text(reason.strip() or "cancelled by user", "the cancel reason")
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
            if recorded:
                _log_event("cancel requested", "cancel_requested", command, reason=reason)
            return CancelResult(command_id=command.id, requested=recorded, reason=command.cancel_reason)
        raise CommandRefusedError("the command kept changing; try again")

    def terminate(self, command_id: UUID | str, reason: str) -> TerminateResult:
        """End a command at once, failed and flagged, when its agent is gone for good.

        Every task not yet ended is marked terminated by the operator, and every entity
        lock the command holds is released, in one transaction; the tasks the agent had
        are stopped and cleared by the engine if the agent comes back. Refused once the
        command has ended.
        """
        reason = check_user_text(reason.strip(), "the terminate reason")
        if not reason:
            raise InputError("give a reason to terminate a command (--reason TEXT): it is kept in its history")
        for _ in range(ACCEPT_ATTEMPTS):
            command = self.command(command_id)
            unit = InventoryUnit(self.store)
            try:
                unfinished = [t for t in command.tasks.values() if not t.ended]
                command.terminate(reason)
                released = [use.ref.key for use in command.entities if _holds_lock(unit, use.ref, command)]
                unit.release_locks(command)
                self.save(command, *unit.touched())
            except IntegrityError:  # the engine (or another operator) changed it meanwhile: read afresh
                self.store.forget([command.id, *unit.ids()])
                continue
            except BaseException:
                self.store.forget([command.id, *unit.ids()])
                raise
            _log_event("command terminated", "terminated", command, reason=reason)
            return TerminateResult(
                command_id=command.id,
                reason=reason,
                terminated_tasks=[t.task_id for t in unfinished],
                to_stop=[t.task_id for t in unfinished if t.agent_task_id],
                released_locks=released,
            )
        raise CommandRefusedError("the command kept changing; try again")

    def retry(self, command_id: UUID | str) -> RetryResult:
        """Accept a new command with the flow and parameters of an ended one, linked both ways.

        The new command's `Accepted` names the one it retries (`retry_of`) and the original
        records `RetriedAs`, in the transaction that accepts the new one. Refused while the
        original is in flight (a terminated command may be retried at once: its locks are gone).
        """
        for _ in range(ACCEPT_ATTEMPTS):
            original = self.command(command_id)
            _refuse_retry_in_flight(original)
            flow = get_flow(original.flow)
            unit = InventoryUnit(self.store)
            new_id = uuid4()
            try:
                accepted = self._accept_into(unit, flow, flow.parse_params(original.params), new_id, original.id)
                original.record_retry(new_id)
                saved = self._save_unit([*accepted.commands, original], unit)
            except BaseException:
                self.store.forget([original.id])
                raise
            if not saved:
                self.store.forget([original.id])
                continue
            crash_point("after_accept")
            result = accepted.results[0]
            assert isinstance(result, SubmitResult)
            _log_accepted(result)
            _log_event("command retried", "retried", original, retried_as=str(new_id))
            return RetryResult(
                command_id=new_id, retry_of=original.id, flow=flow.name, summary=result.summary, tasks=result.tasks
            )
        raise CommandRefusedError("the entities of this command kept changing under it; try again")

    # ---- inventory -------------------------------------------------------------------------

    def entity(self, ref: EntityRef) -> InventoryEntity | None:
        return InventoryUnit(self.store).get(ref)

    def entity_ids(self) -> Iterator[UUID]:
        return self.store.originators(registered_topics())

    def inventory(self) -> list[InventoryEntity]:
        ids = list(dict.fromkeys(self.entity_ids()))
        loaded = self.store.load_aggregates(ids)
        return [loaded[i] for i in ids if isinstance(loaded.get(i), InventoryEntity)]


def _refuse_retry_in_flight(command: RootCommand) -> None:
    if not command.ended:
        raise CommandRefusedError(
            f"command {command.id} is still {command.status.value}; retry it once it has ended "
            "(or cancel it, or terminate it if its agent is gone for good)"
        )
    if command.uncleared_tasks and command.terminate_reason is None:
        raise CommandRefusedError(
            f"command {command.id} has ended but its tasks are still being cleared on the agent; try again shortly"
        )


def _holds_lock(unit: InventoryUnit, ref: EntityRef, command: RootCommand) -> bool:
    entity = unit.get(ref)
    return entity is not None and str(command.id) in entity.locks


def _log_accepted(result: SubmitResult) -> None:
    log.info(
        "accepted %s command %s (%d task(s))",
        result.flow,
        result.command_id,
        result.tasks,
        extra={"event": "accepted", "command_id": str(result.command_id), "flow": result.flow},
    )


def _log_event(message: str, event: str, command: RootCommand, **fields: str) -> None:
    log.info(
        "%s: %s command %s",
        message,
        command.flow,
        command.id,
        extra={"event": event, "command_id": str(command.id), "flow": command.flow, **fields},
    )


def registered_topics() -> list[str]:
    return [get_topic(cls.Registered) for cls in ENTITY_CLASSES.values()]


def pool_of(uses: Sequence[EntityUse], unit: InventoryUnit) -> str:
    """The storage pool a command runs in: its storage domains' (one pool; the default without any)."""
    pools = set()
    for use in uses:
        domain = unit.get(use.ref) if use.ref.type is EntityType.STORAGE_DOMAIN else None
        if isinstance(domain, StorageDomain):
            pools.add(domain.pool_id)
    if len(pools) > 1:
        raise CommandRefusedError(
            f"its storage domains belong to the pools {', '.join(sorted(pools))}; a command runs in one pool"
        )
    return pools.pop() if pools else DEFAULT_POOL
