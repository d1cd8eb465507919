"""The root command aggregate: one event stream per root command.

A root command owns its child commands and every task they expect. All of it
is recorded by the `Accepted` event, in the same transaction as the entity
locks, before the agent is called (guarantee G1). Every later lifecycle change
is an event: agent task ids attached, submissions refused,
tasks ended, failure decided, recovery verdicts, the end action started /
failed / finished, and tasks cleared on the agent.

The aggregate is pure: it never calls the agent or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from orchestrator.domain.model import (
    DEFAULT_POOL,
    CommandStatus,
    EndAction,
    EndKind,
    EntityUse,
    FailureCause,
    TaskStatus,
    agent_task_key,
)
from orchestrator.domain.payloads import (
    AgentIdPair,
    ChildRecord,
    EntityRecord,
    RefusalPair,
    StopPair,
    TaskEndRecord,
)
from orchestrator.errors import CommandRefusedError

TERMINATED = "terminated"  # a task's stop reason when an operator terminated its command


@dataclass
class TaskState:
    task_id: str
    child_id: str
    verb: str
    args: dict[str, Any]
    entity_records: list[EntityRecord]  # parsed when first asked (recovery never asks)
    agent_task_id: str | None = None
    status: TaskStatus = TaskStatus.PLANNED
    end_kind: EndKind | None = None
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    orphan: bool = False  # created on the agent, id found by key after its command had failed: stop it
    stop_reason: str | None = None  # the engine decided to stop it (a zombie); recorded before the stop
    cleared: bool = False  # cleared on the agent, or never there
    submitted_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def entities(self) -> list[EntityUse]:
        return [EntityUse.from_record(e) for e in self.entity_records]

    @property
    def ended(self) -> bool:
        return self.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)

    @property
    def effect_done(self) -> bool:
        """The agent did this task's work (even if the task counts as failed, e.g. a zombie)."""
        return self.status is TaskStatus.SUCCEEDED or bool(self.result.get("agent_succeeded"))

    @property
    def on_agent(self) -> bool:
        """The agent holds (or held) this task and it has not been cleared."""
        return self.agent_task_id is not None and not self.cleared


@dataclass
class ChildState:
    child_id: str
    command_type: str
    task_ids: list[str]
    outcome: str | None = None


@dataclass
class EndAttempt:
    action: EndAction
    attempts: int = 0
    last_error: str = ""
    retry_at: datetime | None = None


class RootCommand(Aggregate):
    """A user command and everything it expects of the agent."""

    # ---- events ------------------------------------------------------------------------

    class Accepted(Aggregate.Created):
        flow: str
        params: dict[str, Any]
        summary: str
        entities: list[EntityRecord]
        children: list[ChildRecord]
        pool_id: str  # the storage pool whose agent runs its tasks
        retry_of: str | None  # the command this one retries

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 knew one agent, the default pool's, and no retries."""
            state["pool_id"] = DEFAULT_POOL
            state["retry_of"] = None

        def mutate(self, aggregate: Any) -> Any:
            """Build the command directly: recovery replays thousands, and the library's
            generic construction (introspecting __init__ for each) costs more than the rest."""
            assert aggregate is None
            command = RootCommand.__new__(RootCommand)
            command.__base_init__(self.originator_id, self.originator_version, self.timestamp)
            command.__init__(  # type: ignore[misc]
                self.flow, self.params, self.summary, self.entities, self.children, self.pool_id, self.retry_of
            )
            return command

    class SubmissionStarted(Aggregate.Event):
        """Written by versions before 0.1 (the agent's keys now tell recovery); read, never written."""

        def apply(self, aggregate: RootCommand) -> None:
            aggregate._mark_started(self.timestamp)

    class TasksSubmitted(Aggregate.Event):
        submitted: list[AgentIdPair]

        def apply(self, aggregate: RootCommand) -> None:
            aggregate._mark_started(self.timestamp)
            for task_id, agent_task_id in self.submitted:
                task = aggregate.tasks[task_id]
                task.agent_task_id = agent_task_id
                task.status = TaskStatus.RUNNING
                task.submitted_at = self.timestamp

    class TasksRefused(Aggregate.Event):
        refused: list[RefusalPair]

        def apply(self, aggregate: RootCommand) -> None:
            aggregate._mark_started(self.timestamp)
            for task_id, message in self.refused:
                aggregate._end_task(task_id, TaskStatus.FAILED, EndKind.REFUSED, message, {}, self.timestamp)
                aggregate.tasks[task_id].cleared = True  # nothing on the agent
            if aggregate.failure_reason is None:
                aggregate.failure_reason = f"the agent refused {len(self.refused)} task(s)"

    class OrphansAdopted(Aggregate.Event):
        orphans: list[AgentIdPair]

        def apply(self, aggregate: RootCommand) -> None:
            aggregate._mark_started(self.timestamp)
            for task_id, agent_task_id in self.orphans:
                task = aggregate.tasks[task_id]
                task.agent_task_id = agent_task_id
                task.status = TaskStatus.RUNNING
                task.orphan = True
                task.submitted_at = self.timestamp

    class TasksEnded(Aggregate.Event):
        ended: list[TaskEndRecord]

        def apply(self, aggregate: RootCommand) -> None:
            for item in self.ended:
                aggregate._end_task(
                    item["task_id"],
                    TaskStatus(item["status"]),
                    EndKind(item["kind"]),
                    item.get("message", ""),
                    item.get("result", {}),
                    self.timestamp,
                )

    class FailureDecided(Aggregate.Event):
        reason: str
        abandoned: list[str]  # planned tasks that will never be submitted
        cause: str  # a FailureCause: why this command fails

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 had no cause; its reason says which it was."""
            reason = str(state.get("reason", ""))
            if reason.startswith("cancelled"):
                state["cause"] = FailureCause.CANCELLED.value
            elif "no agent task id" in reason:
                state["cause"] = FailureCause.SUBMISSION_CUT_SHORT.value
            else:
                state["cause"] = FailureCause.REFUSED.value

        def apply(self, aggregate: RootCommand) -> None:
            if aggregate.failure_reason is None:
                aggregate.failure_reason = self.reason
            for task_id in self.abandoned:
                aggregate._end_task(task_id, TaskStatus.FAILED, EndKind.NOT_SUBMITTED, self.reason, {}, self.timestamp)
                aggregate.tasks[task_id].cleared = True
            aggregate._mark_started(self.timestamp)

    class StopsDecided(Aggregate.Event):
        """The engine will stop these running tasks (recorded first, so a restart still knows why)."""

        stops: list[StopPair]

        def apply(self, aggregate: RootCommand) -> None:
            for task_id, reason in self.stops:
                aggregate.tasks[task_id].stop_reason = reason

    class Terminated(Aggregate.Event):
        """An operator ended the command at once (its agent is gone for good): it fails, flagged.

        Every task not yet ended is marked terminated; those the agent may still run are
        stopped and cleared by whichever engine holds the command, if the agent comes back.
        """

        reason: str
        terminated: list[str]
        never_submitted: list[str]  # of those, the tasks no agent ever had (cleared at once)

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Version 1 did not say which tasks never reached the agent (read models then count them
            as still to clear); the aggregate itself decides from its tasks either way."""
            state["never_submitted"] = []

        def apply(self, aggregate: RootCommand) -> None:
            message = f"terminated by the operator: {self.reason}"
            for task_id in self.terminated:
                task = aggregate.tasks[task_id]
                on_agent = task.agent_task_id is not None
                aggregate._end_task(task_id, TaskStatus.FAILED, EndKind.TERMINATED, message, {}, self.timestamp)
                if on_agent:
                    task.stop_reason = TERMINATED
                else:
                    task.cleared = True  # never reached the agent
            aggregate.terminate_reason = self.reason
            aggregate.status = CommandStatus.FAILED
            aggregate.flagged = True
            aggregate.outcome_reason = message
            aggregate.ended_at = self.timestamp

    class RetriedAs(Aggregate.Event):
        """A new command was accepted to do this one's work again."""

        command_id: str

        def apply(self, aggregate: RootCommand) -> None:
            aggregate.retries.append(self.command_id)

    class Recovered(Aggregate.Event):
        """What recovery decided for this command after an engine start."""

        verdict: str
        reason: str

        def apply(self, aggregate: RootCommand) -> None:
            aggregate.recoveries.append((self.timestamp, self.verdict, self.reason))

    class CancelRequested(Aggregate.Event):
        reason: str

        def apply(self, aggregate: RootCommand) -> None:
            aggregate.cancel_reason = self.reason

    class EndActionStarted(Aggregate.Event):
        action: str

        def apply(self, aggregate: RootCommand) -> None:
            aggregate.status = CommandStatus.ENDING
            aggregate.end_attempt = EndAttempt(EndAction(self.action))

    class EndActionFailed(Aggregate.Event):
        action: str
        attempt: int
        error: str
        retry_at: datetime | None
        fallback: str | None  # the end action to run next, when this one gives up

        def apply(self, aggregate: RootCommand) -> None:
            attempt = aggregate.end_attempt or EndAttempt(EndAction(self.action))
            attempt.attempts = self.attempt
            attempt.last_error = self.error
            attempt.retry_at = self.retry_at
            if self.fallback is not None:
                aggregate.flagged = True
                if aggregate.failure_reason is None:
                    aggregate.failure_reason = f"{self.action} gave up after {self.attempt} attempt(s): {self.error}"
                attempt = EndAttempt(EndAction(self.fallback))
            aggregate.end_attempt = attempt

    class Ended(Aggregate.Event):
        outcome: str  # succeeded | failed
        reason: str
        flagged: bool
        children: dict[str, str]  # child_id -> outcome
        reverted: list[str]  # tasks whose effect the engine reverted on the agent

        def apply(self, aggregate: RootCommand) -> None:
            aggregate.status = CommandStatus(self.outcome)
            aggregate.reverted = list(self.reverted)
            aggregate.outcome_reason = self.reason
            aggregate.flagged = aggregate.flagged or self.flagged
            aggregate.ended_at = self.timestamp
            for child_id, outcome in self.children.items():
                aggregate.children[child_id].outcome = outcome

    class TasksCleared(Aggregate.Event):
        task_ids: list[str]

        def apply(self, aggregate: RootCommand) -> None:
            for task_id in self.task_ids:
                aggregate.tasks[task_id].cleared = True

    # ---- construction --------------------------------------------------------------------

    def __init__(
        self,
        flow: str,
        params: dict[str, Any],
        summary: str,
        entities: list[EntityRecord],
        children: list[ChildRecord],
        pool_id: str = DEFAULT_POOL,
        retry_of: str | None = None,
    ) -> None:
        self.flow = flow
        self.pool_id = pool_id
        self.retry_of = retry_of
        self.retries: list[str] = []
        self.terminate_reason: str | None = None
        self.params = params
        self.summary = summary
        self.entities = [EntityUse.from_record(e) for e in entities]
        self.children: dict[str, ChildState] = {}
        self.tasks: dict[str, TaskState] = {}
        for child in children:
            task_ids = [t["task_id"] for t in child["tasks"]]
            self.children[child["child_id"]] = ChildState(child["child_id"], child["command_type"], task_ids)
            for t in child["tasks"]:
                self.tasks[t["task_id"]] = TaskState(
                    task_id=t["task_id"],
                    child_id=child["child_id"],
                    verb=t["verb"],
                    args=dict(t["args"]),
                    entity_records=t["entities"],
                )
        self.status = CommandStatus.ACCEPTED
        self.failure_reason: str | None = None
        self.cancel_reason: str | None = None
        self.outcome_reason = ""
        self.flagged = False
        self.end_attempt: EndAttempt | None = None
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.recoveries: list[tuple[datetime, str, str]] = []
        self.reverted: list[str] = []

    @classmethod
    def accept(
        cls,
        command_id: UUID,
        flow: str,
        params: dict[str, Any],
        summary: str,
        entities: list[EntityUse],
        children: list[ChildRecord],
        *,
        pool_id: str = DEFAULT_POOL,
        retry_of: UUID | None = None,
    ) -> RootCommand:
        return cls._create(
            cls.Accepted,
            id=command_id,
            flow=flow,
            params=params,
            summary=summary,
            entities=[e.to_record() for e in entities],
            children=children,
            pool_id=pool_id,
            retry_of=str(retry_of) if retry_of else None,
        )

    # ---- queries -------------------------------------------------------------------------

    @property
    def accepted_at(self) -> datetime:
        return self.created_on

    def task_key(self, task_id: str) -> str:
        return agent_task_key(self.id, task_id)

    @property
    def planned_tasks(self) -> list[TaskState]:
        return [t for t in self.tasks.values() if t.status is TaskStatus.PLANNED]

    @property
    def running_tasks(self) -> list[TaskState]:
        return [t for t in self.tasks.values() if t.status is TaskStatus.RUNNING]

    @property
    def all_tasks_ended(self) -> bool:
        return all(t.ended for t in self.tasks.values())

    @property
    def ended(self) -> bool:
        return self.status.ended

    @property
    def uncleared_tasks(self) -> list[TaskState]:
        return [t for t in self.tasks.values() if t.on_agent]

    @property
    def tasks_to_stop(self) -> list[TaskState]:
        """Tasks whose stop is decided: orphans, zombies, a cancelled command's, a terminated one's."""
        if self.terminate_reason is not None:
            return [t for t in self.tasks.values() if t.stop_reason == TERMINATED and t.on_agent]
        if self.ended:
            return []
        return [t for t in self.running_tasks if t.orphan or t.stop_reason or self.cancel_reason is not None]

    @property
    def submittable(self) -> bool:
        """Its planned tasks go to the agent as usual (nothing has decided that it fails)."""
        return (
            self.status in (CommandStatus.ACCEPTED, CommandStatus.RUNNING)
            and self.failure_reason is None
            and self.cancel_reason is None
        )

    @property
    def in_flight(self) -> bool:
        """Not ended, or ended with tasks still to clear on the agent."""
        return not self.ended or bool(self.uncleared_tasks)

    @property
    def due_end_action(self) -> EndAction:
        """Success only if every expected task was submitted and succeeded (G1)."""
        if self.end_attempt is not None:
            return self.end_attempt.action
        clean = self.failure_reason is None and self.cancel_reason is None
        if clean and all(t.status is TaskStatus.SUCCEEDED for t in self.tasks.values()):
            return EndAction.SUCCESS
        return EndAction.FAILURE

    def failure_summary(self) -> str:
        if self.cancel_reason:
            return f"cancelled: {self.cancel_reason}"
        if self.failure_reason:
            return self.failure_reason
        failed = [t for t in self.tasks.values() if t.status is TaskStatus.FAILED]
        if failed:
            first = failed[0]
            detail = f"{first.end_kind}: {first.message}" if first.message else str(first.end_kind)
            return f"{len(failed)} of {len(self.tasks)} task(s) failed ({first.verb} {detail})"
        return "failed"

    def child_outcomes(self) -> dict[str, str]:
        out = {}
        for child in self.children.values():
            ok = all(self.tasks[t].status is TaskStatus.SUCCEEDED for t in child.task_ids)
            out[child.child_id] = "succeeded" if ok else "failed"
        return out

    # ---- commands (each triggers one event, or none when there is nothing to record) -------

    def record_submitted(self, submitted: list[tuple[str, str]]) -> None:
        if submitted:
            self.trigger_event(self.TasksSubmitted, submitted=[list(s) for s in submitted])

    def record_refused(self, refused: list[tuple[str, str]]) -> None:
        if refused:
            self.trigger_event(self.TasksRefused, refused=[list(r) for r in refused])

    def adopt_orphans(self, orphans: list[tuple[str, str]]) -> None:
        if orphans:
            self.trigger_event(self.OrphansAdopted, orphans=[list(o) for o in orphans])

    def record_ended(self, ended: list[TaskEndRecord]) -> None:
        if ended:
            self.trigger_event(self.TasksEnded, ended=ended)

    def decide_failure(self, reason: str, abandoned: list[str], cause: FailureCause) -> None:
        self.trigger_event(self.FailureDecided, reason=reason, abandoned=abandoned, cause=cause.value)

    def decide_stops(self, stops: list[tuple[str, str]]) -> None:
        if stops:
            self.trigger_event(self.StopsDecided, stops=[list(s) for s in stops])

    def terminate(self, reason: str) -> None:
        """End the command at once, failed and flagged (refused once it has ended)."""
        if self.ended:
            raise CommandRefusedError(
                f"command {self.id} has already ended ({self.status.value}); nothing to terminate"
            )
        unfinished = [t for t in self.tasks.values() if not t.ended]
        self.trigger_event(
            self.Terminated,
            reason=reason,
            terminated=[t.task_id for t in unfinished],
            never_submitted=[t.task_id for t in unfinished if t.agent_task_id is None],
        )

    def record_retry(self, command_id: UUID) -> None:
        self.trigger_event(self.RetriedAs, command_id=str(command_id))

    def record_recovery(self, verdict: str, reason: str) -> None:
        self.trigger_event(self.Recovered, verdict=verdict, reason=reason)

    def request_cancel(self, reason: str) -> bool:
        """Record the cancel; False if one was already requested. Refused once the end action began."""
        if self.ended:
            raise CommandRefusedError(f"command {self.id} has already ended ({self.status.value}); nothing to cancel")
        if self.status is CommandStatus.ENDING:
            outcome = "succeeded" if self.due_end_action is EndAction.SUCCESS else "failed"
            raise CommandRefusedError(
                f"too late to cancel command {self.id}: its end action has begun; it will end as {outcome}"
            )
        if self.cancel_reason is not None:
            return False
        self.trigger_event(self.CancelRequested, reason=reason)
        return True

    def start_end_action(self) -> None:
        if self.status is not CommandStatus.ENDING:
            self.trigger_event(self.EndActionStarted, action=self.due_end_action.value)

    def record_end_action_failed(
        self, attempt: int, error: str, retry_at: datetime | None, fallback: EndAction | None
    ) -> None:
        assert self.end_attempt is not None
        self.trigger_event(
            self.EndActionFailed,
            action=self.end_attempt.action.value,
            attempt=attempt,
            error=error[:500],
            retry_at=retry_at,
            fallback=fallback.value if fallback else None,
        )

    def end(self, *, flagged: bool = False, reverted: list[str] | None = None) -> None:
        """Record the end; a command whose success gave up and fell back to failure stays flagged."""
        flagged = flagged or self.flagged
        action = self.due_end_action
        succeeded = action is EndAction.SUCCESS and not flagged
        reason = "all tasks succeeded" if succeeded else self.failure_summary()
        attempt = self.end_attempt
        if flagged and attempt is not None and attempt.last_error:
            reason = f"{reason}; {attempt.action.value} gave up: {attempt.last_error}"
        self.trigger_event(
            self.Ended,
            outcome="succeeded" if succeeded else "failed",
            reason=reason,
            flagged=flagged,
            children=self.child_outcomes(),
            reverted=list(reverted or []),
        )

    def record_cleared(self, task_ids: list[str]) -> None:
        if task_ids:
            self.trigger_event(self.TasksCleared, task_ids=task_ids)

    # ---- internals -----------------------------------------------------------------------

    def _mark_started(self, at: datetime) -> None:
        if self.status is CommandStatus.ACCEPTED:
            self.status = CommandStatus.RUNNING
            self.started_at = at

    def _end_task(
        self,
        task_id: str,
        status: TaskStatus,
        kind: EndKind,
        message: str,
        result: dict[str, Any],
        at: datetime,
    ) -> None:
        task = self.tasks[task_id]
        task.status = status
        task.end_kind = kind
        task.message = message
        task.result = dict(result)
        task.ended_at = at
