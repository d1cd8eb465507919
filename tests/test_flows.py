"""Seed test case 1, and each flow's failure path, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.inventory import Disk, Snapshot, Template, Vm
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import invariants_hold, run_until_idle

FLOW_CASES: list[tuple[str, dict[str, Any]]] = [
    ("RemoveVm", {"vm_id": "vm-0001"}),
    ("HibernateVm", {"vm_id": "vm-0001"}),
    ("CreateTemplate", {"vm_id": "vm-0001", "name": "golden", "target_storage_domain_id": "sd-2"}),
    ("CreateSnapshot", {"vm_id": "vm-0001", "description": "before"}),
]


def _vm(orch: Orchestrator, vm_id: str = "vm-0001") -> Vm:
    vm = orch.entity(EntityRef(EntityType.VM, vm_id))
    assert isinstance(vm, Vm)
    return vm


def _held_on_agent(agent: SimulatedAgent) -> list[dict[str, Any]]:
    return [r for r in agent.backend.journal() if r["cleared_at"] is None and not r["vanished"]]


@pytest.mark.parametrize(("flow", "params"), FLOW_CASES, ids=[f for f, _ in FLOW_CASES])
def test_flow_runs_normally_and_leaves_nothing_active(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, flow: str, params: dict[str, Any]
) -> None:
    orch.seed(1, 3)
    result = orch.submit(flow, params)
    run_until_idle(orch, agent)

    command = orch.command(result.command_id)
    assert command.status.value == "succeeded", command.outcome_reason
    assert all(t.agent_task_id for t in command.tasks.values())
    orch.read_models.runner.catch_up()
    assert orch.read_models.queries.active_tasks() == []  # the seed's async_tasks table is empty
    assert _held_on_agent(agent) == []
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])


def test_each_flow_changes_the_inventory_as_it_says(orch: Orchestrator, agent: SimulatedAgent) -> None:
    orch.seed(4, 2)
    removed = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    hibernated = orch.submit("HibernateVm", {"vm_id": "vm-0002"})
    template = orch.submit("CreateTemplate", {"vm_id": "vm-0003", "name": "t", "target_storage_domain_id": "sd-2"})
    snapshot = orch.submit("CreateSnapshot", {"vm_id": "vm-0004"})
    run_until_idle(orch, agent)

    assert _vm(orch, "vm-0001").removed
    assert orch.entity(EntityRef(EntityType.DISK, "disk-0001-1")).removed  # type: ignore[union-attr]
    vm2 = _vm(orch, "vm-0002")
    assert vm2.status == "hibernated" and len(vm2.memory_volumes) == 2
    tmpl = orch.entity(
        next(e.ref for e in orch.command(template.command_id).entities if e.ref.type is EntityType.TEMPLATE)
    )
    assert isinstance(tmpl, Template) and tmpl.status == "ok" and len(tmpl.images) == 2
    assert all(image[0] == "sd-2" for image in tmpl.images)
    snap_ref = next(e.ref for e in orch.command(snapshot.command_id).entities if e.ref.type is EntityType.SNAPSHOT)
    snap = orch.entity(snap_ref)
    assert isinstance(snap, Snapshot) and snap.status == "ok"
    disk = orch.entity(EntityRef(EntityType.DISK, "disk-0004-1"))
    assert isinstance(disk, Disk) and len(disk.volumes) == 2 and disk.active_volume == snap.volumes["disk-0004-1"]
    assert snap_ref.id in _vm(orch, "vm-0004").snapshot_ids
    for r in (removed, hibernated, template, snapshot):
        assert orch.command(r.command_id).status.value == "succeeded"


@pytest.mark.parametrize(("flow", "params"), FLOW_CASES, ids=[f for f, _ in FLOW_CASES])
def test_flow_that_fails_on_the_agent_runs_end_with_failure(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, flow: str, params: dict[str, Any]
) -> None:
    """One task of the command fails on the agent: the command fails and the inventory still matches."""
    orch.seed(1, 3)
    before = _vm(orch)
    agent.backend.set_faults(FaultConfig(fail_ordinals=[2]))  # the second task fails, the others succeed
    result = orch.submit(flow, params)
    run_until_idle(orch, agent)

    command = orch.command(result.command_id)
    assert command.status.value == "failed"
    assert command.outcome_reason
    vm = _vm(orch)
    if flow == "RemoveVm":
        assert not vm.removed and vm.status == "down"
        images = {v.image_id for v in agent.storage().volumes}
        assert all(orch.entity(EntityRef(EntityType.DISK, d)).image_id in images for d in vm.disk_ids)  # type: ignore[union-attr]
    elif flow == "HibernateVm":
        assert vm.status == "up" and vm.memory_volumes == []
    elif flow == "CreateTemplate":
        template = orch.entity(next(e.ref for e in command.entities if e.ref.type is EntityType.TEMPLATE))
        assert template is not None and template.removed
    else:
        snapshot = orch.entity(next(e.ref for e in command.entities if e.ref.type is EntityType.SNAPSHOT))
        assert snapshot is not None and snapshot.removed
        for disk_id in before.disk_ids:
            disk = orch.entity(EntityRef(EntityType.DISK, disk_id))
            assert isinstance(disk, Disk) and len(disk.volumes) == 1
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])
