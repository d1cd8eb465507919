"""End actions: reverting on the agent where the flow says so, then changing the inventory,
releasing the entity locks and ending the commands, many commands per transaction.

End actions are idempotent (recovery may run one again). One that raises is
retried a bounded number of times with a doubling delay; then a success falls
back to failure, and a failure ends the command flagged, its locks released.
The commands of a batch whose end action did not raise are ended without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus, EndAction, EntityRef
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.polling import agent_acts_next, decide_end_action_if_due
from orchestrator.engine.report import CycleReport
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.flows import get_flow
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator.engine")
END_ACTION_BATCH = 250  # commands whose end actions share one transaction


class EndActionRaisedError(Exception):
    def __init__(self, command_id: UUID, error: BaseException) -> None:
        super().__init__(str(error))
        self.command_id = command_id
        self.error = error


class EndActions:
    def __init__(
        self,
        link: AgentLink,
        writer: CommandWriter,
        held: dict[UUID, RootCommand],
        *,
        attempts: int,
        backoff: float,
        clock: Callable[[], float],
    ) -> None:
        self.link = link
        self.writer = writer
        self.held = held
        self.attempts = attempts
        self.backoff = backoff
        self.clock = clock
        self.reverted: dict[UUID, list[str]] = {}  # tasks reverted on the agent, until the command's end is saved

    def decide(self) -> None:
        """Commands whose tasks have all ended (or that had none) get their end action due."""
        due = [c.id for c in self.held.values() if c.status in (CommandStatus.ACCEPTED, CommandStatus.RUNNING)]
        due = [i for i in due if self.held[i].all_tasks_ended]
        self.writer.apply({i: _decide for i in due}, flush=agent_acts_next)

    def run(self, report: CycleReport) -> None:
        now = datetime.fromtimestamp(self.clock(), UTC)
        due = [
            c
            for c in self.held.values()
            if c.status is CommandStatus.ENDING
            and c.end_attempt is not None
            and (c.end_attempt.retry_at is None or c.end_attempt.retry_at <= now)
        ]
        ready = [c.id for c in due if self._reverted_on_agent(c)]
        for start in range(0, len(ready), END_ACTION_BATCH):
            self._end_batch(ready[start : start + END_ACTION_BATCH], report)

    def _end_batch(self, ids: list[UUID], report: CycleReport) -> None:
        crash_point("in_end_action")
        pending = list(ids)
        while pending:
            changes = {i: self._end_change(i) for i in pending}
            try:
                saved = self.writer.apply(changes, batch=len(changes), prefetch=_entities_of)
            except EndActionRaisedError as raised:
                self._failed(raised.command_id, raised.error)
                pending.remove(raised.command_id)
                continue
            for ident in saved:
                self.reverted.pop(ident, None)
            ended = [i for i in saved if i in self.held and self.held[i].ended]
            report.commands_ended += len(ended)
            if ended:
                crash_point("after_end_action")
            return

    def _end_change(self, command_id: UUID) -> Change:
        reverted = self.reverted.get(command_id, [])

        def change(command: RootCommand, unit: InventoryUnit) -> None:
            if command.status is not CommandStatus.ENDING:
                return
            flow = get_flow(command.flow)
            try:
                if command.due_end_action is EndAction.SUCCESS:
                    flow.end_successfully(command, unit)
                else:
                    flow.end_with_failure(command, unit)
            except Exception as exc:
                raise EndActionRaisedError(command.id, exc) from exc
            unit.release_locks(command)
            command.end(reverted=reverted)

        return change

    def _reverted_on_agent(self, command: RootCommand) -> bool:
        """Undo on the agent what a failing command's tasks did; False while the agent is away."""
        if command.due_end_action is not EndAction.FAILURE or not get_flow(command.flow).revert_on_failure:
            return True
        if command.id in self.reverted:
            return True
        if not self.link.ready():
            return False
        reverted: list[str] = []
        for task in command.tasks.values():
            if task.effect_done and task.agent_task_id and not task.cleared:
                try:
                    if self.link.call(self.link.agent.revert_task, task.agent_task_id):
                        reverted.append(task.task_id)
                except AgentError:
                    return False
        self.reverted[command.id] = reverted
        return True

    def _failed(self, command_id: UUID, error: BaseException) -> None:
        command = self.held.get(command_id)
        if command is None or command.end_attempt is None:
            return
        attempt = command.end_attempt.attempts + 1
        action = command.end_attempt.action
        text = f"{type(error).__name__}: {error}"
        log.error("%s of %s failed (attempt %d of %d): %s", action.value, command_id, attempt, self.attempts, text)
        if attempt >= self.attempts:
            then = (
                "it ends with failure and is flagged" if action is EndAction.SUCCESS else "releasing its locks, flagged"
            )
            log.error("giving up on %s of %s; %s", action.value, command_id, then)
        retry_at = datetime.fromtimestamp(self.clock(), UTC) + timedelta(seconds=self.backoff * 2 ** (attempt - 1))
        self.writer.apply(
            {command_id: _record_failure(attempt, text, retry_at, self.attempts, self.reverted.get(command_id, []))}
        )


def _decide(command: RootCommand, unit: InventoryUnit) -> None:
    decide_end_action_if_due(command)


def _entities_of(commands: Sequence[RootCommand]) -> list[EntityRef]:
    return [use.ref for command in commands for use in command.entities]


def _record_failure(attempt: int, text: str, retry_at: datetime, attempts: int, reverted: list[str]) -> Change:
    def change(command: RootCommand, unit: InventoryUnit) -> None:
        if command.status is not CommandStatus.ENDING or command.end_attempt is None:
            return
        if command.end_attempt.attempts >= attempt:
            return  # recorded already
        action = command.end_attempt.action
        if attempt < attempts:
            command.record_end_action_failed(attempt, text, retry_at, None)
        elif action is EndAction.SUCCESS:
            command.record_end_action_failed(attempt, text, None, EndAction.FAILURE)
        else:
            command.record_end_action_failed(attempt, text, None, None)
            unit.release_locks(command)
            command.end(flagged=True, reverted=reverted)

    return change
