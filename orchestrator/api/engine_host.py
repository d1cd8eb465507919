"""`serve --engine`: the engine in the service's process, in a thread of its own.

The thread runs `bootstrap.run_engine` exactly as `orchestrator run` does: it
takes the engine lease (standing by while another engine holds it), recovers,
and runs cycles until the stop event is set. The engine has an orchestrator of
its own (its own event store, aggregate cache and read-model connections): the
engine changes the commands it holds in place, and the request threads must
never see those changes before they are saved.

Whether it holds a lease is read from the store's lease tables (the pools whose
lease an engine of this process holds, at most once a second); on a store without
them, it is the moment run_engine opens the agents, which it does only once the
engine lease is taken. Where engines of several pools will run, this is the
place: one EngineHost per engine, listed in ApiContext.engines.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from orchestrator.bootstrap import EngineOptions, Orchestrator, run_engine
from orchestrator.config import EngineSettings
from orchestrator.engine.observer import EngineObserver
from orchestrator.engine.report import CycleReport, RecoveryReport
from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator.api.engine")
STOP_SECONDS = 30.0
LEASE_READ_SECONDS = 1.0


class LeaseState(StrEnum):
    STANDING_BY = "standing_by"  # waiting for the lease another engine holds
    HELD = "held"  # this process runs the engine
    STOPPED = "stopped"
    FAILED = "failed"


class _EngineOrchestrator(Orchestrator):
    """The engine's own orchestrator; it tells its host when run_engine opens the pools' agents.

    On a store without lease tables, run_engine opens the agents only once it holds the
    engine lease, so that is the moment the lease is known to be ours.
    """

    host: EngineHost | None = None

    def agents(self, *args: Any, **kwargs: Any) -> Any:
        if self.host is not None:
            self.host.lease_taken()
        return super().agents(*args, **kwargs)


class EngineHost:
    """One engine running in a thread of this process, and what is known of its state."""

    def __init__(
        self, store: str | None, agent_state: Path | None, settings: EngineSettings, observer: EngineObserver
    ) -> None:
        orch = _EngineOrchestrator.open(store, agent_state=agent_state, create=True)
        assert isinstance(orch, _EngineOrchestrator)
        orch.host = self
        self.orch: Orchestrator = orch
        self.settings = settings
        self.observer = _Relay(self, observer)
        self.stop_event = threading.Event()
        self.error = ""
        self.since = time.time()
        self.cycles = 0
        self._ended: LeaseState | None = None  # stopped or failed
        self._last = LeaseState.STANDING_BY
        self._agents_opened = False
        self._lease_lock = threading.Lock()
        self._lease_table: Any = None
        self._pools: list[str] | None = None
        self._pools_read_at = -LEASE_READ_SECONDS
        self._thread = threading.Thread(target=self._run, name="orchestrator-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def lease_taken(self) -> None:
        """run_engine opened the agents: on a store without lease tables, the lease is ours."""
        self._agents_opened = True

    @property
    def state(self) -> LeaseState:
        if self._ended is not None:
            return self._ended
        pools = self.pools_held()
        held = bool(pools) if pools is not None else self._agents_opened
        state = LeaseState.HELD if held else LeaseState.STANDING_BY
        if state is not self._last:
            self._last, self.since = state, time.time()
        return state

    def pools_held(self) -> list[str] | None:
        """The pools whose lease an engine of this process holds; None where the store keeps no lease tables."""
        with self._lease_lock:
            now = time.monotonic()
            if now - self._pools_read_at < LEASE_READ_SECONDS:
                return self._pools
            self._pools_read_at = now
            try:
                self._pools = self._read_pools()
            except Exception as exc:  # the store is down: say what was last known
                log.warning("cannot read the engine leases: %s", self.orch.config.scrub(str(exc)).splitlines()[0])
            return self._pools

    def _read_pools(self) -> list[str] | None:
        make_table = getattr(self.orch.store.dialect, "leases", None)
        if make_table is None:
            return None
        if self._lease_table is None:
            self._lease_table = make_table()
        snapshot = self._lease_table.snapshot()
        here = (socket.gethostname(), os.getpid())
        mine = {e.engine_id for e in snapshot.engines if (e.host, e.pid) == here and e.stopped_at is None}
        return sorted(row.pool for row in snapshot.leases if row.engine_id in mine and row.expires_at > snapshot.now)

    def _set(self, state: LeaseState, error: str = "") -> None:
        self._ended, self.error, self.since = state, error, time.time()

    def _run(self) -> None:
        try:
            run_engine(self.orch, self.settings, EngineOptions(), self.stop_event, self.observer)
        except OrchestratorError as exc:
            if self.stop_event.is_set():
                self._set(LeaseState.STOPPED)
                return
            log.error("the engine stopped: %s", exc)
            self._set(LeaseState.FAILED, str(exc))
        except Exception as exc:  # the service goes on answering; /readyz says the engine failed
            log.exception("the engine failed")
            self._set(LeaseState.FAILED, f"{type(exc).__name__}: {self.orch.config.scrub(str(exc))}")
        else:
            self._set(LeaseState.STOPPED)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Ask the engine to stop after its current cycle, wait for it, release everything."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the engine did not stop within %.0fs; leaving it to the process's exit", timeout)
            return
        with self._lease_lock:
            if self._lease_table is not None:
                self._lease_table.close()
        self.orch.close()


class _Relay:
    """Passes the engine's hooks on, counting cycles."""

    def __init__(self, host: EngineHost, inner: EngineObserver) -> None:
        self.host = host
        self.inner = inner

    def cycle_done(self, report: CycleReport, seconds: float) -> None:
        self.host.cycles += 1
        self.inner.cycle_done(report, seconds)

    def agent_called(self, pool: str, method: str, seconds: float, error: str | None) -> None:
        self.inner.agent_called(pool, method, seconds, error)

    def recovered(self, report: RecoveryReport) -> None:
        self.inner.recovered(report)
