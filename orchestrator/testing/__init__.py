"""Test doubles and the demo's agent: the simulated agent (in process and as a server), seeding, the invariants.

Only the composition root, the demo, tests and scripts import this package.
"""

from orchestrator.testing.simulated_agent import (
    AGENT_STATE_ENV,
    FaultConfig,
    NetworkFault,
    SimulatedAgent,
    SimulatedAgentBackend,
    default_agent_state_path,
    task_seconds_from_env,
)

__all__ = [
    "AGENT_STATE_ENV",
    "FaultConfig",
    "NetworkFault",
    "SimulatedAgent",
    "SimulatedAgentBackend",
    "default_agent_state_path",
    "task_seconds_from_env",
]
