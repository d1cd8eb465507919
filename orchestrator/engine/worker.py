"""One storage pool's share of the engine: its agent link and the phases over its commands.

A worker first recovers its pool (its agent must answer first), then each cycle:
  1. takes in what discovery found for it (new commands, cancels, terminations),
  2. submits the planned tasks of commands that may proceed, in batches,
  3. polls: one status call for every task; ends, vanished tasks and zombies are
     recorded, a failing command's planned tasks settled, and each command
     whose tasks all ended gets its end action decided (keyed by root: G3),
  4. stops what was decided to stop (orphans, zombies, cancelled or terminated
     commands' tasks, leftovers),
  5. decides the end actions still due (commands without tasks), then runs them:
     reverts on the agent first, then inventory changes, lock releases and the
     commands' ends in one transaction,
  6. clears the ended commands' tasks on the agent, and records it.
A cycle where nothing changed makes at most one agent call and no store write.
Workers of different pools run side by side (a slow or dead agent delays only
its own pool); they share the store under one lock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from orchestrator.agent.port import AgentPort
from orchestrator.config import EngineSettings
from orchestrator.domain.commands import RootCommand
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.clearing import Clearer
from orchestrator.engine.ending import EndActions
from orchestrator.engine.leases import PoolLease
from orchestrator.engine.observer import EngineObserver
from orchestrator.engine.polling import Poller
from orchestrator.engine.recovery import PoolRecovery
from orchestrator.engine.report import CycleReport, RecoveryReport
from orchestrator.engine.stopping import Stopper
from orchestrator.engine.submission import Submitter
from orchestrator.engine.writer import CommandWriter
from orchestrator.errors import AgentError, LeaseLostError
from orchestrator.store.event_store import STORE_OUTAGES, EventStore

# What discovery hands a worker: a new command, or the id of one to read again.
Arrival = RootCommand | UUID


class PoolWorker:
    def __init__(
        self,
        pool: str,
        store: EventStore,
        agent: AgentPort,
        settings: EngineSettings,
        *,
        stamp: Callable[[str], dict[str, Any]],
        lock: threading.RLock,
        clock: Callable[[], float],
        observer: EngineObserver,
        lease: PoolLease | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.lease = lease
        self.phase = "recovery"
        self.failure: BaseException | None = None  # what stopped the loop, for the coordinator to raise
        self.lost = ""  # why this worker stopped acting: its lease is gone, or the store is
        self.announced = lease is None  # the agent has been told this engine's fence
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None  # the worker's own, while the engine runs
        self.held: dict[UUID, RootCommand] = {}
        self.inbox: queue.SimpleQueue[Arrival] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.link = AgentLink(
            agent,
            poll_interval=settings.poll_interval,
            backoff_max=settings.agent_backoff_max,
            clock=clock,
            pool=pool,
            observer=observer,
            guard=lease.check if lease is not None else lambda: None,
        )
        self.writer = CommandWriter(
            store,
            self.held,
            lambda: {**stamp(self.phase), **({"epoch": lease.epoch} if lease is not None else {})},
            lock,
            fence=lease.fence if lease is not None else lambda: None,
        )
        self.stopper = Stopper(self.link, self.held)
        self.submitter = Submitter(self.link, self.writer, self.held, settings.submit_batch)
        self.poller = Poller(self.link, self.writer, self.held, zombie_seconds=settings.zombie_seconds, clock=clock)
        self.end_actions = EndActions(
            self.link,
            self.writer,
            self.held,
            attempts=settings.end_action_attempts,
            backoff=settings.end_action_backoff,
            clock=clock,
        )
        self.clearer = Clearer(self.link, self.writer, self.held, self.stopper)
        self.recovery = PoolRecovery(pool, store, self.held, self.link, self.writer, self.stopper)

    # ---- what discovery hands over ---------------------------------------------------------

    def hand(self, arrival: Arrival) -> None:
        self.inbox.put(arrival)
        self.wake.set()

    def take_in(self) -> None:
        while True:
            try:
                arrival = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(arrival, RootCommand):
                self.held.setdefault(arrival.id, arrival)
            else:
                self.writer.reload(arrival)

    # ---- state -----------------------------------------------------------------------------

    @property
    def recovered(self) -> bool:
        return self.recovery.done

    @property
    def idle(self) -> bool:
        return self.inbox.empty() and not self.held and not self.stopper.leftovers

    # ---- recovery and the cycle ------------------------------------------------------------

    def recover(self) -> RecoveryReport | None:
        """One attempt at this pool's recovery; the report once done (None while its agent is silent)."""
        self.take_in()
        if not self.announced and (not self.link.ready() or not self._announce()):
            return None  # backing off, or the agent did not take the fence: try again later
        report = self.recovery.attempt()
        if report is not None:
            self.phase = "cycle"
        return report

    def _announce(self) -> bool:
        """Tell the agent this engine's fence before anything else, so that it refuses the calls of
        the engine this one took the pool from (an agent that does not fence ignores it)."""
        assert self.lease is not None
        announce = getattr(self.link.agent, "announce", None)
        if callable(announce):
            try:
                self.link.call(announce, self.lease.agent_fence)
            except AgentError:
                return False
        self.announced = True
        return True

    def cycle(self) -> CycleReport:
        if self.lease is not None:
            self.lease.check()  # verified every cycle: an engine that lost its lease stops here
        started = time.monotonic()
        calls0, tx0, ev0 = self.link.calls, self.writer.transactions, self.writer.events
        report = CycleReport()
        if not self.recovered:
            self.recover()
        if self.recovered:
            self.take_in()
            self._phases(report)
        report.agent_calls = self.link.calls - calls0
        report.store_transactions = self.writer.transactions - tx0
        report.events = self.writer.events - ev0
        report.agent_trouble = self.link.trouble
        report.seconds = time.monotonic() - started
        return report

    def _phases(self, report: CycleReport) -> None:
        self.submitter.run(report)
        statuses = self.poller.run(report, leftovers=bool(self.stopper.leftovers))
        report.stopped = self.stopper.run(statuses)
        self.end_actions.decide()
        self.end_actions.run(report)
        self.clearer.run(report, statuses)

    def loop(self, on_cycle: Callable[[CycleReport], None] | None) -> None:
        """Cycle until stopped: at once after progress, else after the poll interval (or an arrival).

        A worker acting under a lease stops at once when the lease is gone or the store cannot
        be reached (`lost` says why; the coordinator lets it go and stands by for the pool).
        Anything else that stops the loop by raising is kept in `failure` for the coordinator
        to raise in its own thread."""
        try:
            while not self.stopping.is_set():
                report = self.cycle()
                if on_cycle is not None:
                    on_cycle(report)
                if not report.progressed:
                    self.wake.wait(max(0.0, self.settings.poll_interval - report.seconds))
                    self.wake.clear()
        except LeaseLostError as exc:
            self.lost = str(exc)
        except STORE_OUTAGES as exc:
            if self.lease is None:
                self.failure = exc
            else:
                self.lost = f"the store cannot be reached: {(str(exc).strip().splitlines() or ['?'])[0][:300]}"
        except BaseException as exc:
            self.failure = exc

    def retarget(self, agent: AgentPort) -> None:
        """The pool's agent moved (set-agent): talk to the new one from now on."""
        self.link.agent = agent
