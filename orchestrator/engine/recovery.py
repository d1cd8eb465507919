"""Recovery, at every engine start: find every command in flight and decide for each.

The commands in flight come from `orchestrator_in_flight`, which the store keeps
in the same transaction as the events (no read model is trusted for it), and are
replayed in bulk, so recovery costs what is in flight, not what the history
holds. The agent is asked for all its tasks, and waited for, with backoff, for
as long as it is unreachable: silence never decides anything. Then `decide()`
(orchestrator/domain/recovery.py, shared with the inspection) gives each
command its verdict, recorded as a `Recovered` event together with what it
implies (orphans adopted, vanished tasks ended, failure decided). What recovery
decided to stop is stopped by the stopper, now and, if this process dies first,
by the next start.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

from orchestrator.agent.port import AgentTaskStatus, view_of
from orchestrator.crashpoints import crash_point
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import EndKind, FailureCause, TaskStatus, parse_agent_task_key
from orchestrator.domain.recovery import AgentView, Decision, Verdict, decide
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.discovery import Discovery
from orchestrator.engine.report import RecoveryReport
from orchestrator.engine.stopping import Stopper
from orchestrator.engine.writer import Change, CommandWriter
from orchestrator.errors import AgentError
from orchestrator.store.event_store import EventStore
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator.engine")


class Recovery:
    def __init__(
        self,
        store: EventStore,
        held: dict[UUID, RootCommand],
        link: AgentLink,
        writer: CommandWriter,
        discovery: Discovery,
        stopper: Stopper,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.held = held
        self.link = link
        self.writer = writer
        self.discovery = discovery
        self.stopper = stopper
        self.clock = clock

    def run(self, stop: Callable[[], bool]) -> RecoveryReport:
        # Recovery builds many small objects that all live on; the cyclic garbage collector
        # would scan them over and over while they are made (a third of the time at 10,000).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(stop)
        finally:
            if collecting:
                gc.enable()

    def _run(self, stop: Callable[[], bool]) -> RecoveryReport:
        started = time.monotonic()
        report = RecoveryReport()
        head = self.store.head()  # first: whatever is accepted after it is found by discovery
        self.held.clear()
        self.held.update((c.id, c) for c in self.store.load_commands(self.store.in_flight_ids()))
        self.discovery.position = head
        self.discovery.run()
        statuses = self._statuses_waiting(stop, report)
        if statuses is None:
            report.gave_up = True
            return report
        view = view_of(statuses)
        decisions: dict[UUID, Decision] = {}
        self.writer.apply({ident: _recover(view, decisions) for ident in list(self.held)})
        for ident, decision in decisions.items():
            if decision.verdict is Verdict.NOTHING:
                self.held.pop(ident, None)
        report.decisions = {i: d for i, d in decisions.items() if d.verdict is not Verdict.NOTHING}
        report.summaries = {i: self.held[i].summary for i in report.decisions if i in self.held}
        crash_point("in_recovery")
        report.swept = self._sweep(statuses)
        report.orphans_stopped = self.stopper.run(statuses)
        report.seconds = time.monotonic() - started
        if report.decisions:
            counts: dict[str, int] = {}
            for d in report.decisions.values():
                counts[d.verdict.value] = counts.get(d.verdict.value, 0) + 1
            log.info("recovery: %s", ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        return report

    def _statuses_waiting(self, stop: Callable[[], bool], report: RecoveryReport) -> list[AgentTaskStatus] | None:
        """The agent's task list; an unreachable agent is waited for, never guessed at."""
        while True:
            try:
                return self.link.call(self.link.agent.task_statuses)
            except AgentError:
                report.agent_waits += 1
            while self.clock() < self.link.retry_at:
                if stop():
                    return None
                time.sleep(min(0.1, max(0.0, self.link.retry_at - self.clock())))
            if stop():
                return None

    def _sweep(self, statuses: Sequence[AgentTaskStatus]) -> int:
        """Agent tasks of ours whose command no longer expects them: stop them, clear them once ended."""
        found = 0
        for status in statuses:
            parsed = parse_agent_task_key(status.key)
            if parsed is None or parsed[0] in self.held:
                continue
            command = self.store.get(parsed[0])
            if not isinstance(command, RootCommand) or parsed[1] not in command.tasks:
                continue  # not ours: never touch it
            self.stopper.leftovers.add(status.agent_task_id)
            found += 1
        if found:
            log.warning("found %d leftover agent task(s) of commands no longer in flight; stopping and clearing", found)
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
