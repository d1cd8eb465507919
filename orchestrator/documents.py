"""The documented answers of the entry points: what `--json` prints (and what the HTTP API answers).

Field names are stable. Times are UTC ISO 8601; ids are strings (command ids
are UUIDs). Each model says which command prints it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.domain.commands import RootCommand, TaskState
from orchestrator.domain.inventory import Disk, InventoryEntity, Snapshot, StorageDomain, Template, Vm


class EntityView(BaseModel):
    type: str
    id: str
    mode: str = Field(description="read (shared lock) or write (exclusive lock)")


class TaskView(BaseModel):
    task_id: str = Field(description="engine task id, known before the agent is called")
    child_id: str
    verb: str
    args: dict[str, Any]
    agent_task_id: str | None = Field(description="the agent's id; null until the agent accepted the task")
    status: str = Field(description="planned | running | succeeded | failed")
    end_kind: str | None = Field(description="finished | refused | not_submitted | vanished | zombie | stopped")
    message: str
    orphan: bool = Field(description="found on the agent by key during recovery")
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
            cleared=task.cleared,
            entities=[EntityView(type=e.ref.type.value, id=e.ref.id, mode=e.mode.value) for e in task.entities],
            submitted_at=task.submitted_at,
            ended_at=task.ended_at,
        )


class ChildView(BaseModel):
    child_id: str
    command_type: str
    outcome: str | None
    task_ids: list[str]


class RecoveryView(BaseModel):
    at: datetime
    verdict: str
    reason: str


class CommandView(BaseModel):
    """A root command, its children and every task they expect."""

    command_id: str
    flow: str
    summary: str
    params: dict[str, Any]
    status: str = Field(description="accepted | running | ending | succeeded | failed")
    in_flight: bool = Field(description="not ended, or ended with tasks still to clear on the agent")
    reason: str = Field(description="why it ended as it did (or why it will fail)")
    flagged: bool = Field(description="an end action gave up; look at this command")
    cancel_requested: bool
    accepted_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    version: int = Field(description="number of events in its history")
    entities: list[EntityView]
    children: list[ChildView]
    tasks: list[TaskView]
    reverted_tasks: list[str]
    recoveries: list[RecoveryView]

    @classmethod
    def of(cls, command: RootCommand) -> CommandView:
        return cls(
            command_id=str(command.id),
            flow=command.flow,
            summary=command.summary,
            params=command.params,
            status=command.status.value,
            in_flight=command.in_flight,
            reason=command.outcome_reason or (command.failure_summary() if command.failure_reason else ""),
            flagged=command.flagged,
            cancel_requested=command.cancel_reason is not None,
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


class LockView(BaseModel):
    """`locks --json`: one entity lock held by one command."""

    entity_type: str
    entity_id: str
    command_id: str
    command_type: str
    mode: str = Field(description="read (shared) or write (exclusive)")

    @classmethod
    def all_of(cls, entities: list[InventoryEntity]) -> list[LockView]:
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


class InventoryItemView(BaseModel):
    """`inventory --json`: one inventory entity, its state and its locks."""

    type: str
    id: str
    removed: bool
    status: str | None
    details: dict[str, Any]
    locks: list[LockView]

    @classmethod
    def of(cls, e: InventoryEntity) -> InventoryItemView:
        status, details = _state_of(e)
        return cls(
            type=e.ref.type.value, id=e.entity_id, removed=e.removed, status=status, details=details,
            locks=LockView.all_of([e]),
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


class FlowView(BaseModel):
    """`flows --json`: a flow and the JSON schema of its parameters."""

    name: str
    description: str
    parameters: dict[str, Any]
