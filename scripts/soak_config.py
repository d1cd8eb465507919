"""What a soak run is told: its store, its length, and the chance of each thing it does per cycle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.store import parse_store_url

FLOW_NAMES = ("RemoveVm", "HibernateVm", "CreateTemplate", "CreateSnapshot")
FAULT_KINDS = (
    "unreachable",
    "slow",
    "timeout",
    "vanish",
    "fail",
    "refuse",
    "malformed",
    "phantom",
    "slow_answer",
    "network",  # with --agent-server: HTTP 500s, dropped connections, bodies that are not JSON-RPC
)
EARLY_KILL_SECONDS = 0.8  # a kill this soon after a start lands in (or right after) recovery


@dataclass
class SoakConfig:
    store: str
    cycles: int
    agent_state: Path
    workdir: Path
    seed: int
    vms: int = 16
    per_flow: int = 3
    cycle_seconds: float = 2.0
    kill_chance: float = 0.4
    recovery_kill_chance: float = 0.25
    fault_chance: float = 0.4
    conflict_chance: float = 0.4
    cancel_chance: float = 0.3
    race_cancel_chance: float = 0.3
    recovery_crash_chance: float = 0.15
    rebuild_chance: float = 0.25
    engines: int = 1  # engine processes at once (more than one: PostgreSQL only, sharing the pools)
    agent_server: bool = False  # the agent is a server process, reached over HTTP
    agent_kill_chance: float = 0.0  # with agent_server: chance per cycle to SIGKILL it (restarted soon after)
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    truth_every: int = 5
    task_seconds: float = 0.6
    poll_interval: float = 0.1
    final_timeout: float = 120.0


def default_agent_state(store: str, workdir: Path) -> Path:
    """Beside a SQLite store's file; in the work directory for PostgreSQL."""
    config = parse_store_url(store)
    if config.kind == "sqlite" and config.path is not None:
        return config.path.with_name(config.path.name + ".agent")
    return workdir / "agent.db"
