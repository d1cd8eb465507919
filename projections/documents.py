"""The documented answers about the read models: what `list`, `tasks`, `entities`, `active` and
`projections ...` print with --json (and what the HTTP API answers).

Every answer read from a read model says how far behind the log it may be (`freshness`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from projections.queries import ActiveTaskRow, CommandRow, EntityTaskRow, ViewFreshness


class CommandListView(BaseModel):
    """`list --json`: commands from the commands read model."""

    freshness: ViewFreshness
    commands: list[CommandRow]


class EntityTasksView(BaseModel):
    """`tasks --json`: tasks on one entity (from the entity -> task index)."""

    entity_type: str
    entity_id: str
    has_running_tasks: bool
    freshness: ViewFreshness
    tasks: list[EntityTaskRow]


class TaskEntitiesView(BaseModel):
    """`entities --json`: the entities one task touches."""

    task_id: str
    freshness: ViewFreshness
    entities: list[EntityTaskRow]


class ActiveTasksView(BaseModel):
    """`active --json`: every task not yet cleared on the agent (the seed's async_tasks)."""

    freshness: ViewFreshness
    tasks: list[ActiveTaskRow]


class ProjectionStatusView(BaseModel):
    """`projections status --json`: one read model's position in the log."""

    name: str
    position: int
    head: int
    lag: int


class ProjectionRebuildView(BaseModel):
    """`projections rebuild --json`: one rebuilt and swapped-in read model."""

    name: str
    events: int
    seconds: float
    events_per_second: float


class ProjectionCheckView(BaseModel):
    """`projections rebuild --verify --json`: a fresh build compared with the live view."""

    name: str
    position: int = Field(description="the log position both were compared at")
    ok: bool
    differences: list[str]
