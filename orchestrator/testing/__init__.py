"""Test doubles and the demo's agent: the simulated agent, in process and as a server, seeding, the invariants.

Only the composition root, the demo, tests and scripts import this package, and
they import the simulator through it (the names below), never its modules.
`orchestrator.agent` never imports it: the engine's side does not depend on its
test doubles.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.testing.faults import FaultConfig, NetworkFault
from orchestrator.testing.simulated_agent import SimulatedAgent
from orchestrator.testing.simulator_backend import (
    AGENT_STATE_ENV,
    SimulatedAgentBackend,
    default_agent_state_path,
    task_seconds_from_env,
)

if TYPE_CHECKING:
    from orchestrator.testing.agent_process import AgentProcess
    from orchestrator.testing.agent_server import serve
    from orchestrator.testing.invariants import InvariantResult, check_invariants, expected_storage
    from orchestrator.testing.seed import SEED_DOMAINS, SeedResult, seed_inventory
    from orchestrator.testing.simulator_admin import SimulatorAdmin
    from orchestrator.testing.simulator_protocol import SIMULATOR_METHODS, SIMULATOR_SCHEMA_PATH, simulator_schema

# Loaded on first use: the server and the HTTP client pull in uvicorn, Starlette and httpx, which
# the engine's command line does not need, and `python -m` of a module the package had already
# imported would run a second copy of it.
_LAZY = {
    "AgentProcess": "orchestrator.testing.agent_process",
    "InvariantResult": "orchestrator.testing.invariants",
    "check_invariants": "orchestrator.testing.invariants",
    "expected_storage": "orchestrator.testing.invariants",
    "SEED_DOMAINS": "orchestrator.testing.seed",
    "SeedResult": "orchestrator.testing.seed",
    "seed_inventory": "orchestrator.testing.seed",
    "serve": "orchestrator.testing.agent_server",
    "SimulatorAdmin": "orchestrator.testing.simulator_admin",
    "SIMULATOR_METHODS": "orchestrator.testing.simulator_protocol",
    "SIMULATOR_SCHEMA_PATH": "orchestrator.testing.simulator_protocol",
    "simulator_schema": "orchestrator.testing.simulator_protocol",
}

__all__ = [
    "AGENT_STATE_ENV",
    "SEED_DOMAINS",
    "SIMULATOR_METHODS",
    "SIMULATOR_SCHEMA_PATH",
    "AgentProcess",
    "FaultConfig",
    "InvariantResult",
    "NetworkFault",
    "SeedResult",
    "SimulatedAgent",
    "SimulatedAgentBackend",
    "SimulatorAdmin",
    "check_invariants",
    "default_agent_state_path",
    "expected_storage",
    "seed_inventory",
    "serve",
    "simulator_schema",
    "task_seconds_from_env",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
