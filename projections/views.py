"""The read models, each a pure function of the event log.

- `entity_tasks`: one row per (entity type, entity id, task) for every task not yet
  cleared: many entity types per task, many tasks per entity (guarantee G2).
- `active_tasks`: one row per task not yet cleared on the agent (the reference
  engine's `async_tasks`); empty when the engine is idle.
- `commands`: one row per command, root and child, with the entities it declared.

Each projection turns events into SQL statements. Statements of one batch are
run in order, consecutive identical statements as one `executemany`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.model import LockMode
from projections.db import Cursor

Statement = tuple[str, tuple[Any, ...]]
# Root commands still in flight: not ended, or ended with tasks still to clear. Queries use this
# exact predicate so the partial index serves them whatever the size of the history.
IN_FLIGHT_ROOTS = "parent_id IS NULL AND (status NOT IN ('succeeded', 'failed') OR uncleared_tasks > 0)"


@dataclass
class StatementBatch:
    statements: list[Statement] = field(default_factory=list)

    def add(self, sql: str, *params: Any) -> None:
        self.statements.append((sql, params))

    def run(self, cursor: Cursor) -> None:
        i = 0
        while i < len(self.statements):
            sql = self.statements[i][0]
            j = i
            while j < len(self.statements) and self.statements[j][0] == sql:
                j += 1
            if j - i == 1:
                cursor.execute(sql, self.statements[i][1])
            else:
                cursor.executemany(sql, [p for _, p in self.statements[i:j]])
            i = j


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
            f"CREATE INDEX IF NOT EXISTS proj_entity_tasks_task{index_suffix} ON proj_entity_tasks{suffix} (task_id)"
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
                        out.add(
                            f"INSERT INTO {t} VALUES (?, ?, ?, ?, ?, 'planned', ?, NULL)",
                            etype,
                            eid,
                            task["task_id"],
                            child["child_id"],
                            root,
                            int(mode == LockMode.READ),
                        )
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            for task_id, agent_task_id in pairs:
                out.add(
                    f"UPDATE {t} SET status = 'running', agent_task_id = ? WHERE task_id = ?", agent_task_id, task_id
                )
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.add(f"UPDATE {t} SET status = ? WHERE task_id = ?", item["status"], item["task_id"])
        else:
            for task_id in _tasks_leaving(event):
                out.add(f"DELETE FROM {t} WHERE task_id = ?", task_id)


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
                    out.add(
                        f"INSERT INTO {t} VALUES (?, NULL, ?, ?, ?, 'planned', NULL)",
                        task["task_id"],
                        child["child_id"],
                        root,
                        task["verb"],
                    )
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            for task_id, agent_task_id in pairs:
                out.add(
                    f"UPDATE {t} SET status = 'running', agent_task_id = ?, started_at = ? WHERE task_id = ?",
                    agent_task_id,
                    _iso(event.timestamp),
                    task_id,
                )
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.add(f"UPDATE {t} SET status = ? WHERE task_id = ?", item["status"], item["task_id"])
        else:
            for task_id in _tasks_leaving(event):
                out.add(f"DELETE FROM {t} WHERE task_id = ?", task_id)


class CommandsProjection(Projection):
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
        return "command_id" if table.startswith("proj_commands") else "entity_type, entity_id, command_id"

    def apply(self, event: RawEvent, out: StatementBatch, suffix: str) -> None:
        c, ce = f"proj_commands{suffix}", f"proj_command_entities{suffix}"
        root = str(event.originator_id)
        if event.kind == "Accepted":
            created = _iso(event.timestamp)
            n_tasks = sum(len(ch["tasks"]) for ch in event.children)
            out.add(
                f"INSERT INTO {c} VALUES (?, ?, NULL, ?, 'accepted', ?, ?, NULL, NULL, '', 0, ?, ?)",
                root,
                root,
                event.flow,
                event.summary,
                created,
                n_tasks,
                n_tasks,
            )
            for etype, eid, mode in event.entities:
                out.add(f"INSERT INTO {ce} VALUES (?, ?, ?, ?)", etype, eid, root, mode)
            for child in event.children:
                if child["child_id"] == root:
                    continue
                out.add(
                    f"INSERT INTO {c} VALUES (?, ?, ?, ?, 'accepted', '', ?, NULL, NULL, '', 0, ?, 0)",
                    child["child_id"],
                    root,
                    root,
                    child["command_type"],
                    created,
                    len(child["tasks"]),
                )
                seen: dict[tuple[str, str], str] = {}
                for task in child["tasks"]:
                    for etype, eid, mode in task["entities"]:
                        seen.setdefault((etype, eid), mode)
                for (etype, eid), mode in seen.items():
                    out.add(f"INSERT INTO {ce} VALUES (?, ?, ?, ?)", etype, eid, child["child_id"], mode)
        if event.kind in ("TasksSubmitted", "OrphansAdopted", "TasksRefused", "FailureDecided"):
            # the first answer from the agent (or a decision) moves an accepted command on
            out.add(f"UPDATE {c} SET status = 'running' WHERE root_command_id = ? AND status = 'accepted'", root)
        if event.kind == "FailureDecided":
            out.add(
                f"UPDATE {c} SET reason = CASE WHEN reason = '' THEN ? ELSE reason END,"
                f" uncleared_tasks = uncleared_tasks - ? WHERE command_id = ?",
                event.reason,
                len(event.abandoned),
                root,
            )
        elif event.kind in ("TasksRefused", "TasksCleared"):
            n = len(event.refused) if event.kind == "TasksRefused" else len(event.task_ids)
            out.add(f"UPDATE {c} SET uncleared_tasks = uncleared_tasks - ? WHERE command_id = ?", n, root)
        elif event.kind == "EndActionStarted":
            out.add(f"UPDATE {c} SET status = 'ending' WHERE command_id = ?", root)
        elif event.kind == "Ended":
            ended = _iso(event.timestamp)
            out.add(
                f"UPDATE {c} SET status = ?, ended_at = ?, outcome = ?, reason = ?, flagged = ? WHERE command_id = ?",
                event.outcome,
                ended,
                event.outcome,
                event.reason,
                int(event.flagged),
                root,
            )
            for child_id, outcome in event.children.items():
                if child_id != root:
                    out.add(
                        f"UPDATE {c} SET status = ?, ended_at = ?, outcome = ? WHERE command_id = ?",
                        outcome,
                        ended,
                        outcome,
                        child_id,
                    )


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
