"""Polling: one status call for every task the agent holds, and what the answer means.

Each running task the agent reports ended is recorded as ended; one it no longer
knows has vanished (a failure, never a success); one running past the zombie age
gets its stop decided and recorded before the stop is made. A command whose
tasks have all ended gets its end action decided in the same transaction (keyed
by root command: G3).

A command that fails (cancelled, or a task refused) while some of its tasks are
still planned is settled here too: a planned task the agent holds by key (a
create call whose answer was lost) is adopted to be stopped, the others will
never be submitted. That is a running engine's own bookkeeping; only recovery
at an engine start decides that a crash cut a submission short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from uuid import UUID

from orchestrator.agent.port import AgentTaskState, AgentTaskStatus, view_of
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand, TaskState
from orchestrator.domain.model import CommandStatus, EndAction, EndKind, FailureCause, TaskStatus, parse_agent_task_key
from orchestrator.domain.payloads import TaskEndRecord
from orchestrator.domain.recovery import AgentView
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.report import CycleReport
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.flows import get_flow
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator.engine")
ZOMBIE = "zombie"
PHANTOM_CHECK_SECONDS = 60.0


def end_record(task: TaskState, seen: AgentTaskStatus | None, zombie_seconds: float) -> TaskEndRecord:
    """How a task ended, from what the agent says of it (None: the agent no longer knows it)."""
    if seen is None:
        return _end(task, TaskStatus.FAILED, EndKind.VANISHED, f"the agent no longer knows task {task.agent_task_id}")
    if task.stop_reason == ZOMBIE:
        message = f"ran longer than {zombie_seconds:g}s; stopped"
        return _end(task, TaskStatus.FAILED, EndKind.ZOMBIE, message, agent_succeeded=seen.succeeded)
    if seen.state is AgentTaskState.ABORTED:
        return _end(task, TaskStatus.FAILED, EndKind.STOPPED, seen.message or "stopped")
    status = TaskStatus.SUCCEEDED if seen.succeeded else TaskStatus.FAILED
    return _end(task, status, EndKind.FINISHED, seen.message)


def _end(task: TaskState, status: TaskStatus, kind: EndKind, message: str, **result: object) -> TaskEndRecord:
    return {"task_id": task.task_id, "status": status.value, "kind": kind.value, "message": message, "result": result}


def agent_acts_next(commands: Sequence[RootCommand]) -> bool:
    """Whether the engine's next agent calls act on what these commands now record: a stop decided
    (a zombie, an orphan, a cancel) or an end action that reverts tasks first. Only then must a
    poll's record reach the disk before the next commit that waits; otherwise the agent still
    holds what it says (the ended tasks, cleared only after the end action is recorded)."""
    for command in commands:
        if command.tasks_to_stop:
            return True
        reverts = command.status is CommandStatus.ENDING and command.due_end_action is EndAction.FAILURE
        if reverts and get_flow(command.flow).revert_on_failure:
            return True
    return False


def decide_end_action_if_due(command: RootCommand) -> None:
    if command.status in (CommandStatus.ACCEPTED, CommandStatus.RUNNING) and command.all_tasks_ended:
        command.start_end_action()


class Poller:
    def __init__(
        self,
        link: AgentLink,
        writer: CommandWriter,
        held: dict[UUID, RootCommand],
        *,
        zombie_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.link = link
        self.writer = writer
        self.held = held
        self.zombie_seconds = zombie_seconds
        self.clock = clock
        self._phantoms_reported = False
        self._phantoms_checked_at = float("-inf")

    def needed(self, leftovers: bool) -> bool:
        return leftovers or any(c.running_tasks or c.tasks_to_stop or _unsettled(c) for c in self.held.values())

    def run(self, report: CycleReport, *, leftovers: bool = False) -> list[AgentTaskStatus] | None:
        """Ask the agent for every task it holds and record what changed; the statuses, or None."""
        if not self.needed(leftovers) or not self.link.ready():
            return None
        try:
            statuses = self.link.call(self.link.agent.task_statuses)
        except AgentError:
            return None
        now = self.clock()
        self._report_phantoms(statuses, now)
        by_id = {s.agent_task_id: s for s in statuses}
        # What can end a running task this cycle: its status ended, it vanished, or it ran too long.
        # When no status has ended and none is old enough to be a zombie, only a vanished task can.
        ended_ids = {s.agent_task_id for s in statuses if s.ended}
        oldest = min((s.created_at for s in statuses), default=None)
        zombies_possible = oldest is not None and now - oldest.timestamp() > self.zombie_seconds
        view: AgentView | None = None
        changes: dict[UUID, Change] = {}
        for command in self.held.values():
            if _unsettled(command):
                view = view or view_of(statuses)
                changes[command.id] = settle_planned(view)
                continue
            running = command.running_tasks
            if not running or (
                not zombies_possible
                and all(t.agent_task_id in by_id and t.agent_task_id not in ended_ids for t in running)
            ):
                continue
            change = self._learned(command, running, by_id, now, report)
            if change is not None:
                changes[command.id] = change
        self.writer.apply(changes, flush=agent_acts_next)
        if report.tasks_ended:
            crash_point("after_task_end_recorded")
        return statuses

    def _learned(
        self,
        command: RootCommand,
        running: Sequence[TaskState],
        by_id: dict[str, AgentTaskStatus],
        now: float,
        report: CycleReport,
    ) -> Change | None:
        ended: dict[str, AgentTaskStatus | None] = {}
        zombies: list[str] = []
        for task in running:
            assert task.agent_task_id is not None
            seen = by_id.get(task.agent_task_id)
            if seen is None or seen.ended:
                ended[task.task_id] = seen
            elif task.stop_reason is None and now - seen.created_at.timestamp() > self.zombie_seconds:
                log.warning("task %s (%s) is a zombie; stopping it", seen.agent_task_id, seen.verb)
                zombies.append(task.task_id)
        if not ended and not zombies:
            return None
        report.tasks_ended += len(ended)
        return _record_ends(ended, zombies, self.zombie_seconds)

    def _report_phantoms(self, statuses: Sequence[AgentTaskStatus], now: float) -> None:
        """Say once that the agent holds tasks this engine never gave it (looked for once a minute)."""
        if self._phantoms_reported or now - self._phantoms_checked_at < PHANTOM_CHECK_SECONDS:
            return
        self._phantoms_checked_at = now
        known = {t.agent_task_id for c in self.held.values() for t in c.tasks.values() if t.agent_task_id}
        phantoms = [s for s in statuses if s.agent_task_id not in known and parse_agent_task_key(s.key) is None]
        if phantoms:
            log.warning("agent reports %d task(s) it was never given by this engine; ignoring them", len(phantoms))
            self._phantoms_reported = True


def _unsettled(command: RootCommand) -> bool:
    """It fails, and some of its tasks are still planned: ask the agent which of them it holds."""
    return not command.ended and not command.submittable and bool(command.planned_tasks)


def settle_planned(view: AgentView) -> Change:
    """A failing command's planned tasks: adopt those the agent holds by key (to stop), abandon the rest."""

    def change(command: RootCommand, unit: InventoryUnit) -> None:
        if not _unsettled(command):
            return
        found, missing = [], []
        for task in command.planned_tasks:
            fact = view.by_key.get(command.task_key(task.task_id))
            if fact is not None:
                found.append((task.task_id, fact.agent_task_id))
            else:
                missing.append(task.task_id)
        command.adopt_orphans(found)
        if missing:
            cancelled = command.cancel_reason is not None
            reason = f"cancelled: {command.cancel_reason}" if cancelled else command.failure_reason or "failed"
            cause = FailureCause.CANCELLED if cancelled else FailureCause.REFUSED
            command.decide_failure(reason, missing, cause)
        decide_end_action_if_due(command)

    return change


def _record_ends(ended: dict[str, AgentTaskStatus | None], zombies: list[str], zombie_seconds: float) -> Change:
    def change(command: RootCommand, unit: InventoryUnit) -> None:
        running = {t.task_id: t for t in command.running_tasks}
        command.decide_stops([(t, ZOMBIE) for t in zombies if t in running and running[t].stop_reason is None])
        records = [
            end_record(running[t], seen, zombie_seconds)
            for t, seen in ended.items()
            if t in running and (seen is None or seen.agent_task_id == running[t].agent_task_id)
        ]
        command.record_ended(records)
        decide_end_action_if_due(command)

    return change
