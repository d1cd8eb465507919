"""The documented answers about the read models: what `list`, `tasks`, `entities`, `active` and
`projections ...` print with --json (and what the HTTP API answers).

Every answer read from a read model says how far behind the log it may be (`freshness`).
Every document carries `format`, "orchestrator.<kind>/<version>" (see orchestrator/documents.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from projections.queries import ActiveTaskRow, CommandRow, EntityTaskRow, ViewFreshness


class CommandListView(BaseModel):
    """`list --json`: commands from the commands read model."""

    format: Literal["orchestrator.command-list/1"] = "orchestrator.command-list/1"
    freshness: ViewFreshness
    commands: list[CommandRow]


class EntityTasksView(BaseModel):
    """`tasks --json`: tasks on one entity (from the entity -> task index)."""

    format: Literal["orchestrator.entity-tasks/1"] = "orchestrator.entity-tasks/1"
    entity_type: str
    entity_id: str
    has_running_tasks: bool
    freshness: ViewFreshness
    tasks: list[EntityTaskRow]


class TaskEntitiesView(BaseModel):
    """`entities --json`: the entities one task touches."""

    format: Literal["orchestrator.task-entities/1"] = "orchestrator.task-entities/1"
    task_id: str
    freshness: ViewFreshness
    entities: list[EntityTaskRow]


class ActiveTasksView(BaseModel):
    """`active --json`: every task not yet cleared on the agent (the seed's async_tasks)."""

    format: Literal["orchestrator.active-tasks/1"] = "orchestrator.active-tasks/1"
    freshness: ViewFreshness
    tasks: list[ActiveTaskRow]


class ProjectionStatusView(BaseModel):
    """`projections status --json` (a list of these): one read model's position in the log."""

    format: Literal["orchestrator.projection-status/1"] = "orchestrator.projection-status/1"
    name: str
    position: int
    head: int
    lag: int


class ProjectionRebuildView(BaseModel):
    """`projections rebuild --json` (a list of these): one rebuilt and swapped-in read model."""

    format: Literal["orchestrator.projection-rebuild/1"] = "orchestrator.projection-rebuild/1"
    name: str
    events: int
    seconds: float
    events_per_second: float


class ProjectionCheckView(BaseModel):
    """`projections rebuild --verify --json` (a list of these): a fresh build compared with the live view."""

    format: Literal["orchestrator.projection-check/1"] = "orchestrator.projection-check/1"
    name: str
    position: int = Field(description="the log position both were compared at")
    ok: bool
    differences: list[str]


class ProjectionsRunReport(BaseModel):
    """`projections run --json`: how following the log ended (printed when it stops)."""

    format: Literal["orchestrator.projections-run/1"] = "orchestrator.projections-run/1"
    signal: str | None = Field(description="SIGINT or SIGTERM: what stopped it")
    seconds: float
    projections: list[ProjectionStatusView]
