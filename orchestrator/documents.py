"""The documented answers of the entry points: what `--json` prints (and what the HTTP API answers).

Field names are stable. Times are UTC ISO 8601; ids are strings (command ids
are UUIDs). Each model says which command prints it. Every document a command
prints carries `format`, "orchestrator.<kind>/<version>": a version changes
only when a field is removed or changes meaning (added fields keep it). A
command that prints a list carries it in each item. `orchestrator schema
COMMAND` prints the JSON Schema of a command's output (docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from orchestrator.domain.commands import RootCommand, TaskState
from orchestrator.domain.inventory import Disk, InventoryEntity, Snapshot, StorageDomain, Template, Vm
from orchestrator.store.event_store import writer_of


class Document(BaseModel):
    """Base of the documents: each is built when first used, not at import (a command uses one or two)."""

    model_config = ConfigDict(defer_build=True)


class EntityView(Document):
    type: str
    id: str
    mode: str = Field(description="read (shared lock) or write (exclusive lock)")


class TaskView(Document):
    task_id: str = Field(description="engine task id, known before the agent is called")
    child_id: str
    verb: str
    args: dict[str, Any]
    agent_task_id: str | None = Field(description="the agent's id; null until the agent accepted the task")
    status: str = Field(description="planned | running | succeeded | failed")
    end_kind: str | None = Field(description="finished | refused | not_submitted | vanished | zombie | stopped")
    message: str
    orphan: bool = Field(description="found on the agent by key during recovery")
    stop_reason: str | None = Field(None, description="why the engine stops it: zombie, cancelled, terminated")
    cleared: bool = Field(description="cleared on the agent, or never there")
    entities: list[EntityView]
    submitted_at: datetime | None
    ended_at: datetime | None

    @classmethod
    def of(cls, task: TaskState) -> TaskView:
        return cls(
            task_id=task.task_id,
            child_id=task.child_id,
            verb=task.verb,
            args=task.args,
            agent_task_id=task.agent_task_id,
            status=task.status.value,
            end_kind=task.end_kind.value if task.end_kind else None,
            message=task.message,
            orphan=task.orphan,
            stop_reason=task.stop_reason,
            cleared=task.cleared,
            entities=[EntityView(type=e.ref.type.value, id=e.ref.id, mode=e.mode.value) for e in task.entities],
            submitted_at=task.submitted_at,
            ended_at=task.ended_at,
        )


class ChildView(Document):
    child_id: str
    command_type: str
    outcome: str | None
    task_ids: list[str]


class RecoveryView(Document):
    at: datetime
    verdict: str
    reason: str


class HistoryEntry(Document):
    """One event of a command's history, and who wrote it."""

    version: int = Field(description="the event's number in the command's history, from 1")
    at: datetime
    event: str = Field(description="its kind: Accepted, TasksSubmitted, ..., Ended, TasksCleared")
    phase: str | None = Field(description="what wrote it: client (submit, cancel), submit, poll, recovery, ...")
    engine: str | None = Field(description="the engine that wrote it (host:pid:id); null for a user's call")
    epoch: int | None = Field(description="that engine's lease epoch of the pool (a fencing token); null if none")

    @classmethod
    def of(cls, event: Any) -> HistoryEntry:
        writer = writer_of(event)
        epoch = writer.get("epoch")
        return cls(
            version=event.originator_version,
            at=event.timestamp,
            event=type(event).__name__,
            phase=writer.get("phase"),
            engine=writer.get("engine"),
            epoch=epoch if isinstance(epoch, int) else None,
        )


class CommandView(Document):
    """`show --json`: a root command, its children and every task they expect."""

    format: Literal["orchestrator.command/1"] = "orchestrator.command/1"
    command_id: str
    flow: str
    pool_id: str = Field("default", description="the storage pool whose agent runs its tasks")
    summary: str
    params: dict[str, Any]
    status: str = Field(description="accepted | running | ending | succeeded | failed")
    in_flight: bool = Field(description="not ended, or ended with tasks still to clear on the agent")
    reason: str = Field(description="why it ended as it did (or why it will fail)")
    flagged: bool = Field(description="an end action gave up; look at this command")
    cancel_requested: bool
    cancel_reason: str | None = None
    terminated: bool = Field(False, description="an operator ended it at once ('orchestrator terminate')")
    terminate_reason: str | None = None
    retry_of: str | None = Field(None, description="the command this one retries ('orchestrator retry')")
    retries: list[str] = Field([], description="the commands accepted to retry this one, oldest first")
    accepted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    version: int = Field(description="number of events in its history")
    entities: list[EntityView]
    children: list[ChildView]
    tasks: list[TaskView]
    reverted_tasks: list[str]
    recoveries: list[RecoveryView]
    history: list[HistoryEntry] = Field(
        [], description="its events up to this version, each with its writer (empty where not asked for)"
    )

    @classmethod
    def of(cls, command: RootCommand, events: Sequence[Any] = ()) -> CommandView:
        """The command's view; with its stored events, its history too (those up to its version)."""
        return cls(
            history=[HistoryEntry.of(e) for e in events if e.originator_version <= command.version],
            command_id=str(command.id),
            flow=command.flow,
            pool_id=command.pool_id,
            summary=command.summary,
            params=command.params,
            status=command.status.value,
            in_flight=command.in_flight,
            reason=command.outcome_reason or (command.failure_summary() if command.failure_reason else ""),
            flagged=command.flagged,
            cancel_requested=command.cancel_reason is not None,
            cancel_reason=command.cancel_reason,
            terminated=command.terminate_reason is not None,
            terminate_reason=command.terminate_reason,
            retry_of=command.retry_of,
            retries=list(command.retries),
            accepted_at=command.accepted_at,
            started_at=command.started_at,
            ended_at=command.ended_at,
            version=command.version,
            entities=[EntityView(type=e.ref.type.value, id=e.ref.id, mode=e.mode.value) for e in command.entities],
            children=[
                ChildView(child_id=c.child_id, command_type=c.command_type, outcome=c.outcome, task_ids=c.task_ids)
                for c in command.children.values()
            ],
            tasks=[TaskView.of(t) for t in command.tasks.values()],
            reverted_tasks=command.reverted,
            recoveries=[RecoveryView(at=at, verdict=v, reason=r) for at, v, r in command.recoveries],
        )


class EntityLock(Document):
    """One entity lock held by one command."""

    entity_type: str
    entity_id: str
    command_id: str
    command_type: str
    mode: str = Field(description="read (shared) or write (exclusive)")

    @classmethod
    def all_of(cls: type[L], entities: list[InventoryEntity]) -> list[L]:
        return [
            cls(
                entity_type=e.ref.type.value,
                entity_id=e.entity_id,
                command_id=holder,
                command_type=lock["command_type"],
                mode=lock["mode"],
            )
            for e in entities
            for holder, lock in sorted(e.locks.items())
        ]


L = TypeVar("L", bound=EntityLock)


class LockView(EntityLock):
    """`locks --json` (a list of these): one entity lock held by one command."""

    format: Literal["orchestrator.lock/1"] = "orchestrator.lock/1"


class InventoryItemView(Document):
    """`inventory --json` (a list of these): one inventory entity, its state and its locks."""

    format: Literal["orchestrator.inventory-item/1"] = "orchestrator.inventory-item/1"
    type: str
    id: str
    removed: bool
    status: str | None
    details: dict[str, Any]
    locks: list[EntityLock]

    @classmethod
    def of(cls, e: InventoryEntity) -> InventoryItemView:
        status, details = _state_of(e)
        return cls(
            type=e.ref.type.value, id=e.entity_id, removed=e.removed, status=status, details=details,
            locks=EntityLock.all_of([e]),
        )  # fmt: skip


def _state_of(e: InventoryEntity) -> tuple[str | None, dict[str, Any]]:
    if isinstance(e, Vm):
        return e.status, {"disks": e.disk_ids, "memory_volumes": e.memory_volumes, "snapshots": e.snapshot_ids}
    if isinstance(e, Disk):
        return None, {"vm": e.vm_id, "storage_domain": e.storage_domain_id, "image": e.image_id, "volumes": e.volumes}
    if isinstance(e, Template):
        return e.status, {"name": e.name, "source_vm": e.source_vm_id, "images": e.images}
    if isinstance(e, Snapshot):
        return e.status, {"vm": e.vm_id, "description": e.description, "volumes": e.volumes}
    if isinstance(e, StorageDomain):
        return e.status, {}
    return None, {}


class FlowView(Document):
    """`flows --json` (a list of these): a flow and the JSON schema of its parameters."""

    format: Literal["orchestrator.flow/1"] = "orchestrator.flow/1"
    name: str
    description: str
    parameters: dict[str, Any]


class WaitedCommand(Document):
    """One command `wait` waited for, as it was when the wait ended."""

    command_id: str
    flow: str
    status: str = Field(description="accepted | running | ending | succeeded | failed")
    ended: bool
    reason: str = Field(description="why it ended as it did")
    flagged: bool
    tasks: int
    tasks_ended: int


class WaitReport(Document):
    """`wait --json`: how the commands waited for ended (the exit code says the same)."""

    format: Literal["orchestrator.wait/1"] = "orchestrator.wait/1"
    outcome: Literal["succeeded", "failed", "timeout"] = Field(
        description="succeeded: all did (exit 0); failed: one or more failed (exit 11); "
        "timeout: none failed, one or more had not ended (exit 9)"
    )
    seconds: float
    commands: list[WaitedCommand]


class SubmitAndWaitReport(Document):
    """`submit --wait --json`: the accepted command, then how it ended."""

    format: Literal["orchestrator.submit-wait/1"] = "orchestrator.submit-wait/1"
    submitted: dict[str, Any] = Field(description="what `submit --json` prints (orchestrator.submit/1)")
    wait: WaitReport


class SubmitManyLine(Document):
    """One line of a `submit-many` file: the command it became, or why it was refused."""

    line: int = Field(description="1-based line number in the file")
    accepted: bool
    command_id: str | None
    flow: str | None
    summary: str | None = None
    duplicate: bool = False
    error: str | None = Field(None, description="why the line was refused (one line)")
    exit_code: int | None = Field(None, description="the exit code `submit` would give for this error")


class SubmitManyReport(Document):
    """`submit-many --json`: one entry per non-blank line of the file, in order."""

    format: Literal["orchestrator.submit-many/1"] = "orchestrator.submit-many/1"
    accepted: int
    refused: int
    lines: list[SubmitManyLine]


class RunReport(Document):
    """`run --json`: how the engine run ended (printed when it stops)."""

    format: Literal["orchestrator.run/1"] = "orchestrator.run/1"
    stopped_by: Literal["idle", "signal"] = Field(description="idle: --until-idle found nothing in flight")
    signal: str | None = Field(description="SIGINT or SIGTERM, when a signal stopped it")
    seconds: float


class DemoReport(Document):
    """`demo --json`: whether the demo showed what it should (the tables go to stderr)."""

    format: Literal["orchestrator.demo/1"] = "orchestrator.demo/1"
    ok: bool
    store: str = Field(description="store URL, password hidden")
    directory: str = Field(description="where the demo kept its files")
    kept: bool


M = TypeVar("M", bound=BaseModel)


@cache
def versioned(model: type[M], kind: str) -> type[M]:
    """`model` (an answer defined elsewhere: the inspection's, the seed's) with its `format` field."""
    tag = f"orchestrator.{kind}/1"
    fields: Any = {"format": (Literal[tag], tag)}  # type: ignore[valid-type]
    made: type[M] = create_model(f"{model.__name__}Document", __base__=model, __doc__=model.__doc__, **fields)
    return made


def as_document(answer: M, kind: str) -> M:
    """An answer defined elsewhere, as the versioned document a command prints."""
    document: M = versioned(type(answer), kind).model_validate(answer.model_dump())
    return document
