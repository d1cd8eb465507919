"""Recovery, at every engine start: find every command in flight and decide for each.

The commands in flight come from `orchestrator_in_flight`, which the store keeps
in the same transaction as the events (no read model is trusted for it), and are
replayed in bulk (`load_in_flight`), so recovery costs what is in flight, not
what the history holds. Then each storage pool recovers on its own
(`PoolRecovery`): its agent is asked for all its tasks — a pool whose agent does
not answer waits, with backoff, and decides nothing, while the other pools go
on — and `decide()` (orchestrator/domain/recovery.py, shared with the
inspection) gives each of its commands a verdict, recorded as a `Recovered`
event together with what it implies (orphans adopted, vanished tasks ended,
failure decided). What recovery decided to stop is stopped by the stopper, now
and, if this process dies first, by the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from uuid import UUID

from orchestrator.agent.port import AgentTaskStatus, view_of
from orchestrator.collector import collector_paused
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import EndKind, FailureCause, TaskStatus, parse_agent_task_key
from orchestrator.domain.recovery import AgentView, Decision, Verdict, decide
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.polling import agent_acts_next
from orchestrator.engine.report import RecoveryReport
from orchestrator.engine.stopping import Stopper
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.store.event_store import EventStore
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator.engine")


def load_in_flight(store: EventStore) -> tuple[int, list[RootCommand]]:
    """The log's head, read first (whatever is accepted after it, discovery finds), and every command in flight."""
    head = store.head()
    with collector_paused():
        return head, store.load_commands(store.in_flight_ids())


class PoolRecovery:
    """One pool's recovery: done once its agent has answered and every verdict is recorded."""

    def __init__(
        self,
        pool: str,
        store: EventStore,
        held: dict[UUID, RootCommand],
        link: AgentLink,
        writer: CommandWriter,
        stopper: Stopper,
    ) -> None:
        self.pool = pool
        self.store = store
        self.held = held
        self.link = link
        self.writer = writer
        self.stopper = stopper
        self.done = False
        self.waits = 0

    def attempt(self) -> RecoveryReport | None:
        """Ask the agent once (unless backing off); the report once recovered, None while it waits."""
        if not self.link.ready():
            return None
        try:
            statuses = self.link.call(self.link.agent.task_statuses)
        except AgentError:
            self.waits += 1
            return None
        started = time.monotonic()
        with collector_paused():
            report = self._decide(statuses)
        report.seconds = time.monotonic() - started
        report.agent_waits = self.waits
        self.done = True
        return report

    def _decide(self, statuses: list[AgentTaskStatus]) -> RecoveryReport:
        report = RecoveryReport()
        view = view_of(statuses)
        decisions: dict[UUID, Decision] = {}
        # Verdicts that only resume polling need not wait for the disk; stops and reverts do.
        self.writer.apply({ident: _recover(view, decisions) for ident in list(self.held)}, flush=agent_acts_next)
        for ident, decision in decisions.items():
            if decision.verdict is Verdict.NOTHING:
                self.held.pop(ident, None)
        report.decisions = {i: d for i, d in decisions.items() if d.verdict is not Verdict.NOTHING}
        report.summaries = {i: self.held[i].summary for i in report.decisions if i in self.held}
        crash_point("in_recovery")
        report.swept = self._sweep(statuses)
        report.orphans_stopped = self.stopper.run(statuses)
        if report.decisions:
            counts: dict[str, int] = {}
            for d in report.decisions.values():
                counts[d.verdict.value] = counts.get(d.verdict.value, 0) + 1
            log.info("recovery of pool %s: %s", self.pool, ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        return report

    def _sweep(self, statuses: Sequence[AgentTaskStatus]) -> int:
        """Agent tasks of ours whose command no longer expects them: stop them, clear them once ended."""
        found = 0
        held = {str(ident) for ident in self.held}  # keys start with their command's id, as text
        for status in statuses:
            if status.key.partition("/")[0] in held:
                continue
            parsed = parse_agent_task_key(status.key)
            if parsed is None or parsed[0] in self.held:
                continue
            with self.writer.lock:
                command = self.store.get(parsed[0])
            if not isinstance(command, RootCommand) or parsed[1] not in command.tasks:
                continue  # not ours: never touch it
            self.stopper.leftovers.add(status.agent_task_id)
            found += 1
        if found:
            log.warning(
                "found %d leftover agent task(s) of commands no longer in flight in pool %s; stopping and clearing",
                found,
                self.pool,
            )
        return found


def _recover(view: AgentView, decisions: dict[UUID, Decision]) -> Change:
    """Decide for one command on its fresh copy, and record the verdict with what it implies."""

    def change(command: RootCommand, unit: InventoryUnit) -> None:
        decision = decide(command, view)
        decisions[command.id] = decision
        if decision.verdict is Verdict.NOTHING:
            return
        command.adopt_orphans(decision.orphans)
        if decision.vanished:
            command.record_ended(
                [
                    {
                        "task_id": t,
                        "status": TaskStatus.FAILED.value,
                        "kind": EndKind.VANISHED.value,
                        "message": "the agent no longer knows this task",
                        "result": {},
                    }
                    for t in decision.vanished
                ]
            )
        if decision.verdict is Verdict.FAIL and (decision.unsubmitted or decision.orphans):
            cause = FailureCause.CANCELLED if command.cancel_reason else FailureCause.SUBMISSION_CUT_SHORT
            command.decide_failure(decision.reason, decision.unsubmitted, cause)
        command.record_recovery(decision.verdict.value, decision.reason)

    return change
