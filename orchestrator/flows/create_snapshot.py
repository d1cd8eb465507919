"""CreateSnapshot: one CreateSnapshot child per disk, one create-volume task each."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, Snapshot, StorageDomain, Vm
from orchestrator.domain.model import (
    EntityRef,
    EntityType,
    ImageSetStatus,
    LockMode,
    StorageDomainStatus,
    VmStatus,
    short_id,
)
from orchestrator.errors import CommandRefusedError
from orchestrator.flows.base import (
    ChildPlan,
    EntityId,
    Flow,
    FlowParams,
    FreeText,
    InventoryAccess,
    Plan,
    PlanContext,
    TaskPlan,
    require,
    uses,
)

R, W = LockMode.READ, LockMode.WRITE


class CreateSnapshotParams(FlowParams):
    vm_id: EntityId
    description: FreeText = ""


class CreateSnapshot(Flow):
    name = "CreateSnapshot"
    description = "snapshot every disk of a VM: a new active volume on each"
    params_model = CreateSnapshotParams
    revert_on_failure = True

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, CreateSnapshotParams)
        vm = require(ctx.inventory, EntityRef(EntityType.VM, params.vm_id), Vm)
        if vm.status is VmStatus.HIBERNATED:
            raise CommandRefusedError(f"vm {vm.entity_id} is hibernated")
        ctx.inventory.prefetch(EntityRef(EntityType.DISK, d) for d in vm.disk_ids)
        disks = [require(ctx.inventory, EntityRef(EntityType.DISK, d), Disk) for d in vm.disk_ids]
        if not disks:
            raise CommandRefusedError(f"vm {vm.entity_id} has no disk to snapshot")
        for sd in dict.fromkeys(d.storage_domain_id for d in disks):  # the new volumes go there
            domain = require(ctx.inventory, EntityRef(EntityType.STORAGE_DOMAIN, sd), StorageDomain)
            if domain.status is not StorageDomainStatus.ACTIVE:
                raise CommandRefusedError(f"storage domain {sd} is {domain.status}")
        snapshot_id = short_id("snap", ctx.command_id, "snapshot")
        new_volumes = {d.entity_id: short_id("vol", ctx.command_id, d.entity_id) for d in disks}
        children = [
            ChildPlan(
                ctx.child_id(disk.entity_id),
                "CreateSnapshotForDisk",
                [
                    TaskPlan(
                        task_id=ctx.task_id(disk.entity_id),
                        verb="create_volume",
                        args={
                            "storage_domain_id": disk.storage_domain_id,
                            "image_id": disk.image_id,
                            "volume_id": new_volumes[disk.entity_id],
                            "parent_id": disk.active_volume,
                        },
                        entities=uses(
                            (EntityType.VM, vm.entity_id, W),
                            (EntityType.DISK, disk.entity_id, W),
                            (EntityType.IMAGE, disk.image_id, W),
                            (EntityType.STORAGE_DOMAIN, disk.storage_domain_id, R),
                            (EntityType.SNAPSHOT, snapshot_id, W),
                        ),
                    )
                ],
            )
            for disk in disks
        ]
        snapshot = Snapshot.register(
            snapshot_id,
            vm_id=vm.entity_id,
            description=params.description,
            volumes=new_volumes,
            status=ImageSetStatus.LOCKED,
        )
        entities = uses(
            (EntityType.VM, vm.entity_id, W),
            *[(EntityType.DISK, d.entity_id, W) for d in disks],
            (EntityType.SNAPSHOT, snapshot_id, W),
            *[(EntityType.STORAGE_DOMAIN, d.storage_domain_id, R) for d in disks],
        )
        summary = f"snapshot {snapshot_id} of vm {vm.entity_id} ({len(disks)} disk(s))"
        return Plan(summary, entities, children, new_entities=[snapshot])

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        snapshot = inventory.get(self._snapshot_ref(command))
        assert isinstance(snapshot, Snapshot)
        for disk_id, volume_id in snapshot.volumes.items():
            disk = inventory.get(EntityRef(EntityType.DISK, disk_id))
            assert isinstance(disk, Disk)
            disk.append_volume(volume_id)
        snapshot.mark_ready()
        vm = inventory.get(EntityRef(EntityType.VM, snapshot.vm_id))
        assert isinstance(vm, Vm)
        vm.add_snapshot(snapshot.entity_id)

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """The engine has removed the new volumes; previous volumes stay active."""
        snapshot = inventory.get(self._snapshot_ref(command))
        assert snapshot is not None
        snapshot.remove(str(command.id))

    @staticmethod
    def _snapshot_ref(command: RootCommand) -> EntityRef:
        return next(e.ref for e in command.entities if e.ref.type is EntityType.SNAPSHOT)
