"""Running an engine: build it over an orchestrator and its pools' agents, take the lease, recover, run."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.agent.port import AgentPort
from orchestrator.bootstrap.system import Orchestrator
from orchestrator.collector import tune_for_engine
from orchestrator.config import EngineSettings
from orchestrator.engine.agents import AgentDirectory
from orchestrator.engine.lease import EngineLease
from orchestrator.engine.leases import PoolLeases
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.engine.task_manager import TaskManager, new_engine_id
from orchestrator.errors import AgentUnavailableError, EngineBusyError, OrchestratorError
from orchestrator.store.leases import EngineRow

log = logging.getLogger("orchestrator")


def build_engine(
    orch: Orchestrator,
    agents: AgentDirectory | AgentPort,
    settings: EngineSettings,
    *,
    update_projections: bool = True,
    clock: Callable[[], float] = time.time,
    engine_id: str | None = None,
    observer: EngineObserver = NO_OBSERVER,
    leases: PoolLeases | None = None,
    exit_on_lease_loss: bool = False,
) -> TaskManager:
    """An engine over the orchestrator's store and these agents (one agent serves every pool); it keeps
    the read models current unless told not to. With leases, it runs the pools it holds the lease of."""
    tune_for_engine()
    return TaskManager(
        orch.store,
        agents,
        settings,
        clock=clock,
        catch_up=orch.read_models.catch_up if update_projections else None,
        engine_id=engine_id,
        observer=observer,
        leases=leases,
        exit_on_lease_loss=exit_on_lease_loss,
    )


def pool_leases(orch: Orchestrator, settings: EngineSettings, pinned: Sequence[str] | None = None) -> PoolLeases:
    """This engine's leases over the store's lease tables (a connection of their own)."""
    engine_id = new_engine_id()
    row = EngineRow(engine_id, socket.gethostname(), os.getpid(), 0.0, 0.0, tuple(pinned) if pinned else None, None)
    return PoolLeases(orch.store.dialect.leases(), row, timeout=settings.lease_timeout)


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
    pools: tuple[str, ...] | None = None  # run only these pools (`--pools`); None: a fair share of all
    exit_on_lease_loss: bool = False


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
    # SQLite: one engine at a time, by a lock of the file's own; PostgreSQL: engines share the pools.
    lease = EngineLease(orch.config) if orch.config.kind == "sqlite" else None
    if lease is not None:
        lease.acquire(
            wait=options.wait_for_lease,
            stop=stop.is_set,
            on_wait=lambda: log.warning("another engine runs on %s; standing by to take over", orch.config.redacted),
        )
    agents = orch.agents(timeout=settings.agent_timeout)
    leases = pool_leases(orch, settings, options.pools)
    try:
        engine = build_engine(
            orch,
            agents,
            settings,
            update_projections=options.update_projections,
            observer=observer,
            leases=leases,
            exit_on_lease_loss=options.exit_on_lease_loss,
        )
        started = time.monotonic()
        report = engine.recover(stop.is_set)
        if not engine.workers:
            if not options.wait_for_lease:
                raise EngineBusyError(
                    f"another engine holds every pool of {orch.config.redacted}; stop one first, or run without "
                    "--no-wait to stand by and take pools over when their engine stops"
                )
            log.warning("other engines run every pool of %s; standing by to take pools over", orch.config.redacted)
        if report.gave_up:
            log.warning(
                "gave up waiting for the agent after %.2fs (%s); recovery decided nothing",
                time.monotonic() - started,
                engine.agent_trouble or "stopped",
            )
        else:
            log.info("recovered %d command(s) in %.2fs", len(report.decisions), time.monotonic() - started)
            for pool, trouble in report.waiting.items():
                log.warning("pool %s waits for its agent (%s); its commands are decided when it answers", pool, trouble)
            engine.run(stop, until_idle=options.until_idle)
        if timed_out.is_set():
            raise _timeout_error(options.timeout or 0.0, report.gave_up, engine)
    finally:
        leases.stop()
        agents.close()
        if lease is not None:
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
