"""Crash-replay inspection: `orchestrator inspect` and `scripts/crash_replay.py`.

Strictly read-only. It opens the store read-only (SQLite `mode=ro`; on
PostgreSQL only SELECTs, which take no lock that blocks the engine's writes),
creates no table, writes no projection, replays the root commands in flight
(those recovery would load, so it costs what is in flight, not what the
history holds), reads the agent's tasks without changing the agent's state, and
applies the same `decide` function recovery applies. With the agent, orphans,
vanished tasks and tasks that ended meanwhile are found; without it, the
verdicts that depend on the agent are marked provisional.

Exit codes: 0 nothing needs recovery; 20 some command is in flight (the
verdicts say what recovery would do); the CLI's error codes otherwise
(3 store unreadable, foreign, empty or of a newer schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import get_topic
from pydantic import BaseModel, Field

from orchestrator.documents import CommandView, TaskView
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.domain.recovery import AgentView, Decision, decide
from orchestrator.errors import NotFoundError
from orchestrator.store import EventStore, StoreConfig, check_store, dialect_for, parse_store_url, store_url_from_env
from orchestrator.store.event_store import IN_FLIGHT_TABLE

EXIT_CLEAN = 0
EXIT_NEEDS_RECOVERY = 20


class InspectedCommand(BaseModel):
    command_id: str
    flow: str
    pool_id: str
    summary: str
    status: str
    verdict: str = Field(
        description="start | resume polling | fail | run end action | run end action again | clear only"
    )
    reason: str
    provisional: bool = Field(description="decided without the agent's task list")
    orphans: list[str] = Field(description="task ids created on the agent whose agent id was never recorded")
    unsubmitted: list[str]
    vanished: list[str]
    finished_while_down: list[str]
    to_stop: list[str] = Field(description="running tasks whose stop was decided (orphans, zombies, cancelled)")
    tasks: list[TaskView]


class InspectionReport(BaseModel):
    """`inspect --json`: every root command in flight and what recovery would decide."""

    store: str = Field(description="store URL, password hidden")
    log_head: int
    agent_consulted: bool = Field(description="some pool's agent was read")
    agent_note: str
    provisional_pools: list[str] = Field(
        description="pools whose agent could not be read: their verdicts are provisional"
    )
    commands: list[InspectedCommand]
    summary: dict[str, int] = Field(description="commands by verdict")
    exit_code: int


class HistoryEvent(BaseModel):
    version: int
    at: datetime
    event: str
    detail: str


class CommandHistory(BaseModel):
    """`inspect --command ID --json`: one command's events, and its state at a version."""

    store: str
    command_id: str
    events: list[HistoryEvent]
    state: CommandView
    state_version: int


class ReadOnlyStore:
    """A store opened for reading only: no table created, no projection written, no lock taken."""

    def __init__(self, store: str | None) -> None:
        self.config: StoreConfig = parse_store_url(store_url_from_env(store))
        self.meta = check_store(self.config)
        self.store = EventStore.open(self.config, dialect_for(self.config), create_tables=False, read_only=True)

    def close(self) -> None:
        self.store.close()

    def head(self) -> int:
        try:
            return self.store.head()
        except PersistenceError:
            return 0  # no events table yet: nothing was ever recorded

    def in_flight_commands(self) -> list[RootCommand]:
        return [c for c in self.store.load_commands(self.in_flight_ids()) if c.in_flight]

    def in_flight_ids(self) -> list[UUID]:
        """What recovery would load: the store's in-flight index (a store of an older layout: every root)."""
        try:
            if self.store.has_table(IN_FLIGHT_TABLE):
                return self.store.in_flight_ids()
            return list(dict.fromkeys(self.store.originators([get_topic(RootCommand.Accepted)])))
        except PersistenceError:
            return []

    def command(self, ident: str, version: int | None = None) -> RootCommand:
        try:
            command_id = UUID(ident)
        except ValueError:
            raise NotFoundError(f"{ident!r} is not a command id (a UUID)") from None
        command = self.store.get(command_id, version=version)
        if command is None:
            where = f" at version {version}" if version is not None else ""
            raise NotFoundError(f"no command {command_id}{where} in {self.config.redacted}")
        if not isinstance(command, RootCommand):
            raise NotFoundError(f"{command_id} is not a command")
        return command


@dataclass(frozen=True)
class AgentReading:
    """Each pool's agent's tasks as the inspection read them (a pool missing: not read), and a line on each."""

    views: dict[str, AgentView] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def note(self) -> str:
        if not self.notes:
            return "agent not consulted (--no-agent): verdicts that depend on the agent are provisional"
        if list(self.notes) == [DEFAULT_POOL]:
            return self.notes[DEFAULT_POOL]
        return "; ".join(f"pool {pool}: {note}" for pool, note in sorted(self.notes.items()))


NOT_CONSULTED = AgentReading()


def inspect_store(store: ReadOnlyStore, agent: AgentReading = NOT_CONSULTED) -> InspectionReport:
    """Every root command in flight and the verdict recovery would reach, given what each pool's agent holds.

    A command of a pool whose agent could not be read gets a provisional verdict."""
    in_flight = store.in_flight_commands()
    inspected = []
    summary: dict[str, int] = {}
    for command in in_flight:
        decision: Decision = decide(command, agent.views.get(command.pool_id))
        summary[decision.verdict.value] = summary.get(decision.verdict.value, 0) + 1
        inspected.append(
            InspectedCommand(
                command_id=str(command.id),
                flow=command.flow,
                pool_id=command.pool_id,
                summary=command.summary,
                status=command.status.value,
                verdict=decision.verdict.value,
                reason=decision.reason,
                provisional=decision.provisional,
                orphans=[t for t, _ in decision.orphans],
                unsubmitted=decision.unsubmitted,
                vanished=decision.vanished,
                finished_while_down=decision.finished_while_down,
                to_stop=decision.to_stop,
                tasks=[TaskView.of(t) for t in command.tasks.values()],
            )
        )
    code = EXIT_NEEDS_RECOVERY if inspected else EXIT_CLEAN
    return InspectionReport(
        store=store.config.redacted,
        log_head=store.head(),
        agent_consulted=bool(agent.views),
        agent_note=agent.note,
        provisional_pools=sorted({c.pool_id for c in in_flight} - set(agent.views)),
        commands=inspected,
        summary=summary,
        exit_code=code,
    )


def describe_event(event: Any) -> tuple[str, str]:
    """A short name and the fields that matter, for the timeline."""
    name = type(event).__name__
    if isinstance(event, RootCommand.Accepted):
        n = sum(len(c["tasks"]) for c in event.children)
        ents = ", ".join(f"{t}:{i} ({m})" for t, i, m in event.entities)
        return (
            name,
            f"{event.flow}: {event.summary}; {n} task(s) expected in {len(event.children)} child(ren); locks {ents}",
        )
    if isinstance(event, RootCommand.TasksSubmitted):
        return name, ", ".join(f"{t[:8]} -> agent {a}" for t, a in event.submitted)
    if isinstance(event, RootCommand.OrphansAdopted):
        return name, ", ".join(f"{t[:8]} found on the agent as {a}" for t, a in event.orphans)
    if isinstance(event, RootCommand.TasksRefused):
        return name, ", ".join(f"{t[:8]}: {m}" for t, m in event.refused)
    if isinstance(event, RootCommand.TasksEnded):
        return name, ", ".join(
            f"{e['task_id'][:8]} {e['status']}"
            + (f" ({e['kind']})" if e["kind"] != "finished" else "")
            + (f": {e['message']}" if e.get("message") else "")
            for e in event.ended
        )
    if isinstance(event, RootCommand.FailureDecided):
        return name, f"{event.reason}" + (
            f"; {len(event.abandoned)} task(s) will never be submitted" if event.abandoned else ""
        )
    if isinstance(event, RootCommand.Recovered):
        return name, f"{event.verdict}: {event.reason}"
    if isinstance(event, RootCommand.CancelRequested):
        return name, event.reason
    if isinstance(event, RootCommand.EndActionStarted):
        return name, event.action
    if isinstance(event, RootCommand.EndActionFailed):
        fallback = f"; falling back to {event.fallback}" if event.fallback else ""
        return name, f"{event.action} attempt {event.attempt}: {event.error}{fallback}"
    if isinstance(event, RootCommand.Ended):
        reverted = f"; reverted {len(event.reverted)} task(s) on the agent" if event.reverted else ""
        return name, f"{event.outcome}: {event.reason}{reverted}" + ("; FLAGGED" if event.flagged else "")
    if isinstance(event, RootCommand.TasksCleared):
        return name, f"{len(event.task_ids)} task(s) cleared on the agent"
    if isinstance(event, RootCommand.Terminated):
        on_agent = len(event.terminated) - len(event.never_submitted)
        return name, f"by the operator: {event.reason}; {len(event.terminated)} task(s) ended, {on_agent} to stop"
    if isinstance(event, RootCommand.RetriedAs):
        return name, f"retried as {event.command_id}"
    return name, ""


def command_history(store: ReadOnlyStore, ident: str, at_version: int | None) -> CommandHistory:
    command = store.command(ident)
    return history_of(store.config.redacted, store.store.events_of(command.id), at_version)


def history_of(source: str, events: Sequence[Any], at_version: int | None) -> CommandHistory:
    """A command's history from its events (a store's, or an archive's), and its state at a version."""
    shown = []
    for e in events:
        name, detail = describe_event(e)
        at = getattr(e, "timestamp")  # noqa: B009 - every aggregate event has one; the protocol does not say so
        shown.append(HistoryEvent(version=e.originator_version, at=at, event=name, detail=detail))
    upto = [e for e in events if at_version is None or e.originator_version <= at_version]
    state: Any = None
    for event in upto:
        state = event.mutate(state)
    assert isinstance(state, RootCommand)
    return CommandHistory(
        store=source,
        command_id=str(state.id),
        events=shown,
        state=CommandView.of(state, events),
        state_version=state.version,
    )
