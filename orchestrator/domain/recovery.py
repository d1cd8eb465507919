"""What recovery decides for a command found in flight after an engine start.

One pure function, `decide`, serves both the engine's recovery and the
read-only crash-replay inspection, so what the inspection predicts is what
recovery does. The rules are those of DESIGN.md section 6.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.agent.interface import AgentTaskStatus
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


@dataclass
class Decision:
    verdict: Verdict
    reason: str
    provisional: bool = False  # decided without the agent's task list
    orphans: list[tuple[str, str]] = field(default_factory=list)  # (task_id, agent_task_id)
    unsubmitted: list[str] = field(default_factory=list)  # planned, not on the agent
    vanished: list[str] = field(default_factory=list)  # the agent no longer knows them
    finished_while_down: list[str] = field(default_factory=list)  # ended on the agent meanwhile

    @property
    def needs_recovery(self) -> bool:
        return self.verdict is not Verdict.NOTHING


class AgentView:
    """The agent's task list, indexed by idempotency key and by agent task id."""

    def __init__(self, statuses: Iterable[AgentTaskStatus]) -> None:
        self.by_key: dict[str, AgentTaskStatus] = {}
        self.by_id: dict[str, AgentTaskStatus] = {}
        for status in statuses:
            self.by_key[status.key] = status
            self.by_id[status.agent_task_id] = status


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
    decision = Decision(Verdict.RESUME, "", provisional)
    for task in command.planned_tasks:
        found = agent.by_key.get(command.task_key(task.task_id)) if agent is not None else None
        if found is not None:
            decision.orphans.append((task.task_id, found.agent_task_id))
        else:
            decision.unsubmitted.append(task.task_id)
    if agent is not None:
        for task in command.running_tasks:
            seen = agent.by_id.get(task.agent_task_id or "")
            if seen is None:
                decision.vanished.append(task.task_id)
            elif seen.ended:
                decision.finished_while_down.append(task.task_id)

    if command.status is CommandStatus.ACCEPTED and not decision.orphans and not command.cancel_reason:
        # No agent id was recorded and the agent holds none of its keys: nothing was submitted.
        decision.verdict = Verdict.START
        decision.unsubmitted = []
        decision.reason = "accepted; none of its tasks is on the agent: submit them"
        if provisional:
            decision.reason = "accepted; no agent task id recorded (the agent may hold some: not asked)"
        return decision
    reasons = [f"cancelled: {command.cancel_reason}"] if command.cancel_reason else []
    planned = len(decision.orphans) + len(decision.unsubmitted)
    if planned:
        reasons.append(f"{planned} of {len(command.tasks)} expected tasks have no agent task id")
        if decision.orphans:
            reasons.append(f"{len(decision.orphans)} found on the agent by key: stop and clear them")
    if decision.vanished:
        reasons.append(f"{len(decision.vanished)} task(s) no longer known to the agent")
    if reasons or command.failure_reason:
        decision.verdict = Verdict.FAIL
        decision.reason = "; ".join(reasons) or command.failure_reason or "failure already decided"
        return decision
    if command.all_tasks_ended:
        decision.verdict = Verdict.RUN_END_ACTION
        decision.reason = "every task had ended; the end action is due"
        return decision
    running = len(command.running_tasks)
    decision.reason = f"{running} task(s) running on the agent"
    if decision.finished_while_down:
        decision.reason += f", {len(decision.finished_while_down)} ended while the engine was down"
    return decision
