"""The composition root: the one place that builds an orchestrator, its engine and its agents from configuration.

Entry points (the CLI, the HTTP API, the demo, scripts, tests, a program that
embeds the orchestrator) start here; every part can be injected instead.
"""

from __future__ import annotations

from orchestrator.bootstrap.engine_service import (
    EngineOptions,
    EngineTimeoutError,
    build_engine,
    run_engine,
)
from orchestrator.bootstrap.inspection import inspect, read_agent_tasks
from orchestrator.bootstrap.system import Orchestrator

__all__ = [
    "EngineOptions",
    "EngineTimeoutError",
    "Orchestrator",
    "build_engine",
    "inspect",
    "read_agent_tasks",
    "run_engine",
]
