"""The task manager: the engine built of small collaborators, and its loop.

One cycle:
  1. discover commands accepted (or asked to cancel) since the last cycle,
  2. submit the planned tasks of commands that may proceed, in batches,
  3. poll: one status call for all tasks; ends, vanished tasks and zombies are
     recorded, a failing command's planned tasks settled, and each command
     whose tasks all ended gets its end action decided (keyed by root: G3),
  4. stop what was decided to stop (orphans, zombies, cancelled commands' tasks),
  5. decide end actions still due (commands without tasks), then run them:
     reverts on the agent first, then inventory changes, lock releases and the
     commands' ends in one transaction,
  6. clear the ended commands' tasks on the agent, and record it.

A cycle where nothing changed makes at most one agent call and no store write.
Every write goes through the command writer, so a conflict with another
process (a cancel) is met by re-reading and re-applying what was learned,
never by forgetting it. Every event is stamped with this engine's id and
phase (recovery or cycle).
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

from orchestrator.agent.port import AgentPort
from orchestrator.config import EngineSettings
from orchestrator.domain.commands import RootCommand
from orchestrator.engine.agent_link import AgentLink
from orchestrator.engine.clearing import Clearer
from orchestrator.engine.discovery import Discovery
from orchestrator.engine.ending import EndActions
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.engine.polling import Poller
from orchestrator.engine.recovery import Recovery
from orchestrator.engine.report import CycleReport, RecoveryReport
from orchestrator.engine.stopping import Stopper
from orchestrator.engine.submission import Submitter
from orchestrator.engine.writer import CommandWriter
from orchestrator.store.event_store import EventStore


def new_engine_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class TaskManager:
    def __init__(
        self,
        store: EventStore,
        agent: AgentPort,
        settings: EngineSettings,
        *,
        clock: Callable[[], float] = time.time,
        catch_up: Callable[[], object] | None = None,
        engine_id: str | None = None,
        epoch: int = 0,
        observer: EngineObserver = NO_OBSERVER,
    ) -> None:
        self.store = store
        self.settings = settings
        self.engine_id = engine_id or new_engine_id()
        self.epoch = epoch
        self.phase = "cycle"
        self.catch_up = catch_up
        self.observer = observer
        self.held: dict[UUID, RootCommand] = {}
        self.link = AgentLink(
            agent,
            poll_interval=settings.poll_interval,
            backoff_max=settings.agent_backoff_max,
            clock=clock,
            observer=observer,
        )
        self.writer = CommandWriter(store, self.held, self.stamp)
        self.discovery = Discovery(store, self.held, self.writer)
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
        self.recovery = Recovery(store, self.held, self.link, self.writer, self.discovery, self.stopper, clock=clock)

    def stamp(self) -> dict[str, Any]:
        """Who writes: stored with every event this engine records."""
        return {"engine": self.engine_id, "epoch": self.epoch, "phase": self.phase}

    @property
    def inflight(self) -> dict[UUID, RootCommand]:
        return self.held

    @property
    def idle(self) -> bool:
        return not self.held and not self.stopper.leftovers

    @property
    def agent_trouble(self) -> str:
        return self.link.trouble

    # ---- recovery and the cycle ------------------------------------------------------------

    def recover(self, stop: Callable[[], bool] = lambda: False) -> RecoveryReport:
        """Find every command in flight and decide for each by the recovery rules."""
        if self.catch_up is not None:
            self.catch_up()
        self.phase = "recovery"
        try:
            report = self.recovery.run(stop)
        finally:
            self.phase = "cycle"
        self.observer.recovered(report)
        return report

    def cycle(self) -> CycleReport:
        started = time.monotonic()
        calls0, tx0, ev0 = self.link.calls, self.writer.transactions, self.writer.events
        report = CycleReport()
        self.discovery.run()
        self.submitter.run(report)
        statuses = self.poller.run(report, leftovers=bool(self.stopper.leftovers))
        report.stopped = self.stopper.run(statuses)
        self.end_actions.decide()
        self.end_actions.run(report)
        self.clearer.run(report, statuses)
        report.agent_calls = self.link.calls - calls0
        report.store_transactions = self.writer.transactions - tx0
        report.events = self.writer.events - ev0
        report.agent_trouble = self.link.trouble
        if self.catch_up is not None and report.store_transactions:
            self.catch_up()
        self.observer.cycle_done(report, time.monotonic() - started)
        return report

    # ---- running ---------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> None:
        # The engine holds many long-lived aggregates; collecting the young generation less
        # often keeps the collector from rescanning them (about 10% of a busy cycle).
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), 50, 50)
        try:
            while not stop.is_set():
                report = self.cycle()
                if on_cycle:
                    on_cycle(report)
                if until_idle and self.idle:
                    if self.catch_up is not None:
                        self.catch_up()
                    return
                if not report.progressed:
                    stop.wait(self.settings.poll_interval)
        finally:
            gc.set_threshold(*thresholds)
