"""CreateTemplate: one CreateImageTemplate child per disk, one copy-image task each."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, StorageDomain, Template, Vm
from orchestrator.domain.model import EntityRef, EntityType, ImageSetStatus, LockMode, StorageDomainStatus, short_id
from orchestrator.errors import CommandRefusedError
from orchestrator.flows.base import (
    ChildPlan,
    EntityId,
    Flow,
    FlowParams,
    InventoryAccess,
    Plan,
    PlanContext,
    ShortName,
    TaskPlan,
    require,
    uses,
)

R, W = LockMode.READ, LockMode.WRITE


class CreateTemplateParams(FlowParams):
    vm_id: EntityId
    name: ShortName
    target_storage_domain_id: EntityId | None = None
    template_id: EntityId | None = None


class CreateTemplate(Flow):
    name = "CreateTemplate"
    description = "copy every disk of a VM into a new template (the VM is only read)"
    params_model = CreateTemplateParams
    revert_on_failure = True

    def plan(self, ctx: PlanContext, params: Any) -> Plan:
        assert isinstance(params, CreateTemplateParams)
        vm = require(ctx.inventory, EntityRef(EntityType.VM, params.vm_id), Vm)
        ctx.inventory.prefetch(EntityRef(EntityType.DISK, d) for d in vm.disk_ids)
        disks = [require(ctx.inventory, EntityRef(EntityType.DISK, d), Disk) for d in vm.disk_ids]
        if not disks:
            raise CommandRefusedError(f"vm {vm.entity_id} has no disk to make a template from")
        template_id = params.template_id or short_id("tmpl", ctx.command_id, "template")
        existing = ctx.inventory.get(EntityRef(EntityType.TEMPLATE, template_id))
        if existing is not None:
            state = "was removed" if existing.removed else "exists"
            raise CommandRefusedError(f"template id {template_id} {state}; ids are never reused, choose another")
        images: list[list[str]] = []
        children = []
        for disk in disks:
            target_sd = params.target_storage_domain_id or disk.storage_domain_id
            for sd in dict.fromkeys((disk.storage_domain_id, target_sd)):  # copied from and to: both must be active
                domain = require(ctx.inventory, EntityRef(EntityType.STORAGE_DOMAIN, sd), StorageDomain)
                if domain.status is not StorageDomainStatus.ACTIVE:
                    raise CommandRefusedError(f"storage domain {sd} is {domain.status}")
            image = short_id("img", ctx.command_id, disk.entity_id)
            volume = short_id("vol", ctx.command_id, disk.entity_id)
            images.append([target_sd, image, volume])
            task = TaskPlan(
                task_id=ctx.task_id(disk.entity_id),
                verb="copy_image",
                args={
                    "source_storage_domain_id": disk.storage_domain_id,
                    "source_image_id": disk.image_id,
                    "target_storage_domain_id": target_sd,
                    "target_image_id": image,
                    "target_volume_id": volume,
                },
                entities=uses(
                    (EntityType.STORAGE_DOMAIN, disk.storage_domain_id, R),
                    (EntityType.STORAGE_DOMAIN, target_sd, R),
                    (EntityType.IMAGE, disk.image_id, R),
                    (EntityType.IMAGE, image, W),
                    (EntityType.TEMPLATE, template_id, W),
                    (EntityType.VM, vm.entity_id, R),
                    (EntityType.DISK, disk.entity_id, R),
                ),
            )
            children.append(ChildPlan(ctx.child_id(disk.entity_id), "CreateImageTemplate", [task]))
        template = Template.register(
            template_id, name=params.name, source_vm_id=vm.entity_id, images=images, status=ImageSetStatus.LOCKED
        )
        entities = uses(
            (EntityType.VM, vm.entity_id, R),
            *[(EntityType.DISK, d.entity_id, R) for d in disks],
            (EntityType.TEMPLATE, template_id, W),
            *[(EntityType.STORAGE_DOMAIN, d.storage_domain_id, R) for d in disks],
            *[(EntityType.STORAGE_DOMAIN, i[0], R) for i in images],
        )
        summary = f"create template {template_id} ({params.name}) from vm {vm.entity_id}"
        return Plan(summary, entities, children, new_entities=[template])

    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None:
        template = inventory.get(self._template_ref(command))
        assert isinstance(template, Template)
        template.mark_ready()

    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None:
        """The engine has removed the copied images on the agent; the template goes."""
        template = inventory.get(self._template_ref(command))
        assert isinstance(template, Template)
        template.remove(str(command.id))

    @staticmethod
    def _template_ref(command: RootCommand) -> EntityRef:
        return next(e.ref for e in command.entities if e.ref.type is EntityType.TEMPLATE)
