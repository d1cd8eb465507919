"""Accepts decide on the inventory a process has cached, and the store verifies it when it records.

Two `Orchestrator`s on one store stand for two processes (each has its own cache). One
of them changes an entity the other has cached; the other's next accept must still be
right: refused when the entity is locked now, accepted when the lock it cached is gone.
The store's own check (`reads`) is tested directly, on both stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import EntityRef, EntityType, LockMode, VmStatus, entity_aggregate_id
from orchestrator.errors import EntityLockedError
from orchestrator.store.door import META_TABLE
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
