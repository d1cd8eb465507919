"""Submitting the planned tasks of commands to the agent, in batches, recording the agent ids.

Every task is created with its idempotency key (root command id / task id), so a
create call whose answer was lost is simply made again: the agent answers with
the task it already made, and the engine adopts it and goes on.
"""

from __future__ import annotations

from uuid import UUID

from orchestrator.agent.port import CreateResult, TaskSpec
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand, TaskState
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.report import CycleReport
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.store.unit_of_work import InventoryUnit


class Submitter:
    def __init__(self, link: AgentLink, writer: CommandWriter, held: dict[UUID, RootCommand], batch: int) -> None:
        self.link = link
        self.writer = writer
        self.held = held
        self.batch = batch

    def run(self, report: CycleReport) -> None:
        pending = [(c, t) for c in self.held.values() if c.submittable for t in c.planned_tasks]
        for start in range(0, len(pending), self.batch):
            if not self.link.ready():
                return
            chunk = pending[start : start + self.batch]
            specs = [TaskSpec(key=c.task_key(t.task_id), verb=t.verb, args=t.args) for c, t in chunk]
            try:
                results = self.link.call(self.link.agent.create_tasks, specs)
            except AgentError:
                return
            crash_point("after_agent_accept")
            self.writer.apply(self._changes(chunk, results, report))
            crash_point("after_agent_id_recorded")

    @staticmethod
    def _changes(
        chunk: list[tuple[RootCommand, TaskState]], results: list[CreateResult], report: CycleReport
    ) -> dict[UUID, Change]:
        accepted: dict[UUID, list[tuple[str, str]]] = {}
        refused: dict[UUID, list[tuple[str, str]]] = {}
        for (command, task), result in zip(chunk, results, strict=True):
            if result.accepted:
                assert result.agent_task_id is not None
                accepted.setdefault(command.id, []).append((task.task_id, result.agent_task_id))
            else:
                refused.setdefault(command.id, []).append((task.task_id, result.error or "refused"))
        report.submitted += sum(len(v) for v in accepted.values())
        report.refused += sum(len(v) for v in refused.values())
        return {
            ident: _record_answers(accepted.get(ident, []), refused.get(ident, []))
            for ident in dict.fromkeys(c.id for c, _ in chunk)
        }


def _record_answers(accepted: list[tuple[str, str]], refused: list[tuple[str, str]]) -> Change:
    """The agent's answers for tasks of one command, applied to those still planned."""

    def change(command: RootCommand, unit: InventoryUnit) -> None:
        planned = {t.task_id for t in command.planned_tasks}
        command.record_submitted([(t, a) for t, a in accepted if t in planned])
        command.record_refused([(t, m) for t, m in refused if t in planned])

    return change
