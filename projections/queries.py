"""Questions answered from the read models (guarantee G2 and the command list).

Every answer says how far behind the log it may be (`ViewFreshness`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from orchestrator.domain.model import EntityRef
from orchestrator.store.tables import Tables
from projections.read_models import IN_FLIGHT


class ViewFreshness(BaseModel):
    """How far a read model was behind the event log when it was read."""

    position: int
    head: int
    lag: int


class EntityTaskRow(BaseModel):
    entity_type: str
    entity_id: str
    task_id: str
    command_id: str
    root_command_id: str
    status: str
    read_only: bool
    agent_task_id: str | None


class ActiveTaskRow(BaseModel):
    task_id: str
    agent_task_id: str | None
    command_id: str
    root_command_id: str
    verb: str
    status: str
    started_at: datetime | None


class CommandRow(BaseModel):
    command_id: str
    root_command_id: str
    parent_id: str | None
    command_type: str
    status: str
    summary: str
    created_at: datetime
    ended_at: datetime | None
    outcome: str | None
    reason: str
    flagged: bool
    task_count: int
    uncleared_tasks: int

    @property
    def in_flight(self) -> bool:
        return self.status not in ("succeeded", "failed") or self.uncleared_tasks > 0


class ReadModelQueries:
    """Questions answered from the read models' tables."""

    def __init__(self, db: Tables) -> None:
        self.db = db

    def has_running_tasks(self, ref: EntityRef) -> bool:
        rows = self.db.query(
            "SELECT 1 FROM proj_entity_tasks WHERE entity_type = ? AND entity_id = ?"
            " AND status IN ('planned', 'running') LIMIT 1",
            (ref.type.value, ref.id),
        )
        return bool(rows)

    def tasks_for_entity(self, ref: EntityRef, *, running_only: bool = False) -> list[EntityTaskRow]:
        sql = "SELECT * FROM proj_entity_tasks WHERE entity_type = ? AND entity_id = ?"
        if running_only:
            sql += " AND status IN ('planned', 'running')"
        rows = self.db.query(sql + " ORDER BY root_command_id, task_id", (ref.type.value, ref.id))
        return [_entity_row(r) for r in rows]

    def entities_for_task(self, task_id: str) -> list[EntityTaskRow]:
        rows = self.db.query(
            "SELECT * FROM proj_entity_tasks WHERE task_id = ? ORDER BY entity_type, entity_id", (task_id,)
        )
        return [_entity_row(r) for r in rows]

    def active_tasks(self, root_command_id: str | None = None) -> list[ActiveTaskRow]:
        sql, params = "SELECT * FROM proj_active_tasks", tuple[str, ...]()
        if root_command_id:
            sql, params = sql + " WHERE root_command_id = ?", (root_command_id,)
        with self.db.read() as cur:
            cur.execute(sql + " ORDER BY root_command_id, task_id", params)
            return [
                ActiveTaskRow(
                    task_id=r[0],
                    agent_task_id=r[1],
                    command_id=r[2],
                    root_command_id=r[3],
                    verb=r[4],
                    status=r[5],
                    started_at=r[6],
                )
                for r in cur.fetchall()
            ]

    def list_commands(
        self,
        *,
        status: str | None = None,
        command_type: str | None = None,
        parent: str | None = None,
        entity: EntityRef | None = None,
        in_flight: bool = False,
        include_children: bool = False,
        limit: int = 1000,
    ) -> list[CommandRow]:
        where, params = [], []
        if status:
            where.append("c.status = ?")
            params.append(status)
        if command_type:
            where.append("c.command_type = ?")
            params.append(command_type)
        if parent:
            where.append("c.parent_id = ?")
            params.append(parent)
            include_children = True
        if entity:
            where.append(
                "c.command_id IN (SELECT command_id FROM proj_command_entities WHERE entity_type = ? AND entity_id = ?)"
            )
            params += [entity.type.value, entity.id]
        if in_flight:
            where.append(IN_FLIGHT)
        if not include_children:
            where.append("c.parent_id IS NULL")
        sql = "SELECT c.* FROM proj_commands c"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY c.created_at, c.command_id LIMIT ?"
        with self.db.read() as cur:
            cur.execute(sql, (*params, limit))
            return [_command_row(r) for r in cur.fetchall()]


def _entity_row(r: tuple[object, ...]) -> EntityTaskRow:
    return EntityTaskRow(
        entity_type=str(r[0]),
        entity_id=str(r[1]),
        task_id=str(r[2]),
        command_id=str(r[3]),
        root_command_id=str(r[4]),
        status=str(r[5]),
        read_only=bool(r[6]),
        agent_task_id=None if r[7] is None else str(r[7]),
    )


def _command_row(r: tuple[object, ...]) -> CommandRow:
    return CommandRow.model_validate(
        dict(
            zip(
                (
                    "command_id",
                    "root_command_id",
                    "parent_id",
                    "command_type",
                    "status",
                    "summary",
                    "created_at",
                    "ended_at",
                    "outcome",
                    "reason",
                    "flagged",
                    "task_count",
                    "uncleared_tasks",
                ),
                r,
                strict=True,
            )
        )
    )
