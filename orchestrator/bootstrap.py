"""The composition root: the one place that builds an orchestrator, its engine and its agent.

Entry points (the CLI, the demo, scripts, tests) ask here for the parts they
need; every part can be injected instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.agent.port import AgentPort
from orchestrator.application import Orchestrator
from orchestrator.config import EngineSettings
from orchestrator.engine.task_manager import TaskManager


def build_engine(
    orch: Orchestrator,
    agent: AgentPort,
    settings: EngineSettings,
    *,
    update_projections: bool = True,
    clock: Callable[[], float] = time.time,
    engine_id: str | None = None,
) -> TaskManager:
    """An engine over the orchestrator's store and this agent (it keeps the read models current unless told not to)."""
    return TaskManager(
        orch.store,
        agent,
        settings,
        clock=clock,
        catch_up=orch.projections.catch_up if update_projections else None,
        engine_id=engine_id,
    )
