"""The read models, each a pure function of the event log.

- `entity_tasks`: one row per (entity type, entity id, task) for every task not yet
  cleared: many entity types per task, many tasks per entity (guarantee G2).
- `active_tasks`: one row per task not yet cleared on the agent (the reference
  engine's `async_tasks`); empty when the engine is idle.
- `commands`: one row per command, root and child, with the entities it declared.

Each projection turns events into SQL statements. The statements of one batch
run grouped by lifecycle rank and statement, each group as one `executemany`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.model import LockMode
from projections.db import Cursor

# A row of proj_commands still in flight: not ended, or ended with tasks still to clear.
IN_FLIGHT = "(status NOT IN ('succeeded', 'failed') OR uncleared_tasks > 0)"
# The partial index's predicate (its text must stay as stores created it).
IN_FLIGHT_ROOTS = f"parent_id IS NULL AND {IN_FLIGHT}"


# Where each kind of event sits in a command's life. Every event of a command comes no
# earlier in this order than the events before it, except where the statements commute
# (e.g. a recovery that records vanished tasks then decides failure touches other rows, or
# only increments), so a batch may run all its statements rank by rank.
LIFECYCLE_RANK = {
    "Accepted": 0,
    "SubmissionStarted": 1,
    "TasksSubmitted": 1,
    "OrphansAdopted": 1,
    "TasksRefused": 1,
    "FailureDecided": 2,
    "TasksEnded": 3,
    "EndActionStarted": 4,
    "Ended": 5,
    "TasksCleared": 6,
}


GroupKey = tuple[int, str, str, tuple[str, ...]]  # rank, operation, table or SQL, columns


@dataclass
class StatementBatch:
    """The writes of a batch of events, grouped to be sent as few statements as possible.

    Writes are grouped by (lifecycle rank, operation); groups run rank by rank, in order
    of first use within a rank. Structured operations (insert, update by key, delete by
    key) become one `executemany` on SQLite, and one set statement (COPY, UPDATE ... FROM
    unnest, DELETE ... = ANY) on PostgreSQL, whose per-row executions cost more than the
    work they do.
    """

    groups: dict[GroupKey, list[tuple[Any, ...]]] = field(default_factory=dict)
    rank: int = 0

    def add(self, sql: str, *params: Any) -> None:
        """Any statement (run with `executemany` on both stores)."""
        self.groups.setdefault((self.rank, "sql", sql, ()), []).append(params)

    def insert(self, table: str, *row: Any) -> None:
        self.groups.setdefault((self.rank, "insert", table, ()), []).append(row)

    def delete(self, table: str, column: str, key: Any) -> None:
        self.groups.setdefault((self.rank, "delete", table, (column,)), []).append((key,))

    def keyed(self, template: str, key: Any) -> None:
        """A statement that only varies by one key, written with `{match}` where `= key` goes."""
        self.groups.setdefault((self.rank, "keyed", template, ()), []).append((key,))

    def decrement(self, table: str, key_column: str, key: Any, column: str, by: int) -> None:
        """Subtract from a counter column (decrements of one key in a group add up)."""
        self.groups.setdefault((self.rank, "decrement", table, (key_column, column)), []).append((key, by))

    def update(self, table: str, key_column: str, key: Any, **values: str | None) -> None:
        """Set text columns of the rows whose `key_column` equals `key`."""
        columns = (key_column, *values)
        self.groups.setdefault((self.rank, "update", table, columns), []).append((key, *values.values()))

    def __len__(self) -> int:
        return sum(len(p) for p in self.groups.values())

    def run(self, cursor: Cursor, dialect: str = "sqlite") -> None:
        ordered = sorted(enumerate(self.groups), key=lambda item: (item[1][0], item[0]))
        for _, key in ordered:
            _, operation, target, columns = key
            rows = self.groups[key]
            if operation == "sql":
                _execute(cursor, target, rows)
            elif dialect == "postgresql":
                _run_postgres(cursor, operation, target, columns, rows)
            else:
                _run_sqlite(cursor, operation, target, columns, rows)


def _execute(cursor: Cursor, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if len(rows) == 1:
        cursor.execute(sql, rows[0])
    else:
        cursor.executemany(sql, rows)


def _summed(rows: list[tuple[Any, ...]]) -> list[tuple[Any, int]]:
    totals: dict[Any, int] = {}
    for key, by in rows:
        totals[key] = totals.get(key, 0) + by
    return list(totals.items())


def _run_sqlite(
    cursor: Cursor, operation: str, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    if operation == "keyed":
        _execute(cursor, table.format(match="= ?"), rows)
    elif operation == "decrement":
        key, column = columns
        sql = f"UPDATE {table} SET {column} = {column} - ? WHERE {key} = ?"
        _execute(cursor, sql, [(by, k) for k, by in _summed(rows)])
    elif operation == "insert":
        _execute(cursor, f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    elif operation == "delete":
        _execute(cursor, f"DELETE FROM {table} WHERE {columns[0]} = ?", rows)
    else:
        key, *assigned = columns
        sets = ", ".join(f"{c} = ?" for c in assigned)
        _execute(cursor, f"UPDATE {table} SET {sets} WHERE {key} = ?", [(*r[1:], r[0]) for r in rows])


def _run_postgres(
    cursor: Any, operation: str, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    if operation == "keyed":
        cursor.execute(table.format(match="= ANY(?)"), ([r[0] for r in rows],))
    elif operation == "decrement":
        key, column = columns
        totals = _summed(rows)
        cursor.execute(
            f"UPDATE {table} AS t SET {column} = t.{column} - v.by FROM unnest(?::text[], ?::int[]) AS v(k, by)"
            f" WHERE t.{key} = v.k",
            ([k for k, _ in totals], [by for _, by in totals]),
        )
    elif operation == "insert":
        with cursor.copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    elif operation == "delete":
        cursor.execute(f"DELETE FROM {table} WHERE {columns[0]} = ANY(?)", ([r[0] for r in rows],))
    else:
        latest = {r[0]: r for r in rows}  # a row updated twice in one group keeps its last values
        key, *assigned = columns
        arrays = [[r[i] for r in latest.values()] for i in range(len(columns))]
        unnest = ", ".join("?::text[]" for _ in columns)
        names = ", ".join(f"c{i}" for i in range(len(columns)))
        sets = ", ".join(f"{c} = v.c{i + 1}" for i, c in enumerate(assigned))
        cursor.execute(
            f"UPDATE {table} AS t SET {sets} FROM unnest({unnest}) AS v({names}) WHERE t.{key} = v.c0", arrays
        )


class Projection(ABC):
    name: str
    tables: tuple[str, ...]

    @abstractmethod
    def create_statements(self, suffix: str) -> list[str]:
        """DDL for this projection's tables (and their indexes) with a name suffix."""

    @abstractmethod
    def index_statements(self, suffix: str, index_suffix: str) -> list[str]: ...

    @abstractmethod
    def apply(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        """Append the statements that apply one event to the tables."""

    def key_columns(self, table: str) -> str:
        """Column list used to order rows when comparing copies."""
        return "1"


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class RawEvent:
    """An event of the log as plain JSON, decoded without building domain objects.

    The read models need only a few fields, and decoding without the transcoder's
    per-dict hook is several times faster (the rebuild and the engine feel it).
    """

    __slots__ = ("data", "kind", "originator_id")

    def __init__(self, kind: str, originator_id: str, data: dict[str, Any]) -> None:
        self.kind = kind
        self.originator_id = originator_id
        self.data = data

    def __getattr__(self, name: str) -> Any:
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def timestamp(self) -> str:
        stamp = self.data["timestamp"]
        return str(stamp["_data_"]) if isinstance(stamp, dict) else str(stamp)


class EntityTasksProjection(Projection):
    name = "entity_tasks"
    tables = ("proj_entity_tasks",)

    def create_statements(self, suffix: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS proj_entity_tasks{suffix} ("
            " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, task_id TEXT NOT NULL,"
            " command_id TEXT NOT NULL, root_command_id TEXT NOT NULL, status TEXT NOT NULL,"
            " read_only INTEGER NOT NULL, agent_task_id TEXT,"
            " PRIMARY KEY (entity_type, entity_id, task_id))"
        ]

    def index_statements(self, suffix: str, index_suffix: str) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS proj_entity_tasks_task{index_suffix} ON proj_entity_tasks{suffix} (task_id)",
            # "does X have running tasks" reads only these rows, however many ended ones X has
            f"CREATE INDEX IF NOT EXISTS proj_entity_tasks_running{index_suffix} ON proj_entity_tasks{suffix}"
            " (entity_type, entity_id) WHERE status IN ('planned', 'running')",
        ]

    def key_columns(self, table: str) -> str:
        return "entity_type, entity_id, task_id"

    def apply(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        t = f"proj_entity_tasks{suffix}"
        if event.kind == "Accepted":
            root = str(event.originator_id)
            for child in event.children:
                for task in child["tasks"]:
                    for etype, eid, mode in task["entities"]:
                        read_only = int(mode == LockMode.READ)
                        out.insert(t, etype, eid, task["task_id"], child["child_id"], root, "planned", read_only, None)
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            for task_id, agent_task_id in pairs:
                out.update(t, "task_id", task_id, status="running", agent_task_id=agent_task_id)
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.update(t, "task_id", item["task_id"], status=item["status"])
        else:
            for task_id in _tasks_leaving(event):
                out.delete(t, "task_id", task_id)


class ActiveTasksProjection(Projection):
    name = "active_tasks"
    tables = ("proj_active_tasks",)

    def create_statements(self, suffix: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS proj_active_tasks{suffix} ("
            " task_id TEXT PRIMARY KEY, agent_task_id TEXT, command_id TEXT NOT NULL,"
            " root_command_id TEXT NOT NULL, verb TEXT NOT NULL, status TEXT NOT NULL,"
            " started_at TEXT)"
        ]

    def index_statements(self, suffix: str, index_suffix: str) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS proj_active_tasks_root{index_suffix}"
            f" ON proj_active_tasks{suffix} (root_command_id)"
        ]

    def key_columns(self, table: str) -> str:
        return "task_id"

    def apply(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        t = f"proj_active_tasks{suffix}"
        if event.kind == "Accepted":
            root = str(event.originator_id)
            for child in event.children:
                for task in child["tasks"]:
                    out.insert(t, task["task_id"], None, child["child_id"], root, task["verb"], "planned", None)
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            started = _iso(event.timestamp)
            for task_id, agent_task_id in pairs:
                out.update(t, "task_id", task_id, status="running", agent_task_id=agent_task_id, started_at=started)
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.update(t, "task_id", item["task_id"], status=item["status"])
        else:
            for task_id in _tasks_leaving(event):
                out.delete(t, "task_id", task_id)


class CommandsProjection(Projection):
    """Commands, root and child, and the entities they declared."""

    name = "commands"
    tables = ("proj_commands", "proj_command_entities")

    def create_statements(self, suffix: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS proj_commands{suffix} ("
            " command_id TEXT PRIMARY KEY, root_command_id TEXT NOT NULL, parent_id TEXT,"
            " command_type TEXT NOT NULL, status TEXT NOT NULL, summary TEXT NOT NULL,"
            " created_at TEXT NOT NULL, ended_at TEXT, outcome TEXT, reason TEXT NOT NULL,"
            " flagged INTEGER NOT NULL, task_count INTEGER NOT NULL, uncleared_tasks INTEGER NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS proj_command_entities{suffix} ("
            " entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, command_id TEXT NOT NULL,"
            " mode TEXT NOT NULL, PRIMARY KEY (entity_type, entity_id, command_id))",
        ]

    def index_statements(self, suffix: str, index_suffix: str) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS proj_commands_root{index_suffix} ON proj_commands{suffix} (root_command_id)",
            f"CREATE INDEX IF NOT EXISTS proj_commands_status{index_suffix} ON proj_commands{suffix} (status)",
            f"CREATE INDEX IF NOT EXISTS proj_commands_parent{index_suffix} ON proj_commands{suffix} (parent_id)",
            f"CREATE INDEX IF NOT EXISTS proj_commands_type{index_suffix} ON proj_commands{suffix} (command_type)",
            f"CREATE INDEX IF NOT EXISTS proj_commands_in_flight{index_suffix} ON proj_commands{suffix} (command_id)"
            f" WHERE {IN_FLIGHT_ROOTS}",
        ]

    def key_columns(self, table: str) -> str:
        return "entity_type, entity_id, command_id" if table.startswith("proj_command_entities") else "command_id"

    def apply(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        self._apply_commands(event, out, suffix)

    def _apply_commands(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        c, ce = f"proj_commands{suffix}", f"proj_command_entities{suffix}"
        root = str(event.originator_id)
        if event.kind == "Accepted":
            created = _iso(event.timestamp)
            n_tasks = sum(len(ch["tasks"]) for ch in event.children)
            out.insert(
                c, root, root, None, event.flow, "accepted", event.summary, created, None, None, "", 0, n_tasks, n_tasks
            )
            for etype, eid, mode in event.entities:
                out.insert(ce, etype, eid, root, mode)
            for child in event.children:
                if child["child_id"] == root:
                    continue
                child_row = (child["command_type"], "accepted", "", created, None, None, "", 0, len(child["tasks"]), 0)
                out.insert(c, child["child_id"], root, root, *child_row)
                seen: dict[tuple[str, str], str] = {}
                for task in child["tasks"]:
                    for etype, eid, mode in task["entities"]:
                        seen.setdefault((etype, eid), mode)
                for (etype, eid), mode in seen.items():
                    out.insert(ce, etype, eid, child["child_id"], mode)
        if event.kind in ("SubmissionStarted", "TasksSubmitted", "OrphansAdopted", "TasksRefused", "FailureDecided"):
            # the first answer from the agent (or a decision) moves an accepted command on
            out.keyed(
                f"UPDATE {c} SET status = 'running' WHERE root_command_id {{match}} AND status = 'accepted'", root
            )
        if event.kind == "FailureDecided":
            out.add(
                f"UPDATE {c} SET reason = CASE WHEN reason = '' THEN ? ELSE reason END WHERE command_id = ?",
                event.reason,
                root,
            )
            out.decrement(c, "command_id", root, "uncleared_tasks", len(event.abandoned))
        elif event.kind in ("TasksRefused", "TasksCleared"):
            n = len(event.refused) if event.kind == "TasksRefused" else len(event.task_ids)
            out.decrement(c, "command_id", root, "uncleared_tasks", n)
        elif event.kind == "EndActionStarted":
            out.update(c, "command_id", root, status="ending")
        elif event.kind == "Ended":
            ended = _iso(event.timestamp)
            out.update(c, "command_id", root, status=event.outcome, ended_at=ended, outcome=event.outcome)
            out.update(c, "command_id", root, reason=event.reason)
            if event.flagged:
                out.keyed(f"UPDATE {c} SET flagged = 1 WHERE command_id {{match}}", root)
            for child_id, outcome in event.children.items():
                if child_id != root:
                    out.update(c, "command_id", child_id, status=outcome, ended_at=ended, outcome=outcome)


def _tasks_leaving(event: RawEvent) -> Iterable[str]:
    """Tasks that leave the active views: cleared, refused, or never to be submitted."""
    if event.kind == "TasksCleared":
        return list(event.task_ids)
    if event.kind == "TasksRefused":
        return [task_id for task_id, _ in event.refused]
    if event.kind == "FailureDecided":
        return list(event.abandoned)
    return ()


PROJECTIONS: dict[str, Projection] = {
    p.name: p for p in (EntityTasksProjection(), ActiveTasksProjection(), CommandsProjection())
}


def select_projections(names: Sequence[str]) -> list[Projection]:
    from orchestrator.errors import InputError

    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise InputError(f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}")
    return [PROJECTIONS[n] for n in names] if names else list(PROJECTIONS.values())
