"""Accepts decide on the inventory a process has cached, and the store verifies it when it records.

Two `Orchestrator`s on one store stand for two processes (each has its own cache). One
of them changes an entity the other has cached; the other's next accept must still be
right: refused when the entity is locked now, accepted when the lock it cached is gone.
The store's own check (`reads`) is tested directly, on both stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import EntityRef, EntityType, LockMode, VmStatus, entity_aggregate_id
from orchestrator.errors import EntityLockedError
from orchestrator.flows import FLOWS
from orchestrator.store.door import META_TABLE
from orchestrator.testing import SimulatedAgent
from tests.conftest import PG_DSN, invariants_hold, run_until_idle

VM = EntityRef(EntityType.VM, "vm-0001")


@pytest.fixture
def other(store_url: str, agent_state: Path, orch: Orchestrator) -> Iterator[Orchestrator]:
    """A second process on the same store: a cache of its own."""
    o = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    yield o
    o.close()


def test_an_accept_on_a_stale_copy_is_refused_when_another_process_locked_the_entity(
    orch: Orchestrator, other: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    assert orch.store.cached([entity_aggregate_id(VM)]), "the seeding process holds the VM it wrote"
    taken = other.submit("RemoveVm", {"vm_id": "vm-0001"})  # locks the VM where `orch` cannot see it
    with pytest.raises(EntityLockedError, match=str(taken.command_id)):
        orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    ids = {str(i) for i in orch.store.in_flight_ids()}
    assert ids == {str(taken.command_id)}, "the refused command recorded nothing"


def test_an_accept_is_not_refused_for_a_lock_another_process_released(
    orch: Orchestrator, other: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    first = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    vm = orch.store.cached([entity_aggregate_id(VM)])[entity_aggregate_id(VM)]
    assert isinstance(vm, Vm) and str(first.command_id) in vm.locks, "the cached copy holds the lock"
    other.terminate(first.command_id, "agent gone")  # another process releases it
    second = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    assert not second.duplicate
    fresh = orch.entity(VM)
    assert fresh is not None and list(fresh.locks) == [str(second.command_id)]


def test_a_stale_copy_never_lets_two_writers_hold_one_entity(
    orch: Orchestrator, other: Orchestrator, agent_state: Path
) -> None:
    """Both processes cached the VM unlocked; the second writer's record conflicts and it reads again."""
    orch.seed(2, 1)
    other.entity(VM)  # cached there, unlocked
    first = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    with pytest.raises(EntityLockedError):
        other.submit("RemoveVm", {"vm_id": "vm-0001"})
    assert other.submit("RemoveVm", {"vm_id": "vm-0002"}).tasks == 1
    agent = orch.open_agent()
    try:
        run_until_idle(orch, agent)
    finally:
        agent.close()
    assert orch.command(first.command_id).status.value == "succeeded"
    invariants_hold(orch, agent_state)


def test_the_store_refuses_a_write_whose_read_entity_moved_on(orch: Orchestrator, other: Orchestrator) -> None:
    """`reads`: an entity decided on but not written must still be at the version read, or nothing is recorded."""
    orch.seed(2, 1)
    vm_id = entity_aggregate_id(VM)
    read_version = orch.store.cached([vm_id])[vm_id].version
    other.submit("HibernateVm", {"vm_id": "vm-0001"})  # moves the VM on, elsewhere
    vm2 = orch.entity(EntityRef(EntityType.VM, "vm-0002"))
    assert isinstance(vm2, Vm)
    before = len(orch.store.events_of(vm2.id))
    vm2.set_status(VmStatus.DOWN)
    with pytest.raises(IntegrityError):
        orch.store.save(vm2, reads={vm_id: read_version})
    orch.store.forget([vm2.id])
    assert len(orch.store.events_of(vm2.id)) == before, "nothing recorded"
    vm2 = orch.entity(EntityRef(EntityType.VM, "vm-0002"))
    assert isinstance(vm2, Vm)
    vm2.set_status(VmStatus.DOWN)
    current = orch.store.get(vm_id)
    assert current is not None
    orch.store.save(vm2, reads={vm_id: current.version})
    assert len(orch.store.events_of(vm2.id)) == before + 1


def test_a_postgresql_store_of_an_older_layout_gets_the_record_function(
    pg_schema: str, agent_state: Path, tmp_path: Path
) -> None:
    """A store set up before events were recorded by a function of ours is given it when next opened."""
    url = f"{PG_DSN}?schema={pg_schema}"
    with Orchestrator.open(url, agent_state=agent_state) as o:
        o.seed(1, 1)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP FUNCTION "{pg_schema}".orchestrator_record_events')
        conn.execute(f"UPDATE \"{pg_schema}\".{META_TABLE} SET value = '5' WHERE key = 'layout'")
    with Orchestrator.open(url, agent_state=agent_state) as o:
        accepted = o.submit("RemoveVm", {"vm_id": "vm-0001"})
        assert o.command(accepted.command_id).tasks
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        layout = conn.execute(f"SELECT value FROM \"{pg_schema}\".{META_TABLE} WHERE key = 'layout'").fetchone()
    assert layout is not None and layout[0] != "5"


def test_a_duplicate_version_is_a_conflict_not_a_store_error(orch: Orchestrator, other: Orchestrator) -> None:
    """Two processes write the same version of an entity: the second is refused as a conflict."""
    orch.seed(1, 1)
    mine, theirs = orch.entity(VM), other.entity(VM)
    assert isinstance(mine, Vm) and isinstance(theirs, Vm)
    mine.take_lock(str(uuid4()), "Test", LockMode.READ)
    theirs.take_lock(str(uuid4()), "Test", LockMode.READ)
    orch.store.save(mine)
    with pytest.raises(IntegrityError):
        other.store.save(theirs)


def test_an_end_action_that_failed_on_a_stale_copy_runs_again_on_a_fresh_one(
    orch: Orchestrator, other: Orchestrator, agent: SimulatedAgent, agent_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's end actions take the cached inventory too; one that raises is run again at once
    only when a copy it was given had moved on (an end action that raises on current copies is not)."""
    orch.seed(1, 1)
    accepted = orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
    vm = other.entity(VM)
    assert isinstance(vm, Vm)
    vm.set_status(VmStatus.DOWN)  # another process moves the VM on; the engine's cached copy is Up
    other.save(vm)
    seen: list[VmStatus] = []
    original = FLOWS["CreateSnapshot"].end_successfully

    def picky(command: RootCommand, inventory: Any) -> None:
        found = inventory.get(VM)
        seen.append(found.status)
        if found.status is not VmStatus.DOWN:
            raise RuntimeError("the VM is not down")
        original(command, inventory)

    monkeypatch.setattr(FLOWS["CreateSnapshot"], "end_successfully", picky)
    run_until_idle(orch, agent)
    command = orch.command(accepted.command_id)
    assert seen == [VmStatus.UP, VmStatus.DOWN], "once on the stale copy, once on the fresh one"
    assert command.status.value == "succeeded" and not command.flagged
    assert not any(type(e).__name__ == "EndActionFailed" for e in orch.store.events_of(command.id))
    invariants_hold(orch, agent_state, expected_commands=[command.id])
