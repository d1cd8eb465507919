"""The flows the orchestrator knows, by name."""

from __future__ import annotations

from orchestrator.errors import UnknownFlowError
from orchestrator.flows.base import Flow
from orchestrator.flows.create_snapshot import CreateSnapshot
from orchestrator.flows.create_template import CreateTemplate
from orchestrator.flows.deactivate_storage_domain import DeactivateStorageDomain
from orchestrator.flows.hibernate_vm import HibernateVm
from orchestrator.flows.remove_vm import RemoveVm

FLOWS: dict[str, Flow] = {
    flow.name: flow
    for flow in (RemoveVm(), HibernateVm(), CreateTemplate(), CreateSnapshot(), DeactivateStorageDomain())
}


def get_flow(name: str) -> Flow:
    flow = FLOWS.get(name)
    if flow is None:
        by_lower = {n.lower(): f for n, f in FLOWS.items()}
        flow = by_lower.get(name.lower())
    if flow is None:
        raise UnknownFlowError(f"unknown flow {name!r}; known flows: {', '.join(FLOWS)}")
    return flow


__all__ = ["FLOWS", "Flow", "get_flow"]
