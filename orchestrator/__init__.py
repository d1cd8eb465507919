"""Event-sourced command orchestrator: long commands run as tasks on host agents, surviving engine crashes.

What a program embeds:

    import orchestrator

    with orchestrator.Orchestrator.open("sqlite:///my.db") as orch:
        result = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
        engine = orch.engine(agent, orchestrator.load_engine_settings())
        engine.recover()
        engine.run(stop_event, until_idle=True)

Flows of one's own subclass `Flow` and register in the entry-point group
`orchestrator.flows` (or call `register_flow`). Names are loaded on first use,
so importing the package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.agent.port import AgentPort, AgentTaskStatus, CreateResult, StorageView, TaskSpec
    from orchestrator.bootstrap import Orchestrator, build_engine, inspect
    from orchestrator.config import EngineSettings, load_engine_settings
    from orchestrator.domain.commands import RootCommand
    from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType, LockMode
    from orchestrator.engine.task_manager import TaskManager
    from orchestrator.errors import OrchestratorError
    from orchestrator.flows.base import ChildPlan, Flow, FlowParams, InventoryAccess, Plan, PlanContext, TaskPlan
    from orchestrator.flows.registry import register_flow
    from orchestrator.service import CancelResult, SubmitResult

_EXPORTS = {
    "AgentPort": "orchestrator.agent.port",
    "AgentTaskStatus": "orchestrator.agent.port",
    "CreateResult": "orchestrator.agent.port",
    "StorageView": "orchestrator.agent.port",
    "TaskSpec": "orchestrator.agent.port",
    "Orchestrator": "orchestrator.bootstrap",
    "build_engine": "orchestrator.bootstrap",
    "inspect": "orchestrator.bootstrap",
    "EngineSettings": "orchestrator.config",
    "load_engine_settings": "orchestrator.config",
    "RootCommand": "orchestrator.domain.commands",
    "DEFAULT_POOL": "orchestrator.domain.model",
    "EntityRef": "orchestrator.domain.model",
    "EntityType": "orchestrator.domain.model",
    "LockMode": "orchestrator.domain.model",
    "TaskManager": "orchestrator.engine.task_manager",
    "OrchestratorError": "orchestrator.errors",
    "ChildPlan": "orchestrator.flows.base",
    "Flow": "orchestrator.flows.base",
    "FlowParams": "orchestrator.flows.base",
    "InventoryAccess": "orchestrator.flows.base",
    "Plan": "orchestrator.flows.base",
    "PlanContext": "orchestrator.flows.base",
    "TaskPlan": "orchestrator.flows.base",
    "register_flow": "orchestrator.flows.registry",
    "CancelResult": "orchestrator.service",
    "SubmitResult": "orchestrator.service",
}

__all__ = [
    "DEFAULT_POOL",
    "AgentPort",
    "AgentTaskStatus",
    "CancelResult",
    "ChildPlan",
    "CreateResult",
    "EngineSettings",
    "EntityRef",
    "EntityType",
    "Flow",
    "FlowParams",
    "InventoryAccess",
    "LockMode",
    "Orchestrator",
    "OrchestratorError",
    "Plan",
    "PlanContext",
    "RootCommand",
    "StorageView",
    "SubmitResult",
    "TaskManager",
    "TaskPlan",
    "TaskSpec",
    "build_engine",
    "inspect",
    "load_engine_settings",
    "register_flow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
