"""Stopping what was decided to stop: orphans, zombies, the tasks of a cancelled command,
and leftover agent tasks of commands no longer in flight.

The decision to stop a task is durable (an event on its command), the stop call
is not: every engine that holds the command makes the call until the agent
reports the task ended, so a crash between the decision and the call (say, in
recovery) never leaves a task running that was meant to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from orchestrator.agent.port import AgentTaskStatus
from orchestrator.domain.commands import RootCommand
from orchestrator.engine.agent_link import AgentLink
from orchestrator.errors import AgentError


class Stopper:
    def __init__(self, link: AgentLink, held: dict[UUID, RootCommand]) -> None:
        self.link = link
        self.held = held
        self.asked: set[str] = set()  # agent task ids this process asked to stop
        self.leftovers: set[str] = set()  # agent tasks of ours whose command no longer expects them

    def run(self, statuses: Sequence[AgentTaskStatus] | None) -> int:
        """Ask the agent to stop every task that must stop and is not known to have ended."""
        running = {s.agent_task_id for s in statuses if not s.ended} if statuses is not None else None
        wanted = [t.agent_task_id for c in self.held.values() for t in c.tasks_to_stop if t.agent_task_id]
        if running is not None:
            wanted += [a for a in self.leftovers if a in running]
        stopped = 0
        for agent_task_id in wanted:
            if agent_task_id in self.asked or (running is not None and agent_task_id not in running):
                continue
            if not self.link.ready():
                break
            try:
                self.link.call(self.link.agent.stop_task, agent_task_id)
            except AgentError:
                break
            self.asked.add(agent_task_id)
            stopped += 1
        return stopped

    def ended_leftovers(self, statuses: Sequence[AgentTaskStatus] | None) -> list[str]:
        """Leftovers the agent reports ended (ready to clear); those it no longer holds are let go."""
        if statuses is None or not self.leftovers:
            return []
        by_id = {s.agent_task_id: s for s in statuses}
        self.leftovers = {a for a in self.leftovers if a in by_id}
        return [a for a in self.leftovers if by_id[a].ended]
