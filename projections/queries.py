"""Questions answered from the read models (guarantee G2 and the command list).

Every answer says how far behind the log it may be (`ViewFreshness`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from orchestrator.domain.model import EntityRef
from orchestrator.errors import InputError
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

    # ---- the command line's questions (orchestrator/cli) ------------------------------------

    def command_ids_starting(self, prefix: str, *, roots_only: bool = True, limit: int = 11) -> list[str]:
        """Command ids that start with `prefix` (hex digits and '-'; the caller checks it), in order."""
        if not prefix or not all(c in "0123456789abcdef-" for c in prefix):
            return []
        sql = "SELECT command_id FROM proj_commands WHERE command_id LIKE ?"
        if roots_only:
            sql += " AND parent_id IS NULL"
        rows = self.db.query(sql + " ORDER BY command_id LIMIT ?", (prefix + "%", limit))
        return [str(r[0]) for r in rows]

    def command_types(self) -> list[str]:
        """Every command type (flow or child type) the commands read model has seen."""
        rows = self.db.query("SELECT DISTINCT command_type FROM proj_commands ORDER BY command_type")
        return [str(r[0]) for r in rows]

    def command_exists(self, command_id: str) -> bool:
        rows = self.db.query("SELECT 1 FROM proj_commands WHERE command_id = ? LIMIT 1", (command_id,))
        return bool(rows)

    # ---- the HTTP API's questions (orchestrator/api) -----------------------------------------

    def command_page(self, page: CommandPageQuery) -> list[CommandRow]:
        """One page of commands: filtered, sorted, after a keyset position or an offset."""
        where, params = page.where()
        column = f"COALESCE(c.{page.sort}, '')"  # sort is checked against SORTABLE_COLUMNS
        if page.after is not None:
            order_op = "<" if page.descending else ">"
            where.append(f"({column} {order_op} ? OR ({column} = ? AND c.command_id {order_op} ?))")
            params += [page.after[0], page.after[0], page.after[1]]
        direction = "DESC" if page.descending else "ASC"
        sql = "SELECT c.* FROM proj_commands c"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {column} {direction}, c.command_id {direction} LIMIT ? OFFSET ?"
        with self.db.read() as cur:
            cur.execute(sql, (*params, page.limit, page.offset))
            return [_command_row(r) for r in cur.fetchall()]

    def root_command_counts(self) -> list[tuple[str, str, int]]:
        """(flow, status, number) of root commands: what /metrics reports by flow and outcome."""
        rows = self.db.query(
            "SELECT command_type, status, COUNT(*) FROM proj_commands WHERE parent_id IS NULL"
            " GROUP BY command_type, status ORDER BY command_type, status"
        )
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def active_task_counts(self) -> list[tuple[str, int]]:
        """(status, number) of the tasks not yet cleared on the agent."""
        rows = self.db.query("SELECT status, COUNT(*) FROM proj_active_tasks GROUP BY status ORDER BY status")
        return [(str(r[0]), int(r[1])) for r in rows]

    def root_commands_alive_since(self, since: str) -> list[tuple[str, str | None]]:
        """(created_at, ended_at) of root commands not ended before `since` (ISO 8601): the in-flight chart."""
        rows = self.db.query(
            "SELECT created_at, ended_at FROM proj_commands WHERE parent_id IS NULL"
            " AND (ended_at IS NULL OR ended_at >= ?)",
            (since,),
        )
        return [(str(r[0]), None if r[1] is None else str(r[1])) for r in rows]


# Columns a page of commands may be sorted by (the API checks against this before building SQL).
SORTABLE_COLUMNS = ("created_at", "ended_at", "status", "command_type")


@dataclass(frozen=True)
class CommandPageQuery:
    """What a page of commands asks for: filters, sort, and where the page starts."""

    statuses: tuple[str, ...] = ()
    command_type: str | None = None
    parent: str | None = None
    entity: EntityRef | None = None
    in_flight: bool = False
    include_children: bool = False
    created_from: str | None = None  # ISO 8601, inclusive
    created_before: str | None = None  # ISO 8601, exclusive
    sort: str = "created_at"
    descending: bool = False
    after: tuple[str, str] | None = None  # (sort value, command id) of the last row of the previous page
    offset: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if self.sort not in SORTABLE_COLUMNS:
            raise InputError(f"sort must be one of {', '.join(SORTABLE_COLUMNS)}")

    def where(self) -> tuple[list[str], list[object]]:
        where: list[str] = []
        params: list[object] = []
        if self.statuses:
            where.append(f"c.status IN ({', '.join('?' * len(self.statuses))})")
            params += list(self.statuses)
        if self.command_type:
            where.append("c.command_type = ?")
            params.append(self.command_type)
        if self.parent:
            where.append("c.parent_id = ?")
            params.append(self.parent)
        if self.entity:
            where.append(
                "c.command_id IN (SELECT command_id FROM proj_command_entities WHERE entity_type = ? AND entity_id = ?)"
            )
            params += [self.entity.type.value, self.entity.id]
        if self.in_flight:
            where.append(IN_FLIGHT)
        if not self.include_children and not self.parent:
            where.append("c.parent_id IS NULL")
        if self.created_from:
            where.append("c.created_at >= ?")
            params.append(self.created_from)
        if self.created_before:
            where.append("c.created_at < ?")
            params.append(self.created_before)
        return where, params


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
