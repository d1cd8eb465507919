"""Each flow's plan and end actions against an in-memory inventory (tests/unit/conftest.py).

Plans: children, tasks with their verbs and arguments, the entities each task
touches and how (G2), new entities, refusals and parameter validation. End
actions: the inventory changes each flow promises once its command's tasks
have been driven to their ends through the aggregate, and that running an end
action a second time changes nothing (recovery may run it again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

from orchestrator.domain.commands import RootCommand, TaskState
from orchestrator.domain.inventory import Disk, Snapshot, Template, Vm
from orchestrator.domain.model import (
    CommandStatus,
    EndAction,
    EndKind,
    EntityRef,
    EntityType,
    EntityUse,
    FailureCause,
    TaskStatus,
)
from orchestrator.domain.payloads import TaskEndRecord
from orchestrator.errors import CommandRefusedError, InvalidParametersError, UnknownFlowError
from orchestrator.flows import FLOWS, get_flow
from orchestrator.flows.base import MAX_PARAMS_BYTES, Flow, Plan, TaskPlan
from orchestrator.flows.create_snapshot import CreateSnapshot
from orchestrator.flows.create_template import CreateTemplate
from orchestrator.flows.deactivate_storage_domain import DeactivateStorageDomain
from orchestrator.flows.hibernate_vm import HibernateVm
from orchestrator.flows.remove_vm import RemoveVm
from tests.unit.conftest import (
    COMMAND_ID,
    MemoryInventory,
    accept_flow,
    ended,
    failed,
    plan_flow,
    submit,
)

OTHER_ID = UUID("5f1d2c3b-4a59-4e6f-8b7a-9c0d1e2f3a4b")
SD1 = EntityRef(EntityType.STORAGE_DOMAIN, "sd-1")


def modes(entities: list[EntityUse]) -> dict[str, str]:
    """`type:id` -> read/write, each entity once."""
    keys = [e.ref.key for e in entities]
    assert len(keys) == len(set(keys)), f"an entity is declared twice: {keys}"
    return {e.ref.key: e.mode.value for e in entities}


def tasks_of(plan: Plan) -> list[TaskPlan]:
    return [t for child in plan.children for t in child.tasks]


def task_on(command: RootCommand, entity_type: EntityType, entity_id: str) -> TaskState:
    (task,) = [t for t in command.tasks.values() if any(e.ref == EntityRef(entity_type, entity_id) for e in t.entities)]
    return task


def refused(flow: Flow, params: dict[str, Any], inventory: MemoryInventory, **kwargs: Any) -> str:
    with pytest.raises(CommandRefusedError) as caught:
        plan_flow(flow, params, inventory, **kwargs)
    return str(caught.value)


# ---- RemoveVm: plan --------------------------------------------------------------------------------


def test_remove_vm_plans_one_remove_image_child_and_delete_task_per_disk(inventory: MemoryInventory) -> None:
    plan = plan_flow(RemoveVm(), {"vm_id": "vm-1"}, inventory)

    assert plan.summary == "remove vm vm-1 and its 2 disk(s)"
    assert modes(plan.entities) == {
        "vm:vm-1": "write",
        "disk:d-1": "write",
        "disk:d-2": "write",
        "storage_domain:sd-1": "read",
        "storage_domain:sd-2": "read",
    }
    assert [(c.command_type, len(c.tasks)) for c in plan.children] == [("RemoveImage", 1), ("RemoveImage", 1)]
    first, second = tasks_of(plan)
    assert (first.verb, first.args) == ("delete_image", {"storage_domain_id": "sd-1", "image_id": "img-1"})
    assert (second.verb, second.args) == ("delete_image", {"storage_domain_id": "sd-2", "image_id": "img-2"})
    assert modes(first.entities) == {
        "vm:vm-1": "write",
        "disk:d-1": "write",
        "image:img-1": "write",
        "storage_domain:sd-1": "read",
    }
    assert modes(second.entities) == {
        "vm:vm-1": "write",
        "disk:d-2": "write",
        "image:img-2": "write",
        "storage_domain:sd-2": "read",
    }
    assert plan.new_entities == []


def test_remove_vm_refuses_a_hibernated_vm(inventory: MemoryInventory) -> None:
    assert refused(RemoveVm(), {"vm_id": "vm-3"}, inventory) == ("vm vm-3 is hibernated; resume it before removing it")


def test_remove_vm_refuses_a_vm_that_does_not_exist_or_was_removed(inventory: MemoryInventory) -> None:
    assert refused(RemoveVm(), {"vm_id": "vm-404"}, inventory) == "vm vm-404 does not exist"
    inventory.vm("vm-2").remove("earlier-command")
    assert refused(RemoveVm(), {"vm_id": "vm-2"}, inventory) == "vm vm-2 does not exist"


def test_remove_vm_refuses_a_vm_whose_disk_is_missing_from_the_inventory(inventory: MemoryInventory) -> None:
    inventory.disk("d-2").remove("earlier-command")
    assert refused(RemoveVm(), {"vm_id": "vm-1"}, inventory) == "disk d-2 does not exist"


# ---- HibernateVm: plan -----------------------------------------------------------------------------


def test_hibernate_vm_plans_a_memory_and_a_metadata_volume_on_its_first_disks_domain(
    inventory: MemoryInventory,
) -> None:
    plan = plan_flow(HibernateVm(), {"vm_id": "vm-1"}, inventory)

    assert plan.summary == "hibernate vm vm-1 to sd-1"
    assert modes(plan.entities) == {"vm:vm-1": "write", "storage_domain:sd-1": "read"}
    (child,) = plan.children
    assert (child.child_id, child.command_type) == (str(COMMAND_ID), "HibernateVm")  # the root owns its tasks
    memory, metadata = child.tasks
    for task in (memory, metadata):
        assert task.verb == "create_volume"
        assert task.args["storage_domain_id"] == "sd-1"
        assert str(task.args["image_id"]).startswith("img-")
        assert str(task.args["volume_id"]).startswith("vol-")
        assert modes(task.entities) == {
            "vm:vm-1": "write",
            f"image:{task.args['image_id']}": "write",
            "storage_domain:sd-1": "read",
        }
    assert memory.args["image_id"] != metadata.args["image_id"]
    assert memory.args["volume_id"] != metadata.args["volume_id"]
    assert plan.new_entities == []


def test_hibernate_vm_uses_the_storage_domain_it_is_given(inventory: MemoryInventory) -> None:
    plan = plan_flow(HibernateVm(), {"vm_id": "vm-4", "storage_domain_id": "sd-2"}, inventory)  # no disk: fine

    assert plan.summary == "hibernate vm vm-4 to sd-2"
    assert {t.args["storage_domain_id"] for t in tasks_of(plan)} == {"sd-2"}
    assert modes(plan.entities) == {"vm:vm-4": "write", "storage_domain:sd-2": "read"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vm_id": "vm-2"}, "vm vm-2 is down; only a running (up) vm can be hibernated"),
        ({"vm_id": "vm-3"}, "vm vm-3 is hibernated; only a running (up) vm can be hibernated"),
        ({"vm_id": "vm-4"}, "vm vm-4 has no disk; give storage_domain_id"),
        ({"vm_id": "vm-5"}, "storage domain sd-off is inactive"),
        ({"vm_id": "vm-1", "storage_domain_id": "sd-off"}, "storage domain sd-off is inactive"),
        ({"vm_id": "vm-1", "storage_domain_id": "sd-9"}, "storage domain sd-9 does not exist"),
    ],
    ids=["down", "hibernated", "no disk", "first disk's domain inactive", "given domain inactive", "no domain"],
)
def test_hibernate_vm_refuses(inventory: MemoryInventory, params: dict[str, Any], message: str) -> None:
    assert refused(HibernateVm(), params, inventory) == message


# ---- CreateTemplate: plan --------------------------------------------------------------------------


def test_create_template_plans_one_copy_per_disk_touching_both_domains_the_image_and_the_template(
    inventory: MemoryInventory,
) -> None:
    plan = plan_flow(
        CreateTemplate(), {"vm_id": "vm-1", "name": "golden", "target_storage_domain_id": "sd-2"}, inventory
    )

    (template,) = plan.new_entities
    assert isinstance(template, Template)
    tmpl = template.entity_id
    assert tmpl.startswith("tmpl-")
    assert plan.summary == f"create template {tmpl} (golden) from vm vm-1"
    assert modes(plan.entities) == {
        "vm:vm-1": "read",  # the VM is only read
        "disk:d-1": "read",
        "disk:d-2": "read",
        f"template:{tmpl}": "write",
        "storage_domain:sd-1": "read",
        "storage_domain:sd-2": "read",
    }
    assert [c.command_type for c in plan.children] == ["CreateImageTemplate", "CreateImageTemplate"]
    across, within = tasks_of(plan)
    assert across.verb == within.verb == "copy_image"
    assert set(across.args) == {
        "source_storage_domain_id",
        "source_image_id",
        "target_storage_domain_id",
        "target_image_id",
        "target_volume_id",
    }
    assert (across.args["source_storage_domain_id"], across.args["source_image_id"]) == ("sd-1", "img-1")
    assert (within.args["source_storage_domain_id"], within.args["source_image_id"]) == ("sd-2", "img-2")
    assert across.args["target_storage_domain_id"] == within.args["target_storage_domain_id"] == "sd-2"
    assert modes(across.entities) == {
        "storage_domain:sd-1": "read",  # source
        "storage_domain:sd-2": "read",  # target
        "image:img-1": "read",
        f"image:{across.args['target_image_id']}": "write",  # the copy it makes
        f"template:{tmpl}": "write",
        "vm:vm-1": "read",
        "disk:d-1": "read",
    }
    assert modes(within.entities) == {  # d-2 is on sd-2 already: source and target are one domain
        "storage_domain:sd-2": "read",
        "image:img-2": "read",
        f"image:{within.args['target_image_id']}": "write",
        f"template:{tmpl}": "write",
        "vm:vm-1": "read",
        "disk:d-2": "read",
    }
    # the template is born locked, and lists the images the copies make
    assert (template.name, template.source_vm_id, template.status) == ("golden", "vm-1", "locked")
    assert template.images == [
        [str(t.args["target_storage_domain_id"]), str(t.args["target_image_id"]), str(t.args["target_volume_id"])]
        for t in (across, within)
    ]
    assert across.args["target_image_id"] != within.args["target_image_id"]


def test_create_template_copies_each_disk_to_its_own_domain_by_default(inventory: MemoryInventory) -> None:
    plan = plan_flow(CreateTemplate(), {"vm_id": "vm-1", "name": "golden", "template_id": "tmpl-mine"}, inventory)

    assert [t.args["target_storage_domain_id"] for t in tasks_of(plan)] == ["sd-1", "sd-2"]
    assert [e.entity_id for e in plan.new_entities] == ["tmpl-mine"]
    assert modes(plan.entities)["template:tmpl-mine"] == "write"


def test_create_template_copy_task_records_the_image_it_creates(inventory: MemoryInventory) -> None:
    plan = plan_flow(CreateTemplate(), {"vm_id": "vm-1", "name": "golden"}, inventory)

    for task in tasks_of(plan):
        assert modes(task.entities).get(f"image:{task.args['target_image_id']}") == "write"


def test_create_template_refuses_a_vm_without_disks(inventory: MemoryInventory) -> None:
    assert refused(CreateTemplate(), {"vm_id": "vm-4", "name": "t"}, inventory) == (
        "vm vm-4 has no disk to make a template from"
    )


def test_create_template_refuses_an_inactive_target_domain(inventory: MemoryInventory) -> None:
    params = {"vm_id": "vm-1", "name": "t", "target_storage_domain_id": "sd-off"}
    assert refused(CreateTemplate(), params, inventory) == "storage domain sd-off is inactive"


def test_create_template_never_reuses_a_template_id(inventory: MemoryInventory) -> None:
    accept_flow(CreateTemplate(), {"vm_id": "vm-1", "name": "one", "template_id": "tmpl-x"}, inventory)
    params = {"vm_id": "vm-2", "name": "two", "template_id": "tmpl-x"}

    assert refused(CreateTemplate(), params, inventory, command_id=OTHER_ID) == (
        "template id tmpl-x exists; ids are never reused, choose another"
    )
    template = inventory.get(EntityRef(EntityType.TEMPLATE, "tmpl-x"))
    assert template is not None
    template.remove("a-failed-command")
    assert refused(CreateTemplate(), params, inventory, command_id=OTHER_ID) == (
        "template id tmpl-x was removed; ids are never reused, choose another"
    )


# ---- CreateSnapshot: plan --------------------------------------------------------------------------


def test_create_snapshot_plans_a_new_volume_on_top_of_each_disks_active_volume(inventory: MemoryInventory) -> None:
    plan = plan_flow(CreateSnapshot(), {"vm_id": "vm-1", "description": "before upgrade"}, inventory)

    (snapshot,) = plan.new_entities
    assert isinstance(snapshot, Snapshot)
    snap = snapshot.entity_id
    assert snap.startswith("snap-")
    assert plan.summary == f"snapshot {snap} of vm vm-1 (2 disk(s))"
    assert modes(plan.entities) == {
        "vm:vm-1": "write",
        "disk:d-1": "write",
        "disk:d-2": "write",
        f"snapshot:{snap}": "write",
        "storage_domain:sd-1": "read",
        "storage_domain:sd-2": "read",
    }
    assert [c.command_type for c in plan.children] == ["CreateSnapshotForDisk", "CreateSnapshotForDisk"]
    first, second = tasks_of(plan)
    assert first.verb == second.verb == "create_volume"
    assert first.args == {
        "storage_domain_id": "sd-1",
        "image_id": "img-1",
        "volume_id": snapshot.volumes["d-1"],
        "parent_id": "vol-1",
    }
    assert second.args["parent_id"] == "vol-2b"  # the active volume is the last one
    assert second.args["volume_id"] == snapshot.volumes["d-2"]
    assert modes(second.entities) == {
        "vm:vm-1": "write",
        "disk:d-2": "write",
        "image:img-2": "write",
        "storage_domain:sd-2": "read",
        f"snapshot:{snap}": "write",
    }
    assert (snapshot.vm_id, snapshot.description, snapshot.status) == ("vm-1", "before upgrade", "locked")
    assert set(snapshot.volumes) == {"d-1", "d-2"}
    assert snapshot.volumes["d-1"] != snapshot.volumes["d-2"]


def test_create_snapshot_of_a_vm_that_is_down_is_fine(inventory: MemoryInventory) -> None:
    plan = plan_flow(CreateSnapshot(), {"vm_id": "vm-2"}, inventory)
    assert [t.args["parent_id"] for t in tasks_of(plan)] == ["vol-3"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vm_id": "vm-3"}, "vm vm-3 is hibernated"),
        ({"vm_id": "vm-4"}, "vm vm-4 has no disk to snapshot"),
        ({"vm_id": "vm-404"}, "vm vm-404 does not exist"),
    ],
    ids=["hibernated", "no disk", "no vm"],
)
def test_create_snapshot_refuses(inventory: MemoryInventory, params: dict[str, Any], message: str) -> None:
    assert refused(CreateSnapshot(), params, inventory) == message


@pytest.mark.parametrize(
    ("flow", "params"),
    [
        (CreateSnapshot(), {"vm_id": "vm-5"}),
        (CreateTemplate(), {"vm_id": "vm-5", "name": "t", "target_storage_domain_id": "sd-1"}),  # source inactive
    ],
    ids=["CreateSnapshot", "CreateTemplate source"],
)
def test_a_flow_refuses_to_work_on_an_inactive_storage_domain(
    inventory: MemoryInventory, flow: Flow, params: dict[str, Any]
) -> None:
    assert "sd-off is inactive" in refused(flow, params, inventory)


# ---- DeactivateStorageDomain: plan -----------------------------------------------------------------


def test_deactivate_storage_domain_plans_no_task_and_writes_the_domain(inventory: MemoryInventory) -> None:
    plan = plan_flow(DeactivateStorageDomain(), {"storage_domain_id": "sd-1"}, inventory)

    assert plan.summary == "deactivate storage domain sd-1"
    assert modes(plan.entities) == {"storage_domain:sd-1": "write"}
    assert plan.children == []
    assert plan.new_entities == []


def test_deactivate_storage_domain_is_refused_while_tasks_run_on_it(inventory: MemoryInventory) -> None:
    running = {SD1: ["task-a", "task-b"], EntityRef(EntityType.STORAGE_DOMAIN, "sd-2"): ["task-c"]}

    message = refused(DeactivateStorageDomain(), {"storage_domain_id": "sd-1"}, inventory, running=running)

    assert message == "cannot deactivate storage domain sd-1: 2 task(s) running on it (task-a, task-b)"
    plan_flow(DeactivateStorageDomain(), {"storage_domain_id": "sd-2"}, inventory, running={SD1: ["task-a"]})


def test_deactivate_storage_domain_names_five_running_tasks_and_counts_the_rest(inventory: MemoryInventory) -> None:
    running = {SD1: [f"task-{i}" for i in range(1, 8)]}

    message = refused(DeactivateStorageDomain(), {"storage_domain_id": "sd-1"}, inventory, running=running)

    assert message == (
        "cannot deactivate storage domain sd-1: 7 task(s) running on it "
        "(task-1, task-2, task-3, task-4, task-5 and 2 more)"
    )


def test_deactivate_storage_domain_refuses_an_inactive_or_unknown_domain(inventory: MemoryInventory) -> None:
    flow = DeactivateStorageDomain()
    assert refused(flow, {"storage_domain_id": "sd-off"}, inventory) == "storage domain sd-off is already inactive"
    assert refused(flow, {"storage_domain_id": "sd-9"}, inventory) == "storage domain sd-9 does not exist"


# ---- every flow ------------------------------------------------------------------------------------

WITH_TASKS: list[tuple[Flow, dict[str, Any]]] = [
    (RemoveVm(), {"vm_id": "vm-1"}),
    (HibernateVm(), {"vm_id": "vm-1"}),
    (CreateTemplate(), {"vm_id": "vm-1", "name": "golden", "target_storage_domain_id": "sd-2"}),
    (CreateSnapshot(), {"vm_id": "vm-1"}),
]
WITH_TASKS_IDS = [f.name for f, _ in WITH_TASKS]


@pytest.mark.parametrize(("flow", "params"), WITH_TASKS, ids=WITH_TASKS_IDS)
def test_a_plan_is_the_same_for_the_same_command_id_and_new_for_another(
    inventory: MemoryInventory, flow: Flow, params: dict[str, Any]
) -> None:
    """Ids derive from the command id: a retry of the same command plans the same children, tasks and entities."""

    def records(plan: Plan) -> list[Any]:
        return [c.to_record() for c in plan.children] + [e.entity_id for e in plan.new_entities]

    def planned_ids(plan: Plan) -> set[str]:
        return (
            {c.child_id for c in plan.children}
            | {t.task_id for t in tasks_of(plan)}
            | {e.entity_id for e in plan.new_entities}
        )

    once = plan_flow(flow, params, inventory)
    again = plan_flow(flow, params, inventory)
    other = plan_flow(flow, params, inventory, command_id=OTHER_ID)

    assert records(once) == records(again)
    assert planned_ids(once).isdisjoint(planned_ids(other))
    task_ids = [t.task_id for t in tasks_of(once)]
    assert len(task_ids) == len(set(task_ids)) > 0


@pytest.mark.parametrize(("flow", "params"), WITH_TASKS, ids=WITH_TASKS_IDS)
def test_the_command_declares_every_inventory_entity_its_tasks_touch_with_at_least_their_mode(
    inventory: MemoryInventory, flow: Flow, params: dict[str, Any]
) -> None:
    """The command's locks cover its tasks (images are not inventory entities and take no lock)."""
    plan = plan_flow(flow, params, inventory)
    declared = modes(plan.entities)

    for task in tasks_of(plan):
        for use in task.entities:
            if use.ref.type is EntityType.IMAGE:
                continue
            assert use.ref.key in declared, f"{task.verb} touches {use.ref.key}, not declared"
            if use.mode.value == "write":
                assert declared[use.ref.key] == "write", f"{task.verb} writes {use.ref.key}, declared read"


def test_the_flows_are_known_by_name_in_any_case() -> None:
    assert set(FLOWS) == {"RemoveVm", "HibernateVm", "CreateTemplate", "CreateSnapshot", "DeactivateStorageDomain"}
    assert get_flow("removevm") is FLOWS["RemoveVm"]
    with pytest.raises(
        UnknownFlowError,
        match="unknown flow 'Nope'; known flows: CreateSnapshot, CreateTemplate, DeactivateStorageDomain",
    ):
        get_flow("Nope")


# ---- parameters ------------------------------------------------------------------------------------


def invalid(flow: Flow, raw: str | dict[str, Any]) -> str:
    with pytest.raises(InvalidParametersError) as caught:
        flow.parse_params(raw)
    return str(caught.value)


def test_parameters_are_read_from_json_or_a_dict_with_whitespace_stripped() -> None:
    flow = CreateTemplate()
    from_json = flow.parse_params('{"vm_id": " vm-1 ", "name": " golden "}')
    from_dict = flow.parse_params({"vm_id": "vm-1", "name": "golden"})

    assert from_json == from_dict
    assert from_json.model_dump(mode="json") == {
        "vm_id": "vm-1",
        "name": "golden",
        "target_storage_domain_id": None,
        "template_id": None,
    }


def test_unknown_fields_are_refused_and_the_known_ones_listed() -> None:
    message = invalid(RemoveVm(), {"vm_id": "vm-1", "force": True})

    assert message == "invalid RemoveVm parameters: force: Extra inputs are not permitted (fields: vm_id)"


def test_a_missing_field_is_named() -> None:
    message = invalid(HibernateVm(), "")

    assert message == "invalid HibernateVm parameters: vm_id: Field required (fields: vm_id, storage_domain_id)"


def test_bad_json_is_refused_with_where_it_went_wrong() -> None:
    message = invalid(RemoveVm(), '{"vm_id": ')

    assert message.startswith("RemoveVm parameters are not valid JSON: Expecting value: line 1 column 11 (char 10)")


@pytest.mark.parametrize("raw", ['["vm-1"]', '"vm-1"', "42"])
def test_parameters_that_are_not_an_object_are_refused(raw: str) -> None:
    assert invalid(RemoveVm(), raw) == "RemoveVm parameters must be a JSON object"


def test_parameters_larger_than_the_limit_are_refused_before_they_are_parsed() -> None:
    raw = json.dumps({"vm_id": "vm-1", "description": "x" * MAX_PARAMS_BYTES})

    message = invalid(CreateSnapshot(), raw)

    assert message == f"CreateSnapshot parameters are {len(raw)} bytes; the limit is {MAX_PARAMS_BYTES}"


def test_parameters_at_the_limit_are_read() -> None:
    raw = '{"vm_id": "vm-1"}'
    raw = raw[:-1] + " " * (MAX_PARAMS_BYTES - len(raw)) + "}"
    assert len(raw.encode()) == MAX_PARAMS_BYTES

    assert CreateSnapshot().parse_params(raw).model_dump() == {"vm_id": "vm-1", "description": ""}


@pytest.mark.parametrize(
    ("flow", "raw", "problem"),
    [
        (RemoveVm(), {"vm_id": "../etc"}, "vm_id: String should match pattern"),
        (RemoveVm(), {"vm_id": "v" * 65}, "vm_id: String should match pattern"),
        (CreateTemplate(), {"vm_id": "vm-1", "name": ""}, "name: String should have at least 1 character"),
        (CreateTemplate(), {"vm_id": "vm-1", "name": "n" * 65}, "name: String should have at most 64 characters"),
        (CreateSnapshot(), {"vm_id": "vm-1", "description": "d" * 201}, "description: String should have at most 200"),
        (DeactivateStorageDomain(), {"storage_domain_id": 7}, "storage_domain_id: Input should be a valid string"),
    ],
    ids=["id pattern", "id length", "empty name", "long name", "long description", "not a string"],
)
def test_field_values_are_checked(flow: Flow, raw: dict[str, Any], problem: str) -> None:
    message = invalid(flow, raw)

    assert message.startswith(f"invalid {flow.name} parameters: {problem}")


# ---- end actions -----------------------------------------------------------------------------------


def end_command(flow: Flow, command: RootCommand, inventory: MemoryInventory) -> EndAction:
    """Run the end action that is due, as the engine does (orchestrator/engine/ending.py), minus the locks."""
    command.start_end_action()
    action = command.due_end_action
    inventory.settle()
    if action is EndAction.SUCCESS:
        flow.end_successfully(command, inventory)
    else:
        flow.end_with_failure(command, inventory)
    command.end()
    return action


def run_again_changes_nothing(flow: Flow, command: RootCommand, inventory: MemoryInventory) -> None:
    """The end action run a second time (recovery's "run end action again") records nothing, changes nothing."""
    inventory.settle()
    before = inventory.copy_state()
    if command.due_end_action is EndAction.SUCCESS:
        flow.end_successfully(command, inventory)
    else:
        flow.end_with_failure(command, inventory)
    assert inventory.pending() == {}
    assert inventory.entities == before


def all_succeed(command: RootCommand) -> None:
    ids = list(command.tasks)
    submit(command, *ids)
    command.record_ended([ended(t) for t in ids])


def test_remove_vm_success_removes_the_vm_and_its_disks(inventory: MemoryInventory) -> None:
    flow = RemoveVm()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    all_succeed(command)

    assert end_command(flow, command, inventory) is EndAction.SUCCESS

    assert inventory.pending() == {
        "vm:vm-1": ["Vm.Removed"],
        "disk:d-1": ["Disk.Removed"],
        "disk:d-2": ["Disk.Removed"],
    }
    assert inventory.vm("vm-1").removed
    assert inventory.disk("d-1").removed and inventory.disk("d-2").removed
    assert command.status is CommandStatus.SUCCEEDED
    run_again_changes_nothing(flow, command, inventory)


def test_remove_vm_failure_detaches_only_the_disks_whose_removal_was_done_and_sets_the_vm_down() -> None:
    """The seed's case: a 4-disk VM; one removal done, one failed, one a zombie that did its work, one never sent."""
    inventory = MemoryInventory(
        [
            Vm.register("vm-9", status="up", disk_ids=["d-91", "d-92", "d-93", "d-94"]),
            *[
                Disk.register(f"d-9{i}", vm_id="vm-9", storage_domain_id="sd-1", image_id=f"img-9{i}", volumes=["v"])
                for i in range(1, 5)
            ],
        ]
    )
    flow = RemoveVm()
    command = accept_flow(flow, {"vm_id": "vm-9"}, inventory)
    done, refused_by_agent, zombie, never_sent = (
        task_on(command, EntityType.DISK, f"d-9{i}").task_id for i in range(1, 5)
    )
    submit(command, done, refused_by_agent, zombie)
    command.decide_failure(
        "1 of 4 expected tasks have no agent task id", [never_sent], FailureCause.SUBMISSION_CUT_SHORT
    )
    command.decide_stops([(zombie, "zombie")])
    command.record_ended(
        [
            ended(done),
            failed(refused_by_agent, "image busy"),
            ended(zombie, TaskStatus.FAILED, EndKind.ZOMBIE, "ran long; stopped", agent_succeeded=True),
        ]
    )

    assert end_command(flow, command, inventory) is EndAction.FAILURE

    vm = inventory.vm("vm-9")
    assert not vm.removed
    assert vm.status == "down"
    assert vm.disk_ids == ["d-92", "d-94"]
    assert [d for d in ("d-91", "d-92", "d-93", "d-94") if inventory.disk(d).removed] == ["d-91", "d-93"]
    assert command.status is CommandStatus.FAILED
    assert command.child_outcomes() == {
        task.child_id: ("succeeded" if task.task_id == done else "failed") for task in command.tasks.values()
    }
    run_again_changes_nothing(flow, command, inventory)


def test_remove_vm_failure_with_nothing_removed_keeps_every_disk(inventory: MemoryInventory) -> None:
    flow = RemoveVm()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    submit(command, *command.tasks)
    command.record_ended([failed(t) for t in command.tasks])

    end_command(flow, command, inventory)

    assert inventory.pending() == {"vm:vm-1": ["Vm.StatusChanged"]}
    assert inventory.vm("vm-1").disk_ids == ["d-1", "d-2"]
    assert inventory.vm("vm-1").status == "down"


def test_hibernate_vm_success_records_its_memory_volumes(inventory: MemoryInventory) -> None:
    flow = HibernateVm()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    all_succeed(command)

    assert end_command(flow, command, inventory) is EndAction.SUCCESS

    vm = inventory.vm("vm-1")
    assert vm.status == "hibernated"
    assert vm.memory_volumes == [
        ["sd-1", str(t.args["image_id"]), str(t.args["volume_id"])] for t in command.tasks.values()
    ]
    assert len(vm.memory_volumes) == 2
    assert inventory.pending() == {"vm:vm-1": ["Vm.Hibernated"]}
    run_again_changes_nothing(flow, command, inventory)


def test_hibernate_vm_failure_leaves_the_vm_up_without_memory_volumes(inventory: MemoryInventory) -> None:
    flow = HibernateVm()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    memory, metadata = command.tasks
    submit(command, memory, metadata)
    command.record_ended([ended(memory), failed(metadata, "no space")])

    assert end_command(flow, command, inventory) is EndAction.FAILURE

    vm = inventory.vm("vm-1")
    assert (vm.status, vm.memory_volumes) == ("up", [])
    run_again_changes_nothing(flow, command, inventory)


def test_create_template_success_marks_the_template_ok_and_leaves_the_vm_alone(inventory: MemoryInventory) -> None:
    flow = CreateTemplate()
    command = accept_flow(flow, {"vm_id": "vm-1", "name": "golden", "template_id": "tmpl-g"}, inventory)
    all_succeed(command)

    assert end_command(flow, command, inventory) is EndAction.SUCCESS

    template = inventory.get(EntityRef(EntityType.TEMPLATE, "tmpl-g"))
    assert isinstance(template, Template)
    assert (template.status, template.removed) == ("ok", False)
    assert inventory.pending() == {"template:tmpl-g": ["Template.Ready"]}
    run_again_changes_nothing(flow, command, inventory)


def test_create_template_failure_removes_the_template(inventory: MemoryInventory) -> None:
    flow = CreateTemplate()
    command = accept_flow(flow, {"vm_id": "vm-1", "name": "golden", "template_id": "tmpl-g"}, inventory)
    first, second = command.tasks
    submit(command, first)
    command.record_refused([(second, "no space on sd-2")])
    command.record_ended([ended(first)])

    assert end_command(flow, command, inventory) is EndAction.FAILURE

    template = inventory.get(EntityRef(EntityType.TEMPLATE, "tmpl-g"))
    assert template is not None and template.removed
    assert inventory.pending() == {"template:tmpl-g": ["Template.Removed"]}
    run_again_changes_nothing(flow, command, inventory)


def test_create_snapshot_success_appends_the_new_volumes_and_marks_the_snapshot_ok(inventory: MemoryInventory) -> None:
    flow = CreateSnapshot()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    new = {d: str(task_on(command, EntityType.DISK, d).args["volume_id"]) for d in ("d-1", "d-2")}
    all_succeed(command)

    assert end_command(flow, command, inventory) is EndAction.SUCCESS

    assert inventory.disk("d-1").volumes == ["vol-1", new["d-1"]]
    assert inventory.disk("d-2").volumes == ["vol-2a", "vol-2b", new["d-2"]]
    assert inventory.disk("d-2").active_volume == new["d-2"]
    (snapshot,) = [e for e in inventory.entities.values() if isinstance(e, Snapshot)]
    assert snapshot.status == "ok"
    assert inventory.vm("vm-1").snapshot_ids == [snapshot.entity_id]
    run_again_changes_nothing(flow, command, inventory)


def test_create_snapshot_failure_removes_the_snapshot_and_keeps_the_volumes(inventory: MemoryInventory) -> None:
    flow = CreateSnapshot()
    command = accept_flow(flow, {"vm_id": "vm-1"}, inventory)
    submit(command, *command.tasks)
    assert command.request_cancel("asked by alice")
    command.record_ended([ended(t, TaskStatus.FAILED, EndKind.STOPPED, "stopped") for t in command.tasks])

    assert end_command(flow, command, inventory) is EndAction.FAILURE

    (snapshot,) = [e for e in inventory.entities.values() if isinstance(e, Snapshot)]
    assert snapshot.removed
    assert inventory.disk("d-1").volumes == ["vol-1"]
    assert inventory.disk("d-2").volumes == ["vol-2a", "vol-2b"]
    assert inventory.vm("vm-1").snapshot_ids == []
    assert inventory.pending() == {f"snapshot:{snapshot.entity_id}": ["Snapshot.Removed"]}
    run_again_changes_nothing(flow, command, inventory)


def test_deactivate_storage_domain_success_makes_it_inactive(inventory: MemoryInventory) -> None:
    flow = DeactivateStorageDomain()
    command = accept_flow(flow, {"storage_domain_id": "sd-1"}, inventory)
    assert command.all_tasks_ended  # it has none

    assert end_command(flow, command, inventory) is EndAction.SUCCESS

    assert inventory.domain("sd-1").status == "inactive"
    run_again_changes_nothing(flow, command, inventory)


def test_deactivate_storage_domain_cancelled_changes_nothing(inventory: MemoryInventory) -> None:
    flow = DeactivateStorageDomain()
    command = accept_flow(flow, {"storage_domain_id": "sd-1"}, inventory)
    command.request_cancel("asked by alice")

    assert end_command(flow, command, inventory) is EndAction.FAILURE

    assert inventory.domain("sd-1").status == "active"
    assert inventory.pending() == {}


END_CASES: list[tuple[Flow, dict[str, Any]]] = [
    (RemoveVm(), {"vm_id": "vm-1"}),
    (HibernateVm(), {"vm_id": "vm-1"}),
    (CreateTemplate(), {"vm_id": "vm-1", "name": "golden"}),
    (CreateSnapshot(), {"vm_id": "vm-1"}),
    (DeactivateStorageDomain(), {"storage_domain_id": "sd-1"}),
]


@pytest.mark.parametrize("outcome", [EndAction.SUCCESS, EndAction.FAILURE])
@pytest.mark.parametrize(("flow", "params"), END_CASES, ids=[f.name for f, _ in END_CASES])
def test_an_end_action_run_twice_changes_nothing_the_second_time(
    inventory: MemoryInventory, flow: Flow, params: dict[str, Any], outcome: EndAction
) -> None:
    command = accept_flow(flow, params, inventory)
    finish: Callable[[str], TaskEndRecord] = ended if outcome is EndAction.SUCCESS else failed
    submit(command, *command.tasks)
    command.record_ended([finish(t) for t in command.tasks])
    if outcome is EndAction.FAILURE:
        command.request_cancel("so that a command without tasks fails too")

    assert end_command(flow, command, inventory) is outcome
    run_again_changes_nothing(flow, command, inventory)
