"""The inspection, wired: what recovery would decide, given what every pool's agent holds, changing nothing."""

from __future__ import annotations

from pathlib import Path

from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.port import AgentTaskStatus, parse_statuses, view_of
from orchestrator.domain.inventory import StoragePool
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType, entity_aggregate_id
from orchestrator.errors import OrchestratorError
from orchestrator.inspection import NOT_CONSULTED, AgentReading, InspectionReport, ReadOnlyStore, inspect_store
from orchestrator.testing import SimulatedAgentBackend, default_agent_state_path

PROVISIONAL = "verdicts that depend on the agent are provisional"


def read_agent_tasks(store: ReadOnlyStore, pools: list[str], agent_state: Path | None) -> AgentReading:
    """Every pool's agent's tasks, read without changing anything (a served agent is only asked)."""
    reading = AgentReading()
    for pool in pools:
        try:
            statuses, where = _tasks_of(store, pool, agent_state)
        except OrchestratorError as exc:
            reading.notes[pool] = f"{exc}: {PROVISIONAL}"
            continue
        if statuses is None:
            reading.notes[pool] = f"{where}: {PROVISIONAL}"
            continue
        reading.views[pool] = view_of(statuses)
        reading.notes[pool] = f"reconciled with the agent at {where} ({len(statuses)} task(s) held)"
    return reading


def _tasks_of(store: ReadOnlyStore, pool: str, agent_state: Path | None) -> tuple[list[AgentTaskStatus] | None, str]:
    found = store.store.get(entity_aggregate_id(EntityRef(EntityType.STORAGE_POOL, pool)))
    url = found.agent_url if isinstance(found, StoragePool) else None
    if url:
        agent = HttpAgent(url, expected_pool=pool)
        try:
            return agent.task_statuses(), url
        finally:
            agent.close()
    if pool != DEFAULT_POOL:
        return None, f"storage pool {pool} has no agent"
    path = agent_state or default_agent_state_path(store.config)
    if not path.exists():
        return None, f"no agent state at {path}"
    return parse_statuses(SimulatedAgentBackend.peek_statuses(path)), str(path)


def inspect(store_url: str | None, agent_state: Path | None = None, *, with_agent: bool = True) -> InspectionReport:
    """What recovery would decide for every command in flight, changing nothing anywhere."""
    store = ReadOnlyStore(store_url)
    try:
        pools = sorted({c.pool_id for c in store.in_flight_commands()} | {DEFAULT_POOL})
        agent = read_agent_tasks(store, pools, agent_state) if with_agent else NOT_CONSULTED
        return inspect_store(store, agent)
    finally:
        store.close()
