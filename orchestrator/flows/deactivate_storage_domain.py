"""DeactivateStorageDomain: no tasks; refused while any task runs on the domain."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import StorageDomain
from orchestrator.domain.model import EntityRef, EntityType, LockMode, StorageDomainStatus
from orchestrator.errors import CommandRefusedError
from orchestrator.flows.base import EntityId, Flow, FlowParams, InventoryAccess, Plan, PlanContext, require, uses


class DeactivateStorageDomainParams(FlowParams):
    storage_domain_id: EntityId


class DeactivateStorageDomain(Flow):
    name = "DeactivateStorageDomain"
    description = "deactivate a storage domain (refused while tasks run on it)"
    params_model = DeactivateStorageDomainParams

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, DeactivateStorageDomainParams)
        ref = EntityRef(EntityType.STORAGE_DOMAIN, params.storage_domain_id)
        domain = require(ctx.inventory, ref, StorageDomain)
        if domain.status is not StorageDomainStatus.ACTIVE:
            raise CommandRefusedError(f"storage domain {ref.id} is already {domain.status}")
        running = ctx.running_tasks_on(ref)
        if running:
            shown = ", ".join(running[:5]) + (f" and {len(running) - 5} more" if len(running) > 5 else "")
            raise CommandRefusedError(
                f"cannot deactivate storage domain {ref.id}: {len(running)} task(s) running on it ({shown})"
            )
        return Plan(f"deactivate storage domain {ref.id}", uses((EntityType.STORAGE_DOMAIN, ref.id, LockMode.WRITE)))

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        domain = inventory.get(EntityRef(EntityType.STORAGE_DOMAIN, command.params["storage_domain_id"]))
        assert isinstance(domain, StorageDomain)
        domain.set_status(StorageDomainStatus.INACTIVE)

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """Nothing was changed; the locks are released by the engine."""
