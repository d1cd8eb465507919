"""HibernateVm: two create-volume tasks, a memory dump and a small metadata volume."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, StorageDomain, Vm
from orchestrator.domain.model import EntityRef, EntityType, LockMode, StorageDomainStatus, VmStatus, short_id
from orchestrator.errors import CommandRefusedError
from orchestrator.flows.base import (
    ChildPlan,
    EntityId,
    Flow,
    FlowParams,
    InventoryAccess,
    Plan,
    PlanContext,
    TaskPlan,
    require,
    uses,
)

R, W = LockMode.READ, LockMode.WRITE
MEMORY_PARTS = ("memory", "metadata")


class HibernateVmParams(FlowParams):
    vm_id: EntityId
    storage_domain_id: EntityId | None = None


class HibernateVm(Flow):
    name = "HibernateVm"
    description = "hibernate a running VM: dump its memory to two new volumes"
    params_model = HibernateVmParams
    revert_on_failure = True

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, HibernateVmParams)
        vm = require(ctx.inventory, EntityRef(EntityType.VM, params.vm_id), Vm)
        if vm.status is not VmStatus.UP:
            raise CommandRefusedError(f"vm {vm.entity_id} is {vm.status}; only a running (up) vm can be hibernated")
        sd_id = params.storage_domain_id
        if sd_id is None:
            if not vm.disk_ids:
                raise CommandRefusedError(f"vm {vm.entity_id} has no disk; give storage_domain_id")
            sd_id = require(ctx.inventory, EntityRef(EntityType.DISK, vm.disk_ids[0]), Disk).storage_domain_id
        domain = require(ctx.inventory, EntityRef(EntityType.STORAGE_DOMAIN, sd_id), StorageDomain)
        if domain.status is not StorageDomainStatus.ACTIVE:
            raise CommandRefusedError(f"storage domain {sd_id} is {domain.status}")
        tasks = []
        for part in MEMORY_PARTS:
            image = short_id("img", ctx.command_id, part)
            tasks.append(
                TaskPlan(
                    task_id=ctx.task_id(part),
                    verb="create_volume",
                    args={
                        "storage_domain_id": sd_id,
                        "image_id": image,
                        "volume_id": short_id("vol", ctx.command_id, part),
                    },
                    entities=uses(
                        (EntityType.VM, vm.entity_id, W),
                        (EntityType.IMAGE, image, W),
                        (EntityType.STORAGE_DOMAIN, sd_id, R),
                    ),
                )
            )
        entities = uses((EntityType.VM, vm.entity_id, W), (EntityType.STORAGE_DOMAIN, sd_id, R))
        child = ChildPlan(str(ctx.command_id), self.name, tasks)  # the root owns its two tasks
        return Plan(f"hibernate vm {vm.entity_id} to {sd_id}", entities, [child])

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        vm = inventory.get(EntityRef(EntityType.VM, command.params["vm_id"]))
        assert isinstance(vm, Vm)
        volumes = [
            [str(t.args["storage_domain_id"]), str(t.args["image_id"]), str(t.args["volume_id"])]
            for t in command.tasks.values()
        ]
        vm.hibernate(volumes)

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """The engine has reverted the volumes that were created; the VM is back up."""
        vm = inventory.get(EntityRef(EntityType.VM, command.params["vm_id"]))
        assert isinstance(vm, Vm)
        vm.set_status(VmStatus.UP)
