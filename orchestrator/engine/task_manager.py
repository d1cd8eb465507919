"""The task manager: submits tasks, polls the agent, runs end actions, clears.

One cycle:
  1. discover commands accepted since the last cycle (reads the log),
  2. cancel what was asked to be cancelled,
  3. submit the tasks of accepted commands, in batches, recording agent ids,
  4. poll: one status call to the agent for all tasks; every change found is
     saved in one transaction, and a command whose tasks have all ended gets
     its end action decided in that same transaction (keyed by root command,
     G3),
  5. run due end actions (reverting on the agent first where the flow says
     so), release entity locks, end the commands (one transaction),
  6. clear the ended commands' tasks on the agent, and record it.

A cycle where nothing changed makes at most one agent call and no store
write. An unreachable or babbling agent makes the engine wait with backoff;
it never decides anything from silence or garbage. A failed store write
makes the engine forget what it held and reconcile those commands again, as
recovery does after a crash.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from orchestrator.agent.interface import Agent, AgentTaskState, AgentTaskStatus, TaskSpec
from orchestrator.application import InventoryUnit, Orchestrator
from orchestrator.config import EngineSettings
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus, EndAction, EndKind, TaskStatus, parse_agent_task_key
from orchestrator.domain.recovery import AgentView, Decision, Verdict, decide
from orchestrator.errors import AgentError
from orchestrator.flows import get_flow

log = logging.getLogger("orchestrator.engine")
T = TypeVar("T")
DISCOVER_PAGE = 1000
SAVE_BATCH = 1000  # commands per transaction when a cycle changed more (see _save_commands)
END_ACTION_BATCH = 250  # commands whose end actions share one transaction


@dataclass
class CycleReport:
    agent_calls: int = 0
    store_transactions: int = 0
    events: int = 0
    submitted: int = 0
    refused: int = 0
    tasks_ended: int = 0
    commands_ended: int = 0
    cleared: int = 0
    agent_trouble: str = ""

    @property
    def progressed(self) -> bool:
        """The engine moved something forward (so the next cycle should not wait)."""
        return bool(self.submitted or self.refused or self.commands_ended or self.cleared)


@dataclass
class RecoveryReport:
    decisions: dict[UUID, Decision] = field(default_factory=dict)
    summaries: dict[UUID, str] = field(default_factory=dict)
    orphans_stopped: int = 0
    swept: int = 0
    seconds: float = 0.0
    agent_waits: int = 0


class _EndActionRaised(Exception):
    def __init__(self, command_id: UUID, error: BaseException) -> None:
        super().__init__(str(error))
        self.command_id = command_id
        self.error = error


class TaskManager:
    def __init__(
        self,
        orchestrator: Orchestrator,
        agent: Agent,
        settings: EngineSettings,
        *,
        clock: Callable[[], float] = time.time,
        update_projections: bool = True,
    ) -> None:
        self.orch = orchestrator
        self.app = orchestrator.app
        self.agent = agent
        self.settings = settings
        self.clock = clock
        self.update_projections = update_projections
        self.inflight: dict[UUID, RootCommand] = {}
        self.log_position = 0
        self.agent_calls = 0
        self.store_transactions = 0
        self.events_saved = 0
        self._stopping: set[str] = set()  # agent task ids we asked the agent to stop
        self._zombies: set[str] = set()
        self._reconcile_ids: set[UUID] = set()  # forgotten after a failed write: reconcile
        self._reverted: dict[UUID, list[str]] = {}
        self._agent_retry_at = 0.0
        self._agent_backoff = 0.0
        self._agent_trouble = ""
        self._phantoms_reported = False
        self._discover_topics = [get_topic(RootCommand.Accepted), get_topic(RootCommand.CancelRequested)]

    # ---- plumbing ------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], *args: Any) -> T:
        self.agent_calls += 1
        result = method(*args)
        if self._agent_trouble:
            log.warning("agent is back after: %s", self._agent_trouble)
        self._agent_backoff = 0.0
        self._agent_trouble = ""
        return result

    def _agent_failed(self, exc: AgentError) -> None:
        first = not self._agent_trouble
        self._agent_backoff = min(
            self.settings.agent_backoff_max, max(self.settings.poll_interval, self._agent_backoff * 2 or 0.5)
        )
        self._agent_retry_at = self.clock() + self._agent_backoff
        self._agent_trouble = str(exc)
        (log.warning if first else log.info)("%s; deciding nothing, retrying in %.1fs", exc, self._agent_backoff)

    def _agent_ready(self) -> bool:
        return self.clock() >= self._agent_retry_at

    @property
    def agent_trouble(self) -> str:
        return self._agent_trouble

    def _save_commands(self, commands: Sequence[RootCommand]) -> bool:
        """Save the changes of many commands, in transactions of at most SAVE_BATCH commands.

        One transaction for a whole cycle would be the ideal; PostgreSQL's driver can hang on
        one very large pipelined insert (psycopg #685), so a cycle that changed thousands of
        commands commits them in a few transactions. Each command's changes stay in one.
        """
        ok = True
        for start in range(0, len(commands), SAVE_BATCH):
            ok = self._save(*commands[start : start + SAVE_BATCH]) and ok
        return ok

    def _save(self, *aggregates: Any) -> bool:
        pending = [a for a in aggregates if a.pending_events]
        if not pending:
            return True
        n_events = sum(len(a.pending_events) for a in pending)
        try:
            self.orch.save(*pending)
        except IntegrityError as exc:
            # Another process changed one of these aggregates. Forget what we held; a command
            # that may have lost agent ids learned this cycle is reconciled with the agent.
            log.info("store refused a write (%s); re-reading what it involved", str(exc).splitlines()[0])
            self.orch.forget(a.id for a in pending)
            for aggregate in pending:
                if isinstance(aggregate, RootCommand):
                    command = self._reload(aggregate.id)
                    if command is not None and command.status is CommandStatus.RUNNING and command.planned_tasks:
                        self._reconcile_ids.add(aggregate.id)
            return False
        self.store_transactions += 1
        self.events_saved += n_events
        return True

    def _reload(self, command_id: UUID) -> RootCommand | None:
        self.orch.forget([command_id])
        try:
            command: object = self.app.repository.get(command_id)
        except AggregateNotFoundError:
            self.inflight.pop(command_id, None)
            return None
        assert isinstance(command, RootCommand)
        self.inflight[command_id] = command
        return command

    def _now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    @property
    def idle(self) -> bool:
        return not self.inflight

    # ---- recovery ------------------------------------------------------------------------

    def recover(self, stop: Callable[[], bool] = lambda: False) -> RecoveryReport:
        """Find every command in flight and decide for each by the recovery rules."""
        # Recovery builds many small objects that all live on; the cyclic garbage collector
        # would scan them over and over while they are made (a third of the time at 10,000).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._recover(stop)
        finally:
            if collecting:
                gc.enable()

    def _recover(self, stop: Callable[[], bool]) -> RecoveryReport:
        started = time.monotonic()
        report = RecoveryReport()
        self.orch.projections.catch_up()
        position = {s.name: s.position for s in self.orch.projections.status()}["commands"]
        ids = [UUID(i) for i in self.orch.queries.in_flight_root_ids()]
        self.inflight = {c.id: c for c in self.orch.load_commands(ids)}
        self.log_position = position
        self._discover()
        statuses = self._statuses_waiting(stop, report)
        if statuses is None:
            return report
        decisions = self._reconcile(list(self.inflight.values()), statuses)
        report.decisions = decisions
        report.summaries = {cid: self.inflight[cid].summary for cid in decisions if cid in self.inflight}
        crash_point("in_recovery")
        report.orphans_stopped = self._stop_orphans(decisions, statuses)
        report.swept = self._sweep(statuses)
        report.seconds = time.monotonic() - started
        if decisions:
            counts: dict[str, int] = {}
            for d in decisions.values():
                counts[d.verdict.value] = counts.get(d.verdict.value, 0) + 1
            log.info("recovery: %s", ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        return report

    def _statuses_waiting(self, stop: Callable[[], bool], report: RecoveryReport) -> list[AgentTaskStatus] | None:
        """The agent's task list; an unreachable agent is waited for, never guessed at."""
        while True:
            try:
                return self._call(self.agent.task_statuses)
            except AgentError as exc:
                self._agent_failed(exc)
                report.agent_waits += 1
            deadline = self._agent_retry_at
            while self.clock() < deadline:
                if stop():
                    return None
                time.sleep(min(0.1, max(0.0, deadline - self.clock())))

    def _reconcile(self, commands: Iterable[RootCommand], statuses: list[AgentTaskStatus]) -> dict[UUID, Decision]:
        view = AgentView(statuses)
        decisions: dict[UUID, Decision] = {}
        changed = []
        for command in commands:
            decision = decide(command, view)
            if decision.verdict is Verdict.NOTHING:
                self.inflight.pop(command.id, None)
                continue
            self._apply_decision(command, decision)
            decisions[command.id] = decision
            changed.append(command)
        self._save_commands(changed)
        return decisions

    def _apply_decision(self, command: RootCommand, decision: Decision) -> None:
        command.adopt_orphans(decision.orphans)
        if decision.vanished:
            command.record_ended(
                [
                    self._end_item(t, TaskStatus.FAILED, EndKind.VANISHED, "the agent no longer knows this task")
                    for t in decision.vanished
                ]
            )
        if decision.verdict is Verdict.FAIL and (decision.unsubmitted or command.failure_reason is None):
            command.decide_failure(decision.reason, decision.unsubmitted)
        command.record_recovery(decision.verdict.value, decision.reason)

    def _stop_orphans(self, decisions: dict[UUID, Decision], statuses: list[AgentTaskStatus]) -> int:
        running = {s.agent_task_id for s in statuses if not s.ended}
        stopped = 0
        for decision in decisions.values():
            for _, agent_task_id in decision.orphans:
                if agent_task_id in running:
                    try:
                        self._call(self.agent.stop_task, agent_task_id)
                    except AgentError as exc:
                        self._agent_failed(exc)
                        continue  # the next poll still sees it; it ends or is stopped later
                    self._stopping.add(agent_task_id)
                    stopped += 1
        return stopped

    def _sweep(self, statuses: list[AgentTaskStatus]) -> int:
        """Stop and clear agent tasks of ours whose command no longer expects them."""
        leftovers = []
        for s in statuses:
            parsed = parse_agent_task_key(s.key)
            if parsed is None or parsed[0] in self.inflight:
                continue
            try:
                command: object = self.app.repository.get(parsed[0])
            except AggregateNotFoundError:
                continue  # not ours: never touch it
            if not isinstance(command, RootCommand) or parsed[1] not in command.tasks:
                continue
            leftovers.append(s)
        if not leftovers:
            return 0
        try:
            for s in leftovers:
                if not s.ended:
                    self._call(self.agent.stop_task, s.agent_task_id)
            self._call(self.agent.clear_tasks, [s.agent_task_id for s in leftovers if s.ended])
        except AgentError as exc:
            self._agent_failed(exc)
        log.warning("cleared %d leftover agent task(s) of commands no longer in flight", len(leftovers))
        return len(leftovers)

    # ---- the cycle -----------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        calls0, tx0, ev0 = self.agent_calls, self.store_transactions, self.events_saved
        report = CycleReport()
        self._discover()
        self._apply_cancellations()
        self._submit(report)
        self._poll(report)
        self._decide_end_actions()
        self._end_actions(report)
        self._clear(report)
        report.agent_calls = self.agent_calls - calls0
        report.store_transactions = self.store_transactions - tx0
        report.events = self.events_saved - ev0
        report.agent_trouble = self._agent_trouble
        if self.update_projections and report.store_transactions:
            self.orch.projections.catch_up()
        return report

    def _discover(self) -> None:
        """Load commands accepted (or asked to cancel) by other processes since last time."""
        head = int(self.app.recorder.max_notification_id() or 0)
        if head <= self.log_position:
            return
        position = self.log_position
        while True:
            page = self.app.recorder.select_notifications(
                start=position, limit=DISCOVER_PAGE, stop=head, topics=self._discover_topics, inclusive_of_start=False
            )
            for n in page:
                command_id = UUID(str(n.originator_id))
                held = self.inflight.get(command_id)
                if held is None and n.originator_version == 1:
                    # A new command: its Accepted event is all there is to it (if another
                    # process wrote more since, our first save conflicts and we re-read).
                    created: Any = self.app.mapper.to_domain_event(n)
                    self.inflight[command_id] = created.mutate(None)
                elif held is None or held.version < n.originator_version:
                    command = self._reload(command_id)
                    if command is not None and not command.in_flight:
                        self.inflight.pop(command_id, None)
            if len(page) < DISCOVER_PAGE:
                break
            position = page[-1].id
        self.log_position = head

    def _apply_cancellations(self) -> None:
        """A cancelled command fails: its planned tasks are never submitted, its running ones stopped.

        Stopping is checked every cycle, not only when the failure is decided: a cancel
        recorded while no engine ran is decided by recovery, and stopped here.
        """
        changed = []
        for command in self.inflight.values():
            if command.cancel_reason and command.failure_reason is None and not command.ended:
                if command.planned_tasks:
                    # A create call whose answer was lost may have made some: ask the agent by key.
                    self._reconcile_ids.add(command.id)
                    continue
                command.decide_failure(f"cancelled: {command.cancel_reason}", [])
                changed.append(command)
        if changed and not self._save(*changed):
            return
        for command in self.inflight.values():
            if not command.cancel_reason or command.ended:
                continue
            for task in command.running_tasks:
                assert task.agent_task_id is not None
                if task.agent_task_id in self._stopping or not self._agent_ready():
                    continue
                try:
                    self._call(self.agent.stop_task, task.agent_task_id)
                except AgentError as exc:
                    self._agent_failed(exc)
                    return
                self._stopping.add(task.agent_task_id)

    def _submit(self, report: CycleReport) -> None:
        # Planned tasks of accepted commands, and of running ones whose create call failed:
        # that call is retried with the same keys, and the agent answers with any task it
        # had already made. (After a crash it is recovery, not this, that decides.)
        pending = [
            (c, t)
            for c in self.inflight.values()
            if c.status in (CommandStatus.ACCEPTED, CommandStatus.RUNNING)
            and c.failure_reason is None
            and c.cancel_reason is None
            and c.id not in self._reconcile_ids
            for t in c.planned_tasks
        ]
        size = self.settings.submit_batch
        for start in range(0, len(pending), size):
            if not self._agent_ready():
                return
            chunk = pending[start : start + size]
            specs = [TaskSpec(key=c.task_key(t.task_id), verb=t.verb, args=t.args) for c, t in chunk]
            try:
                results = self._call(self.agent.create_tasks, specs)
            except AgentError as exc:
                self._agent_failed(exc)
                return
            crash_point("after_agent_accept")
            touched: dict[UUID, tuple[RootCommand, list[tuple[str, str]], list[tuple[str, str]]]] = {}
            for (command, task), result in zip(chunk, results, strict=True):
                _, ok, bad = touched.setdefault(command.id, (command, [], []))
                if result.accepted:
                    assert result.agent_task_id is not None
                    ok.append((task.task_id, result.agent_task_id))
                else:
                    bad.append((task.task_id, result.error or "refused"))
            for command, ok, bad in touched.values():
                command.record_submitted(ok)
                command.record_refused(bad)
                report.submitted += len(ok)
                report.refused += len(bad)
            if not self._save(*[c for c, _, _ in touched.values()]):
                return
            crash_point("after_agent_id_recorded")
        # A refused task fails its command: the rest of its tasks will never be submitted. Which of
        # them the agent may hold anyway (a create call whose answer was lost) is asked by key first.
        for command in self.inflight.values():
            if command.failure_reason is not None and command.planned_tasks:
                self._reconcile_ids.add(command.id)

    def _end_item(self, task_id: str, status: TaskStatus, kind: EndKind, message: str, **result: Any) -> dict[str, Any]:
        return {"task_id": task_id, "status": status.value, "kind": kind.value, "message": message, "result": result}

    def _poll(self, report: CycleReport) -> None:
        if not any(c.running_tasks for c in self.inflight.values()) and not self._reconcile_ids:
            return
        if not self._agent_ready():
            return
        try:
            statuses = self._call(self.agent.task_statuses)
        except AgentError as exc:
            self._agent_failed(exc)
            return
        if self._reconcile_ids:
            commands = [self.inflight[i] for i in self._reconcile_ids if i in self.inflight]
            self._reconcile_ids.clear()
            decisions = self._reconcile(commands, statuses)
            self._stop_orphans(decisions, statuses)
        by_id = {s.agent_task_id: s for s in statuses}
        known = {t.agent_task_id for c in self.inflight.values() for t in c.tasks.values() if t.agent_task_id}
        phantoms = [s for s in statuses if s.agent_task_id not in known and parse_agent_task_key(s.key) is None]
        if phantoms and not self._phantoms_reported:
            log.warning("agent reports %d task(s) it was never given by this engine; ignoring them", len(phantoms))
            self._phantoms_reported = True
        now = self.clock()
        changed = []
        for command in self.inflight.values():
            ends = []
            for task in command.running_tasks:
                assert task.agent_task_id is not None
                seen = by_id.get(task.agent_task_id)
                if seen is None:
                    ends.append(
                        self._end_item(
                            task.task_id,
                            TaskStatus.FAILED,
                            EndKind.VANISHED,
                            f"the agent no longer knows task {task.agent_task_id}",
                        )
                    )
                elif seen.ended:
                    ends.append(self._ended(task.task_id, seen))
                elif now - seen.created_at.timestamp() > self.settings.zombie_seconds:
                    self._stop_zombie(seen)
            if ends:
                command.record_ended(ends)
                report.tasks_ended += len(ends)
                changed.append(command)
        for command in changed:
            if command.status is CommandStatus.RUNNING and command.all_tasks_ended:
                command.start_end_action()
        if self._save_commands(changed) and changed:
            crash_point("after_task_end_recorded")

    def _ended(self, task_id: str, seen: AgentTaskStatus) -> dict[str, Any]:
        aid = seen.agent_task_id
        if aid in self._zombies:
            self._zombies.discard(aid)
            return self._end_item(
                task_id,
                TaskStatus.FAILED,
                EndKind.ZOMBIE,
                f"ran longer than {self.settings.zombie_seconds:g}s; stopped",
                agent_succeeded=seen.succeeded,
            )
        self._stopping.discard(aid)
        if seen.state is AgentTaskState.ABORTED:
            return self._end_item(task_id, TaskStatus.FAILED, EndKind.STOPPED, seen.message or "stopped")
        status = TaskStatus.SUCCEEDED if seen.succeeded else TaskStatus.FAILED
        return self._end_item(task_id, status, EndKind.FINISHED, seen.message)

    def _stop_zombie(self, seen: AgentTaskStatus) -> None:
        if seen.agent_task_id in self._zombies:
            return
        try:
            self._call(self.agent.stop_task, seen.agent_task_id)
        except AgentError as exc:
            self._agent_failed(exc)
            return
        log.warning("task %s (%s) is a zombie; stopped it", seen.agent_task_id, seen.verb)
        self._zombies.add(seen.agent_task_id)

    def _decide_end_actions(self) -> None:
        """Commands whose tasks have all ended (or that had none) get their end action due."""
        due = [
            c
            for c in self.inflight.values()
            if c.status in (CommandStatus.ACCEPTED, CommandStatus.RUNNING) and c.all_tasks_ended
        ]
        for command in due:
            command.start_end_action()
        self._save_commands(due)

    def _end_actions(self, report: CycleReport) -> None:
        now = self._now_dt()
        due = [
            c
            for c in self.inflight.values()
            if c.status is CommandStatus.ENDING
            and c.end_attempt is not None
            and (c.end_attempt.retry_at is None or c.end_attempt.retry_at <= now)
        ]
        ready = [c for c in due if self._revert_on_agent(c)]
        for start in range(0, len(ready), END_ACTION_BATCH):
            self._end_batch(ready[start : start + END_ACTION_BATCH], report)

    def _end_batch(self, ready: list[RootCommand], report: CycleReport) -> None:
        """End these commands in one transaction (their inventory changes and lock releases with them)."""
        crash_point("in_end_action")
        unit = InventoryUnit(self.orch)
        unit.prefetch(use.ref for command in ready for use in command.entities)
        try:
            for command in ready:
                self._run_end_action(command, unit)
        except _EndActionRaised as raised:
            # Discard every change of this batch; count the attempt of the one that raised,
            # and end the others one command at a time.
            self.orch.forget(e.id for e in unit.entities.values())
            for command in ready:
                self._reload(command.id)
            self._end_action_failed(self.inflight[raised.command_id], raised.error)
            for command in ready:
                if command.id != raised.command_id:
                    self._end_one(command.id, report)
            return
        if self._save(*ready, *unit.touched()):
            report.commands_ended += len(ready)
            crash_point("after_end_action")

    def _revert_on_agent(self, command: RootCommand) -> bool:
        """Undo on the agent what a failing command's tasks did; False while the agent is away."""
        if command.due_end_action is not EndAction.FAILURE or not get_flow(command.flow).revert_on_failure:
            return True
        if not self._agent_ready():
            return False
        reverted = []
        for task in command.tasks.values():
            if task.effect_done and task.agent_task_id and not task.cleared:
                try:
                    self._call(self.agent.revert_task, task.agent_task_id)
                except AgentError as exc:
                    self._agent_failed(exc)
                    return False
                reverted.append(task.task_id)
        self._reverted[command.id] = reverted
        return True

    def _run_end_action(self, command: RootCommand, unit: InventoryUnit) -> None:
        flow = get_flow(command.flow)
        action = command.due_end_action
        try:
            if action is EndAction.SUCCESS:
                flow.end_successfully(command, unit)
            else:
                flow.end_with_failure(command, unit)
        except Exception as exc:
            raise _EndActionRaised(command.id, exc) from exc
        unit.release_locks(command)
        command.end(reverted=self._reverted.pop(command.id, []))

    def _end_one(self, command_id: UUID, report: CycleReport) -> None:
        command = self.inflight[command_id]
        unit = InventoryUnit(self.orch)
        try:
            self._run_end_action(command, unit)
        except _EndActionRaised as raised:
            self.orch.forget(e.id for e in unit.entities.values())
            command = self._reload(command_id) or command
            self._end_action_failed(command, raised.error)
            return
        if self._save(command, *unit.touched()):
            report.commands_ended += 1
            crash_point("after_end_action")

    def _end_action_failed(self, command: RootCommand, error: BaseException) -> None:
        assert command.end_attempt is not None
        attempt = command.end_attempt.attempts + 1
        action = command.end_attempt.action
        text = f"{type(error).__name__}: {error}"
        log.error(
            "%s of %s failed (attempt %d of %d): %s",
            action.value,
            command.id,
            attempt,
            self.settings.end_action_attempts,
            text,
        )
        if attempt < self.settings.end_action_attempts:
            delay = self.settings.end_action_backoff * 2 ** (attempt - 1)
            command.record_end_action_failed(attempt, text, self._now_dt() + timedelta(seconds=delay), None)
            self._save(command)
        elif action is EndAction.SUCCESS:
            log.error("giving up on %s of %s; it ends with failure and is flagged", action.value, command.id)
            command.record_end_action_failed(attempt, text, None, EndAction.FAILURE)
            self._save(command)
        else:
            log.error("giving up on %s of %s; releasing its locks, flagged", action.value, command.id)
            command.record_end_action_failed(attempt, text, None, None)
            unit = InventoryUnit(self.orch)
            unit.release_locks(command)
            command.end(flagged=True, reverted=self._reverted.pop(command.id, []))
            self._save(command, *unit.touched())

    def _clear(self, report: CycleReport) -> None:
        ended = [c for c in self.inflight.values() if c.ended]
        uncleared = [(c, t) for c in ended for t in c.uncleared_tasks]
        if uncleared and self._agent_ready():
            try:
                self._call(self.agent.clear_tasks, [t.agent_task_id for _, t in uncleared])
            except AgentError as exc:
                self._agent_failed(exc)
                return
            crash_point("after_agent_clear")
            for command in ended:
                command.record_cleared([t.task_id for t in command.uncleared_tasks])
            if self._save_commands(ended):
                report.cleared += len(uncleared)
        for command in ended:
            if not command.in_flight:
                self.inflight.pop(command.id, None)

    # ---- running -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> None:
        # The engine holds many long-lived aggregates; collecting the young generation less
        # often keeps the collector from rescanning them (about 10% of a busy cycle).
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), 50, 50)
        try:
            self._run(stop, until_idle=until_idle, on_cycle=on_cycle)
        finally:
            gc.set_threshold(*thresholds)

    def _run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool,
        on_cycle: Callable[[CycleReport], None] | None,
    ) -> None:
        while not stop.is_set():
            report = self.cycle()
            if on_cycle:
                on_cycle(report)
            if until_idle and self.idle:
                self.orch.projections.catch_up()
                return
            if not report.progressed:
                stop.wait(self.settings.poll_interval)


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
