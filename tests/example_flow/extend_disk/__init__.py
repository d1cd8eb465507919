"""ExtendDisk: a flow written outside the orchestrator, using only its public face.

It adds a new volume on top of a disk's image (one create_volume task). On
success the disk's active volume is the new one; on failure the engine reverts
what the task made and the disk stays as it was.
"""

from __future__ import annotations

from typing import Any

from orchestrator import (
    ChildPlan,
    EntityRef,
    EntityType,
    Flow,
    FlowParams,
    InventoryAccess,
    LockMode,
    Plan,
    PlanContext,
    RootCommand,
    TaskPlan,
)
from orchestrator.domain.inventory import Disk
from orchestrator.flows.base import EntityId, require, uses


class ExtendDiskParams(FlowParams):
    disk_id: EntityId


class ExtendDisk(Flow):
    name = "ExtendDisk"
    description = "add a volume on top of a disk (an example flow from a package of its own)"
    params_model = ExtendDiskParams
    revert_on_failure = True

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, ExtendDiskParams)
        disk = require(ctx.inventory, EntityRef(EntityType.DISK, params.disk_id), Disk)
        volume = f"{disk.image_id}-ext-{ctx.command_id.hex[:8]}"
        locked = uses(  # the command locks inventory entities; its task also names the image it writes
            (EntityType.DISK, disk.entity_id, LockMode.WRITE),
            (EntityType.STORAGE_DOMAIN, disk.storage_domain_id, LockMode.READ),
        )
        touched = [*locked, *uses((EntityType.IMAGE, disk.image_id, LockMode.WRITE))]
        task = TaskPlan(
            task_id=ctx.task_id("extend"),
            verb="create_volume",
            args={
                "storage_domain_id": disk.storage_domain_id,
                "image_id": disk.image_id,
                "volume_id": volume,
                "parent_id": disk.active_volume,
            },
            entities=touched,
        )
        child = ChildPlan(str(ctx.command_id), self.name, [task])
        return Plan(f"extend disk {disk.entity_id} with volume {volume}", locked, [child])

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        disk = inventory.get(EntityRef(EntityType.DISK, command.params["disk_id"]))
        assert isinstance(disk, Disk)
        for task in command.tasks.values():
            disk.append_volume(str(task.args["volume_id"]))

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """The engine has reverted the new volume on the agent; the disk is unchanged."""
