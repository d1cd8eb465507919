"""`Orchestrator`: the orchestrator as a program embeds it.

`Orchestrator.open(URL)` checks and opens the store, its read models and the
service layer over them, and knows each storage pool's agent; `engine()` builds
the engine over them. Every part can be injected instead (`Orchestrator(...)`,
`build_engine(...)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from orchestrator.agent.port import AgentPort
from orchestrator.bootstrap.agents import PoolAgents, simulator_for
from orchestrator.config import EngineSettings
from orchestrator.domain.model import DEFAULT_POOL, EntityRef
from orchestrator.engine.agents import AgentDirectory
from orchestrator.engine.task_manager import TaskManager
from orchestrator.service import CommandService
from orchestrator.store import EventStore, StoreConfig, dialect_for, parse_store_url, store_layout, store_url_from_env
from orchestrator.testing import SeedResult, SimulatedAgent, default_agent_state_path, seed_inventory
from orchestrator.testing.simulator_control import SimulatorControl
from projections import ReadModels


class Orchestrator(CommandService):
    """The service over one store, with its read models and its pools' agents."""

    def __init__(self, config: StoreConfig, store: EventStore, read_models: ReadModels, agent_state: Path) -> None:
        super().__init__(config, store, read_models.running_tasks_on)
        self.read_models = read_models
        self.agent_state = agent_state  # the default pool's simulated agent, unless the pool has an agent URL

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
        return cls(config, events, read_models, agent_state or default_agent_state_path(config))

    def close(self) -> None:
        self.read_models.close()
        self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def agents(self, *, timeout: float = 10.0) -> PoolAgents:
        """Every pool's agent, for an engine (the caller closes it); an answer slower than `timeout` fails."""
        return PoolAgents(self, self.agent_state, read_timeout=timeout)

    def open_agent(self) -> SimulatedAgent:
        """The default pool's simulated agent, in this process (tests and the demo drive it)."""
        return SimulatedAgent.open(self.agent_state)

    def pool_agent_url(self, pool: str) -> str | None:
        from orchestrator.pools import pool_agent_url

        return pool_agent_url(self, pool)

    def simulator(self, pool: str = DEFAULT_POOL) -> SimulatorControl:
        """A pool's simulated agent, to administer: its journal, storage and faults (the caller closes it)."""
        return simulator_for(self, pool, self.agent_state)

    def simulators(self) -> dict[str, SimulatorControl]:
        """Every pool's simulated agent that can be reached (the caller closes them)."""
        from orchestrator.pools import list_pools

        out: dict[str, SimulatorControl] = {}
        for pool in list_pools(self):
            if pool.agent_url or pool.pool_id == DEFAULT_POOL:
                out[pool.pool_id] = self.simulator(pool.pool_id)
        return out

    def seed(
        self, vms: int, disks: int, status: str = "up", pool: str = DEFAULT_POOL, existing: set[EntityRef] | None = None
    ) -> SeedResult:
        """A demo inventory in a pool: VMs with disks, in the store and on the pool's simulated agent
        (`existing`: what the caller knows to be there already, to spare reading the inventory)."""
        control = self.simulator(pool)
        try:
            return seed_inventory(self, control, vms, disks, status, pool, existing)
        finally:
            control.close()

    def engine(self, agents: AgentDirectory | AgentPort, settings: EngineSettings, **options: Any) -> TaskManager:
        from orchestrator.bootstrap.engine_service import build_engine

        return build_engine(self, agents, settings, **options)


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
