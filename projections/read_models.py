"""The read models, each a pure function of the event log.

- `entity_tasks`: one row per (entity type, entity id, task) for every task not yet
  cleared: many entity types per task, many tasks per entity (guarantee G2).
- `active_tasks`: one row per task not yet cleared on the agent (the reference
  engine's `async_tasks`); empty when the engine is idle.
- `commands`: one row per command, root and child, with the entities it declared.

Each read model turns events into writes (projections/statements.py). The
writes of one batch run grouped by lifecycle rank and operation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import LockMode, TaskStatus
from orchestrator.errors import InputError, damaged_event
from projections.statements import StatementBatch

# A row of proj_commands still in flight: not ended, or ended with tasks still to clear.
IN_FLIGHT = "(status NOT IN ('succeeded', 'failed') OR uncleared_tasks > 0)"
# The partial index's predicate (its text must stay as stores created it).
IN_FLIGHT_ROOTS = f"parent_id IS NULL AND {IN_FLIGHT}"


# Only the root command's events change a read model; others are passed over (but counted).
RELEVANT_PREFIX = RootCommand.Accepted.__module__ + ":RootCommand."

# Columns whose rows of one value are all inserted by one event (see projections/statements.py):
# every row of a task, of a command, of a root command's family comes from its `Accepted`.
TASK_IDENTITY = ("task_id",)
COMMAND_IDENTITY = ("command_id", "root_command_id")

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
    "Terminated": 5,
    "TasksCleared": 6,
}


class ReadModel(ABC):
    """A read model: its tables, and the writes that apply one event to them."""

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

    @classmethod
    def decode(cls, originator_id: str, version: int, topic: str, state: bytes) -> RawEvent:
        """An event of the log from its plain (decrypted, decompressed) state; StoreError if damaged."""
        try:
            data = orjson.loads(state)
        except ValueError as exc:
            raise damaged_event(originator_id, version, topic, str(exc)) from None
        return cls(topic[len(RELEVANT_PREFIX) :], originator_id, data)


class EntityTasks(ReadModel):
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
                    if out.skips(t, "task_id", task["task_id"]):
                        continue
                    for etype, eid, mode in task["entities"]:
                        read_only = int(mode == LockMode.READ)
                        out.insert(
                            t,
                            TASK_IDENTITY,
                            entity_type=etype,
                            entity_id=eid,
                            task_id=task["task_id"],
                            command_id=child["child_id"],
                            root_command_id=root,
                            status="planned",
                            read_only=read_only,
                            agent_task_id=None,
                        )
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            for task_id, agent_task_id in pairs:
                out.update(t, "task_id", task_id, status="running", agent_task_id=agent_task_id)
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.update(t, "task_id", item["task_id"], status=item["status"])
        elif event.kind == "Terminated":
            _terminate_tasks(event, out, t)
        else:
            for task_id in _tasks_leaving(event):
                out.delete(t, "task_id", task_id)


class ActiveTasks(ReadModel):
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
                    if out.skips(t, "task_id", task["task_id"]):
                        continue
                    out.insert(
                        t,
                        TASK_IDENTITY,
                        task_id=task["task_id"],
                        agent_task_id=None,
                        command_id=child["child_id"],
                        root_command_id=root,
                        verb=task["verb"],
                        status="planned",
                        started_at=None,
                    )
        elif event.kind in ("TasksSubmitted", "OrphansAdopted"):
            pairs = event.submitted if event.kind == "TasksSubmitted" else event.orphans
            started = _iso(event.timestamp)
            for task_id, agent_task_id in pairs:
                out.update(t, "task_id", task_id, status="running", agent_task_id=agent_task_id, started_at=started)
        elif event.kind == "TasksEnded":
            for item in event.ended:
                out.update(t, "task_id", item["task_id"], status=item["status"])
        elif event.kind == "Terminated":
            _terminate_tasks(event, out, t)
        else:
            for task_id in _tasks_leaving(event):
                out.delete(t, "task_id", task_id)


class Commands(ReadModel):
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
            # With the status: "set running where root = ? and status = 'accepted'" must not pick the
            # status index (every accepted command) on a store without statistics.
            f"CREATE INDEX IF NOT EXISTS proj_commands_root_status{index_suffix}"
            f" ON proj_commands{suffix} (root_command_id, status)",
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
            _insert_command(out, c, root, None, event.flow, event.summary, created, n_tasks, n_tasks)
            for etype, eid, mode in event.entities:
                out.insert(ce, entity_type=etype, entity_id=eid, command_id=root, mode=mode)
            for child in event.children:
                if child["child_id"] == root:
                    continue
                n_child = len(child["tasks"])
                _insert_command(out, c, child["child_id"], root, child["command_type"], "", created, n_child, 0)
                seen: dict[tuple[str, str], str] = {}
                for task in child["tasks"]:
                    for etype, eid, mode in task["entities"]:
                        seen.setdefault((etype, eid), mode)
                for (etype, eid), mode in seen.items():
                    out.insert(ce, entity_type=etype, entity_id=eid, command_id=child["child_id"], mode=mode)
        if event.kind in ("SubmissionStarted", "TasksSubmitted", "OrphansAdopted", "TasksRefused", "FailureDecided"):
            # the first answer from the agent (or a decision) moves an accepted command on
            out.update(c, "root_command_id", root, where={"status": "accepted"}, status="running")
        if event.kind == "FailureDecided":
            out.update(c, "command_id", root, where={"reason": ""}, reason=event.reason)
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
                out.update(c, "command_id", root, flagged=1)
            for child_id, outcome in event.children.items():
                if child_id != root:
                    out.update(c, "command_id", child_id, status=outcome, ended_at=ended, outcome=outcome)
        elif event.kind == "Terminated":
            self._terminate(event, out, c, root)

    @staticmethod
    def _terminate(event: RawEvent, out: StatementBatch, c: str, root: str) -> None:
        """The operator ended the command: it and its children not yet ended fail, flagged."""
        ended = _iso(event.timestamp)
        failed = "failed"
        out.update(c, "root_command_id", root, where={"ended_at": None}, status=failed, outcome=failed, ended_at=ended)
        out.update(c, "command_id", root, reason=f"terminated by the operator: {event.reason}")
        out.update(c, "command_id", root, flagged=1)
        out.decrement(c, "command_id", root, "uncleared_tasks", len(event.data.get("never_submitted", ())))


def _insert_command(
    out: StatementBatch,
    table: str,
    command_id: str,
    parent_id: str | None,
    command_type: str,
    summary: str,
    created: str,
    task_count: int,
    uncleared: int,
) -> None:
    out.insert(
        table,
        COMMAND_IDENTITY,
        command_id=command_id,
        root_command_id=parent_id or command_id,
        parent_id=parent_id,
        command_type=command_type,
        status="accepted",
        summary=summary,
        created_at=created,
        ended_at=None,
        outcome=None,
        reason="",
        flagged=0,
        task_count=task_count,
        uncleared_tasks=uncleared,
    )


def _terminate_tasks(event: RawEvent, out: StatementBatch, table: str) -> None:
    """Terminated: tasks no agent ever had leave the active views; the others failed, to be cleared."""
    never = set(event.data.get("never_submitted", ()))  # version 1 did not say (its upcast: none)
    for task_id in event.terminated:
        if task_id in never:
            out.delete(table, "task_id", task_id)
        else:
            out.update(table, "task_id", task_id, status=TaskStatus.FAILED.value)


def tasks_leaving(event: RawEvent) -> Iterable[str]:
    """Tasks that leave the task views with this event: cleared, refused, never to be submitted."""
    if event.kind == "Terminated":
        return list(event.data.get("never_submitted", ()))
    return _tasks_leaving(event)


def _tasks_leaving(event: RawEvent) -> Iterable[str]:
    """Tasks that leave the active views: cleared, refused, or never to be submitted."""
    if event.kind == "TasksCleared":
        return list(event.task_ids)
    if event.kind == "TasksRefused":
        return [task_id for task_id, _ in event.refused]
    if event.kind == "FailureDecided":
        return list(event.abandoned)
    return ()


def apply_events(
    events: Sequence[tuple[int, RawEvent]], targets: Sequence[tuple[ReadModel, int]], suffix: str
) -> StatementBatch:
    """The writes that apply these events (each with its log position) to each read model past its position."""
    out = StatementBatch(doomed={("task_id", task_id) for _, event in events for task_id in tasks_leaving(event)})
    for position_of_event, event in events:
        out.rank = LIFECYCLE_RANK.get(event.kind, 0)
        for projection, position in targets:
            if position_of_event > position:
                projection.apply(event, out, suffix)
    return out


READ_MODELS: dict[str, ReadModel] = {m.name: m for m in (EntityTasks(), ActiveTasks(), Commands())}


def select_read_models(names: Sequence[str]) -> list[ReadModel]:
    unknown = [n for n in names if n not in READ_MODELS]
    if unknown:
        raise InputError(f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(READ_MODELS)}")
    return [READ_MODELS[n] for n in names] if names else list(READ_MODELS.values())
