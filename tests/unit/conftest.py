"""In-memory stand-ins for the unit tier: an inventory, small commands, agent views, task ends.

Nothing here opens a store or starts a process: inventory entities are the real
aggregates (`Vm.register(...)` etc.) held in a dict, and commands are built with
`RootCommand.accept(...)` and changed only through the aggregate's methods.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any
from uuid import UUID, uuid4

import pytest

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, InventoryEntity, StorageDomain, Vm
from orchestrator.domain.model import EndKind, EntityRef, EntityType, EntityUse, LockMode, TaskStatus
from orchestrator.domain.payloads import ChildRecord, TaskEndRecord
from orchestrator.domain.recovery import AgentTaskFact, AgentView
from orchestrator.flows.base import Flow, Plan, PlanContext

COMMAND_ID = UUID("0b7e3c1a-5d2f-4e8b-9a61-2f4c8d9e7b10")


class MemoryInventory:
    """The `InventoryAccess` protocol of orchestrator/flows/base.py over a dict of inventory aggregates."""

    def __init__(self, entities: Iterable[InventoryEntity] = ()) -> None:
        self.entities: dict[EntityRef, InventoryEntity] = {}
        for entity in entities:
            self.add(entity)

    def get(self, ref: EntityRef) -> InventoryEntity | None:
        return self.entities.get(ref)

    def add(self, entity: InventoryEntity) -> None:
        self.entities[entity.ref] = entity

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Everything is loaded already."""

    # ---- for the tests -------------------------------------------------------------------

    def vm(self, vm_id: str) -> Vm:
        entity = self.get(EntityRef(EntityType.VM, vm_id))
        assert isinstance(entity, Vm)
        return entity

    def disk(self, disk_id: str) -> Disk:
        entity = self.get(EntityRef(EntityType.DISK, disk_id))
        assert isinstance(entity, Disk)
        return entity

    def domain(self, sd_id: str) -> StorageDomain:
        entity = self.get(EntityRef(EntityType.STORAGE_DOMAIN, sd_id))
        assert isinstance(entity, StorageDomain)
        return entity

    def settle(self) -> None:
        """Forget pending events, as a save would: what happens next is all that is pending."""
        for entity in self.entities.values():
            entity.collect_events()

    def pending(self) -> dict[str, list[str]]:
        """Events not yet collected, by entity: what a save would record now."""
        out: dict[str, list[str]] = {}
        for ref, entity in self.entities.items():
            if entity.pending_events:
                out[ref.key] = [type(e).__qualname__ for e in entity.pending_events]
        return out

    def copy_state(self) -> dict[EntityRef, InventoryEntity]:
        return {ref: copy.deepcopy(entity) for ref, entity in self.entities.items()}


def seeded_inventory() -> MemoryInventory:
    """Two active domains and one inactive; vm-1 up with two disks (d-2 has two volumes), vm-2 down with
    one disk, vm-3 hibernated with one disk, vm-4 up with no disk, vm-5 up with a disk on the inactive domain."""
    inventory = MemoryInventory(
        [
            StorageDomain.register("sd-1", status="active"),
            StorageDomain.register("sd-2", status="active"),
            StorageDomain.register("sd-off", status="inactive"),
            Vm.register("vm-1", status="up", disk_ids=["d-1", "d-2"]),
            Disk.register("d-1", vm_id="vm-1", storage_domain_id="sd-1", image_id="img-1", volumes=["vol-1"]),
            Disk.register(
                "d-2", vm_id="vm-1", storage_domain_id="sd-2", image_id="img-2", volumes=["vol-2a", "vol-2b"]
            ),
            Vm.register("vm-2", status="down", disk_ids=["d-3"]),
            Disk.register("d-3", vm_id="vm-2", storage_domain_id="sd-1", image_id="img-3", volumes=["vol-3"]),
            Vm.register("vm-3", status="hibernated", disk_ids=["d-4"]),
            Disk.register("d-4", vm_id="vm-3", storage_domain_id="sd-1", image_id="img-4", volumes=["vol-4"]),
            Vm.register("vm-4", status="up", disk_ids=[]),
            Vm.register("vm-5", status="up", disk_ids=["d-5"]),
            Disk.register("d-5", vm_id="vm-5", storage_domain_id="sd-off", image_id="img-5", volumes=["vol-5"]),
        ]
    )
    inventory.settle()
    return inventory


@pytest.fixture
def inventory() -> MemoryInventory:
    return seeded_inventory()


def no_running_tasks(ref: EntityRef) -> list[str]:
    return []


def plan_flow(
    flow: Flow,
    params: dict[str, Any],
    inventory: MemoryInventory,
    *,
    command_id: UUID = COMMAND_ID,
    running: dict[EntityRef, list[str]] | None = None,
) -> Plan:
    found = running or {}
    ctx = PlanContext(command_id, inventory, lambda ref: list(found.get(ref, [])))
    return flow.plan(ctx, flow.parse_params(params))


def accept_flow(
    flow: Flow, params: dict[str, Any], inventory: MemoryInventory, *, command_id: UUID = COMMAND_ID
) -> RootCommand:
    """Plan and accept a command as `Orchestrator.submit` does, new entities added to the inventory."""
    parsed = flow.parse_params(params)
    plan = flow.plan(PlanContext(command_id, inventory, no_running_tasks), parsed)
    for entity in plan.new_entities:
        inventory.add(entity)
    inventory.settle()
    command = RootCommand.accept(
        command_id,
        flow.name,
        parsed.model_dump(mode="json"),
        plan.summary,
        plan.entities,
        [child.to_record() for child in plan.children],
    )
    command.collect_events()
    return command


def make_command(tasks: int = 2, *, command_id: UUID | None = None, flow: str = "RemoveVm") -> RootCommand:
    """A root command with tasks t1..tN, one child each (what the flows make, minus the inventory)."""
    children: list[ChildRecord] = [
        {
            "child_id": f"c{i}",
            "command_type": "RemoveImage",
            "tasks": [
                {
                    "task_id": f"t{i}",
                    "verb": "delete_image",
                    "args": {"storage_domain_id": "sd-1", "image_id": f"img-{i}"},
                    "entities": [["disk", f"d-{i}", "write"], ["storage_domain", "sd-1", "read"]],
                }
            ],
        }
        for i in range(1, tasks + 1)
    ]
    entities = [EntityUse(EntityRef(EntityType.VM, "vm-1"), LockMode.WRITE)]
    return RootCommand.accept(command_id or uuid4(), flow, {"vm_id": "vm-1"}, "a command", entities, children)


def agent_id(task_id: str) -> str:
    return f"agent-{task_id}"


def submit(command: RootCommand, *task_ids: str) -> None:
    command.record_submitted([(t, agent_id(t)) for t in task_ids])


def ended(
    task_id: str,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    kind: EndKind = EndKind.FINISHED,
    message: str = "",
    **result: object,
) -> TaskEndRecord:
    """A task end as the poller records it (orchestrator/engine/polling.py)."""
    return {"task_id": task_id, "status": status.value, "kind": kind.value, "message": message, "result": result}


def failed(task_id: str, message: str = "the agent says no") -> TaskEndRecord:
    return ended(task_id, TaskStatus.FAILED, EndKind.FINISHED, message)


def fact(command: RootCommand, task_id: str, *, ended: bool = False, agent_task_id: str | None = None) -> AgentTaskFact:
    """What the agent says of a task of this command: its id and key, and whether it ended."""
    return AgentTaskFact(agent_task_id or agent_id(task_id), command.task_key(task_id), ended)


def view(*facts: AgentTaskFact) -> AgentView:
    return AgentView(list(facts))
