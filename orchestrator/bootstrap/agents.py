"""Which agent serves which storage pool: the composition root's side of the engine's `AgentDirectory`.

A pool registered with an agent URL is served by that agent over the network
(`HttpAgent`); the default pool without one is served by the simulated agent
beside the store, in this process; another pool without one has no agent, and
its commands wait, saying so. Each pool's simulated agent can also be
administered (`simulator_for`): tests, the demo, seeding and the invariants do.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.port import AgentPort, AgentTaskStatus, CreateResult, StorageView, TaskSpec
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType
from orchestrator.errors import AgentUnavailableError, NotFoundError
from orchestrator.pools import pool_agent_url
from orchestrator.service import CommandService
from orchestrator.testing import SimulatedAgent, SimulatedAgentBackend
from orchestrator.testing.simulator_control import InProcessControl, RemoteControl, SimulatorControl


class MissingAgent:
    """The agent of a pool that has none: every call fails, saying what to do."""

    def __init__(self, pool: str) -> None:
        self.name = f"pool {pool}"
        self.pool = pool

    def _none(self) -> AgentUnavailableError:
        return AgentUnavailableError(
            f"storage pool {self.pool} has no agent; set one with 'orchestrator pools set-agent {self.pool} URL'"
        )

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        raise self._none()

    def task_statuses(self) -> list[AgentTaskStatus]:
        raise self._none()

    def stop_task(self, agent_task_id: str) -> None:
        raise self._none()

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        raise self._none()

    def revert_task(self, agent_task_id: str) -> bool:
        raise self._none()

    def storage(self) -> StorageView:
        raise self._none()

    def close(self) -> None:
        pass


class PoolAgents:
    """Each pool's agent, found from the store's pools and kept until its pool changes."""

    def __init__(self, service: CommandService, default_agent_state: Path, *, read_timeout: float = 10.0) -> None:
        self.service = service
        self.default_agent_state = default_agent_state
        self.read_timeout = read_timeout
        self._lock = threading.Lock()
        self._agents: dict[str, AgentPort] = {}

    def agent_for(self, pool: str) -> AgentPort:
        with self._lock:
            agent = self._agents.get(pool)
            if agent is None:
                agent = self._agents[pool] = self._new_agent(pool, pool_agent_url(self.service, pool))
            return agent

    def _new_agent(self, pool: str, url: str | None) -> AgentPort:
        if url:
            # The whole call is bounded too: an agent that trickles its answer must not hold a pool forever.
            return HttpAgent(
                url, expected_pool=pool, read_timeout=self.read_timeout, call_timeout=self.read_timeout * 1.5
            )
        if pool == DEFAULT_POOL:
            return SimulatedAgent.open(self.default_agent_state)
        return MissingAgent(pool)

    def refresh(self, pool: str) -> None:
        with self._lock:
            agent = self._agents.pop(pool, None)
        if agent is not None:
            _close(agent)

    def close(self) -> None:
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            _close(agent)


def simulator_for(service: CommandService, pool: str, default_agent_state: Path) -> SimulatorControl:
    """A pool's simulated agent, to administer (its journal, storage, faults; seeding)."""
    url = pool_agent_url(service, pool)
    if url:
        return RemoteControl(url)
    if pool != DEFAULT_POOL:
        if service.entity(EntityRef(EntityType.STORAGE_POOL, pool)) is None:
            raise NotFoundError(f"no storage pool {pool}; add it with 'orchestrator pools add {pool} --agent URL'")
        raise AgentUnavailableError(f"storage pool {pool} has no agent; set one with 'orchestrator pools set-agent'")
    return InProcessControl(SimulatedAgentBackend(default_agent_state), owned=True)


def _close(agent: AgentPort) -> None:
    close = getattr(agent, "close", None)
    if callable(close):
        close()
