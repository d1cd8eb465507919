"""Clearing: the ended commands' tasks are cleared on the agent in one call, and that is recorded.

Leftover agent tasks of commands no longer in flight (found by recovery) are
cleared in the same call once the agent reports them ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from orchestrator.agent.port import AgentTaskStatus
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.report import CycleReport
from orchestrator.engine.stopping import Stopper
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.store.unit_of_work import InventoryUnit


class Clearer:
    def __init__(self, link: AgentLink, writer: CommandWriter, held: dict[UUID, RootCommand], stopper: Stopper) -> None:
        self.link = link
        self.writer = writer
        self.held = held
        self.stopper = stopper

    def run(self, report: CycleReport, statuses: Sequence[AgentTaskStatus] | None) -> None:
        ended = [c for c in self.held.values() if c.ended]
        running = self._still_running(ended, statuses)
        uncleared = {
            c.id: [t.task_id for t in c.uncleared_tasks if t.agent_task_id not in running]
            for c in ended
            if c.uncleared_tasks
        }
        agent_ids = [
            t.agent_task_id
            for c in ended
            for t in c.uncleared_tasks
            if t.agent_task_id and t.agent_task_id not in running
        ]
        leftovers = self.stopper.ended_leftovers(statuses)
        if (agent_ids or leftovers) and self.link.ready():
            try:
                self.link.call(self.link.agent.clear_tasks, [*agent_ids, *leftovers])
            except AgentError:
                return
            crash_point("after_agent_clear")
            self.stopper.leftovers.difference_update(leftovers)
            # Not waiting for the disk: lost with the database's machine, the clearing is made again.
            self.writer.apply({ident: _record_cleared(tasks) for ident, tasks in uncleared.items()}, flush=False)
            report.cleared += len(agent_ids) + len(leftovers)
        for ident in [c.id for c in ended]:
            command = self.held.get(ident)
            if command is not None and not command.in_flight:
                del self.held[ident]

    @staticmethod
    def _still_running(ended: list[RootCommand], statuses: Sequence[AgentTaskStatus] | None) -> set[str | None]:
        """Tasks of ended commands the agent may still run (a terminated command's): cleared once they stop."""
        stopping = {t.agent_task_id for c in ended for t in c.tasks_to_stop}
        if not stopping:
            return set()
        if statuses is None:
            return set(stopping)  # not asked this cycle: wait for an answer
        live = {s.agent_task_id for s in statuses if not s.ended}
        return {a for a in stopping if a in live}


def _record_cleared(task_ids: list[str]) -> Change:
    def change(command: RootCommand, unit: InventoryUnit) -> None:
        command.record_cleared([t for t in task_ids if not command.tasks[t].cleared])

    return change
