"""The composition root: the one place that builds an orchestrator from configuration.

`Orchestrator.open(URL)` checks and opens the store, its read models and the
service layer over them, and knows where the default pool's agent is; `engine()`
builds the engine over them and an agent. Entry points (the CLI, the demo,
scripts, tests, a program that embeds the orchestrator) start here; every part
can be injected instead (`Orchestrator(...)`, `build_engine(...)`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from orchestrator.agent.port import AgentPort, parse_statuses, view_of
from orchestrator.config import EngineSettings
from orchestrator.engine.lease import EngineLease
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.engine.task_manager import TaskManager
from orchestrator.errors import AgentUnavailableError, OrchestratorError
from orchestrator.inspection import NOT_CONSULTED, AgentReading, InspectionReport, ReadOnlyStore, inspect_store
from orchestrator.service import CommandService
from orchestrator.store import EventStore, StoreConfig, dialect_for, parse_store_url, store_layout, store_url_from_env
from orchestrator.testing import (
    SeedResult,
    SimulatedAgent,
    SimulatedAgentBackend,
    default_agent_state_path,
    seed_inventory,
)
from projections import ReadModels

log = logging.getLogger("orchestrator")


class Orchestrator(CommandService):
    """The orchestrator as a program embeds it: the service over one store, its read models, its agent."""

    def __init__(self, config: StoreConfig, store: EventStore, read_models: ReadModels, agent_state: Path) -> None:
        super().__init__(config, store, read_models.running_tasks_on)
        self.read_models = read_models
        self.agent_state = agent_state

    @classmethod
    def open(cls, store: str | None = None, *, agent_state: Path | None = None, create: bool = True) -> Orchestrator:
        """Open (with create, make) the store at a URL (default: --store / ORCHESTRATOR_STORE, else sqlite)."""
        config = parse_store_url(store_url_from_env(store))
        with store_layout(config, create=create) as ready:
            events = EventStore.open(config, dialect_for(config), create_tables=not ready)
            read_models = ReadModels.open(config, events)
            if not ready:
                read_models.runner.ensure_tables()
                _upgrade_in_flight_index(events, read_models)
        return cls(config, events, read_models, agent_state or default_agent_state_path(config.path))

    def close(self) -> None:
        self.read_models.close()
        self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_agent(self) -> SimulatedAgent:
        """The default pool's agent: the simulated agent over its state file, in this process."""
        return SimulatedAgent.open(self.agent_state)

    def seed(self, vms: int, disks: int, status: str = "up") -> SeedResult:
        """A demo inventory: VMs with disks, in the store and on the simulated agent."""
        agent = self.open_agent()
        try:
            return seed_inventory(self, agent.backend, vms, disks, status)
        finally:
            agent.close()

    def engine(self, agent: AgentPort, settings: EngineSettings, **options: Any) -> TaskManager:
        return build_engine(self, agent, settings, **options)


def build_engine(
    orch: Orchestrator,
    agent: AgentPort,
    settings: EngineSettings,
    *,
    update_projections: bool = True,
    clock: Callable[[], float] = time.time,
    engine_id: str | None = None,
    observer: EngineObserver = NO_OBSERVER,
) -> TaskManager:
    """An engine over the orchestrator's store and this agent (it keeps the read models current unless told not to)."""
    return TaskManager(
        orch.store,
        agent,
        settings,
        clock=clock,
        catch_up=orch.read_models.catch_up if update_projections else None,
        engine_id=engine_id,
        observer=observer,
    )


def read_agent_tasks(config: StoreConfig, agent_state: Path | None) -> AgentReading:
    """The default pool's simulated agent's tasks, read without changing its state (for the inspection)."""
    path = agent_state or default_agent_state_path(config.path)
    if not path.exists():
        return AgentReading(None, f"no agent state at {path}: verdicts that depend on the agent are provisional")
    try:
        statuses = parse_statuses(SimulatedAgentBackend.peek_statuses(path))
    except OrchestratorError as exc:
        return AgentReading(None, f"{exc}: verdicts that depend on the agent are provisional")
    return AgentReading(view_of(statuses), f"reconciled with the agent at {path} ({len(statuses)} task(s) held)")


def inspect(store_url: str | None, agent_state: Path | None = None, *, with_agent: bool = True) -> InspectionReport:
    """What recovery would decide for every command in flight, changing nothing anywhere."""
    store = ReadOnlyStore(store_url)
    try:
        agent = read_agent_tasks(store.config, agent_state) if with_agent else NOT_CONSULTED
        return inspect_store(store, agent)
    finally:
        store.close()


def _upgrade_in_flight_index(events: EventStore, read_models: ReadModels) -> None:
    """A store of layout 3 kept its commands in flight in a read model; the store keeps them now."""
    if not events.has_table("proj_in_flight"):
        return
    read_models.catch_up()
    with read_models.tables.read() as cur:
        cur.execute("SELECT command_id FROM proj_in_flight")
        ids = [UUID(str(r[0])) for r in cur.fetchall()]
    events.fill_in_flight(ids)
    with read_models.tables.write() as cur:
        cur.execute("DROP TABLE proj_in_flight")


class EngineTimeoutError(OrchestratorError):
    """`run --timeout` expired with commands still in flight."""

    exit_code = 9


@dataclass
class EngineOptions:
    """How `orchestrator run` runs an engine."""

    until_idle: bool = False
    wait_for_lease: bool = True
    update_projections: bool = True
    timeout: float | None = None


def run_engine(
    orch: Orchestrator,
    settings: EngineSettings,
    options: EngineOptions,
    stop: threading.Event,
    observer: EngineObserver = NO_OBSERVER,
) -> None:
    """Take the engine lease (standing by while another engine holds it), recover, and run until stopped.

    Raises EngineTimeoutError, or AgentUnavailableError when the agent was the reason, if the
    timeout expires; nothing is decided without the agent.
    """
    timed_out = threading.Event()
    if options.timeout is not None:

        def give_up() -> None:
            timed_out.set()
            stop.set()

        timer = threading.Timer(options.timeout, give_up)
        timer.daemon = True
        timer.start()
    lease = EngineLease(orch.config)
    lease.acquire(
        wait=options.wait_for_lease,
        stop=stop.is_set,
        on_wait=lambda: log.warning("another engine runs on %s; standing by to take over", orch.config.redacted),
    )
    agent = orch.open_agent()
    try:
        engine = build_engine(orch, agent, settings, update_projections=options.update_projections, observer=observer)
        started = time.monotonic()
        report = engine.recover(stop.is_set)
        if report.gave_up:
            log.warning(
                "gave up waiting for the agent after %.2fs (%s); recovery decided nothing",
                time.monotonic() - started,
                engine.agent_trouble or "stopped",
            )
        else:
            log.info("recovered %d command(s) in %.2fs", len(report.decisions), time.monotonic() - started)
            engine.run(stop, until_idle=options.until_idle)
        if timed_out.is_set():
            raise _timeout_error(options.timeout or 0.0, report.gave_up, engine)
    finally:
        agent.close()
        lease.release()


def _timeout_error(timeout: float, gave_up: bool, engine: TaskManager) -> OrchestratorError:
    if gave_up:
        return AgentUnavailableError(
            f"gave up after {timeout:g}s waiting for the agent ({engine.agent_trouble or 'no answer'}); "
            "recovery decided nothing; run again when the agent is back"
        )
    if engine.agent_trouble:
        return AgentUnavailableError(
            f"gave up after {timeout:g}s with {len(engine.held)} command(s) in flight; agent: "
            f"{engine.agent_trouble}; nothing was decided without the agent; run again when it is back"
        )
    return EngineTimeoutError(
        f"gave up after {timeout:g}s with {len(engine.held)} command(s) still in flight; "
        "they go on when the engine runs again"
    )
