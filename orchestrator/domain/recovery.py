"""What recovery decides for a command found in flight after an engine start.

One pure function, `decide`, serves both the engine's recovery and the
read-only crash-replay inspection, so what the inspection predicts is what
recovery does. The rules are those of docs/recovery.md. It reads only the few
facts it needs of the agent's tasks (`AgentTaskFact`), never the wire models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus


class Verdict(StrEnum):
    START = "start"  # accepted, submission never began: submit as usual
    RESUME = "resume polling"
    FAIL = "fail"
    RUN_END_ACTION = "run end action"
    RUN_END_ACTION_AGAIN = "run end action again"
    CLEAR_ONLY = "clear only"
    NOTHING = "nothing"  # ended and cleared: not in flight


@dataclass(frozen=True)
class AgentTaskFact:
    """What recovery needs to know of one task the agent holds."""

    agent_task_id: str
    key: str
    ended: bool


@dataclass
class Decision:
    verdict: Verdict
    reason: str
    provisional: bool = False  # decided without the agent's task list
    orphans: list[tuple[str, str]] = field(default_factory=list)  # (task_id, agent_task_id): found by key
    unsubmitted: list[str] = field(default_factory=list)  # planned, not on the agent
    vanished: list[str] = field(default_factory=list)  # the agent no longer knows them
    finished_while_down: list[str] = field(default_factory=list)  # ended on the agent meanwhile
    to_stop: list[str] = field(default_factory=list)  # running tasks whose stop was decided and not yet done

    @property
    def needs_recovery(self) -> bool:
        return self.verdict is not Verdict.NOTHING


class AgentView:
    """The agent's task list, indexed by idempotency key and by agent task id."""

    def __init__(self, facts: Iterable[AgentTaskFact]) -> None:
        self.by_key: dict[str, AgentTaskFact] = {}
        self.by_id: dict[str, AgentTaskFact] = {}
        for fact in facts:
            self.by_key[fact.key] = fact
            self.by_id[fact.agent_task_id] = fact


def decide(command: RootCommand, agent: AgentView | None) -> Decision:
    """Decide for one root command, given the agent's task list.

    Without the agent's task list (`None`), the verdict is marked provisional:
    orphans, vanished tasks and tasks that ended meanwhile cannot be known.
    """
    provisional = agent is None
    if command.ended:
        if command.uncleared_tasks:
            n = len(command.uncleared_tasks)
            reason = f"command {command.status.value}; {n} task(s) still to clear on the agent"
            return Decision(Verdict.CLEAR_ONLY, reason, provisional)
        return Decision(Verdict.NOTHING, f"command {command.status.value} and cleared")
    if command.status is CommandStatus.ENDING:
        assert command.end_attempt is not None
        reason = f"{command.end_attempt.action.value} had started and did not finish"
        return Decision(Verdict.RUN_END_ACTION_AGAIN, reason, provisional)
    decision = _facts(command, agent)
    if command.status is CommandStatus.ACCEPTED and not decision.orphans and not command.cancel_reason:
        # No agent id was recorded and the agent holds none of its keys: nothing was submitted.
        decision.verdict = Verdict.START
        decision.unsubmitted = []
        decision.reason = "accepted; none of its tasks is on the agent: submit them"
        if provisional:
            decision.reason = "accepted; no agent task id recorded (the agent may hold some: not asked)"
        return decision
    reasons = _failure_reasons(command, decision)
    if reasons or command.failure_reason:
        decision.verdict = Verdict.FAIL
        decision.reason = "; ".join(reasons) or command.failure_reason or "failure already decided"
        return decision
    if command.all_tasks_ended:
        decision.verdict = Verdict.RUN_END_ACTION
        decision.reason = "every task had ended; the end action is due"
        return decision
    decision.reason = f"{len(command.running_tasks)} task(s) running on the agent"
    if decision.finished_while_down:
        decision.reason += f", {len(decision.finished_while_down)} ended while the engine was down"
    return decision


def _facts(command: RootCommand, agent: AgentView | None) -> Decision:
    """What the agent's task list says of this command's tasks."""
    decision = Decision(Verdict.RESUME, "", agent is None)
    for task in command.planned_tasks:
        found = agent.by_key.get(command.task_key(task.task_id)) if agent is not None else None
        if found is not None:
            decision.orphans.append((task.task_id, found.agent_task_id))
        else:
            decision.unsubmitted.append(task.task_id)
    stopping = {t.task_id for t in command.tasks_to_stop}
    for task in command.running_tasks:
        seen = agent.by_id.get(task.agent_task_id or "") if agent is not None else None
        if agent is not None and seen is None:
            decision.vanished.append(task.task_id)
        elif seen is not None and seen.ended:
            decision.finished_while_down.append(task.task_id)
        elif task.task_id in stopping:
            decision.to_stop.append(task.task_id)
    return decision


def _failure_reasons(command: RootCommand, decision: Decision) -> list[str]:
    reasons = [f"cancelled: {command.cancel_reason}"] if command.cancel_reason else []
    planned = len(decision.orphans) + len(decision.unsubmitted)
    if planned:
        reasons.append(f"{planned} of {len(command.tasks)} expected tasks have no agent task id")
        if decision.orphans:
            reasons.append(f"{len(decision.orphans)} found on the agent by key: stop and clear them")
    if decision.to_stop and not command.cancel_reason:  # a cancelled command's tasks all stop: said already
        reasons.append(f"{len(decision.to_stop)} task(s) still to stop (orphans or zombies)")
    if decision.vanished:
        reasons.append(f"{len(decision.vanished)} task(s) no longer known to the agent")
    return reasons
