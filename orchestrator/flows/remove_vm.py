"""RemoveVm: one RemoveImage child per disk, one delete task each."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, Vm
from orchestrator.domain.model import EntityRef, EntityType, LockMode, VmStatus
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


class RemoveVmParams(FlowParams):
    vm_id: EntityId


class RemoveVm(Flow):
    name = "RemoveVm"
    description = "remove a VM and all its disks"
    params_model = RemoveVmParams

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, RemoveVmParams)
        vm = require(ctx.inventory, EntityRef(EntityType.VM, params.vm_id), Vm)
        if vm.status is VmStatus.HIBERNATED:
            raise CommandRefusedError(f"vm {vm.entity_id} is hibernated; resume it before removing it")
        ctx.inventory.prefetch(EntityRef(EntityType.DISK, d) for d in vm.disk_ids)
        disks = [require(ctx.inventory, EntityRef(EntityType.DISK, d), Disk) for d in vm.disk_ids]
        entities = uses(
            (EntityType.VM, vm.entity_id, W),
            *[(EntityType.DISK, d.entity_id, W) for d in disks],
            *[(EntityType.STORAGE_DOMAIN, d.storage_domain_id, R) for d in disks],
        )
        children = [
            ChildPlan(
                child_id=ctx.child_id(disk.entity_id),
                command_type="RemoveImage",
                tasks=[
                    TaskPlan(
                        task_id=ctx.task_id(disk.entity_id),
                        verb="delete_image",
                        args={"storage_domain_id": disk.storage_domain_id, "image_id": disk.image_id},
                        entities=uses(
                            (EntityType.VM, vm.entity_id, W),
                            (EntityType.DISK, disk.entity_id, W),
                            (EntityType.IMAGE, disk.image_id, W),
                            (EntityType.STORAGE_DOMAIN, disk.storage_domain_id, R),
                        ),
                    )
                ],
            )
            for disk in disks
        ]
        return Plan(f"remove vm {vm.entity_id} and its {len(disks)} disk(s)", entities, children)

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        vm_id = command.params["vm_id"]
        for disk_ref in [e.ref for e in command.entities if e.ref.type is EntityType.DISK]:
            disk = inventory.get(disk_ref)
            if disk is not None:
                disk.remove(str(command.id))
        vm = inventory.get(EntityRef(EntityType.VM, vm_id))
        assert vm is not None
        vm.remove(str(command.id))

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """Disks whose removal succeeded are gone; the VM stays, Down, with the rest."""
        removed = self.succeeded_entities(command, EntityType.DISK)
        for disk_id in removed:
            disk = inventory.get(EntityRef(EntityType.DISK, disk_id))
            if disk is not None:
                disk.remove(str(command.id))
        vm = inventory.get(EntityRef(EntityType.VM, command.params["vm_id"]))
        assert isinstance(vm, Vm)
        vm.detach_disks(removed)
        vm.set_status(VmStatus.DOWN)
