"""Inventory entities read back from a snapshot (one every 100 events) are the same entities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator import Orchestrator
from orchestrator.domain.inventory import StorageDomain, Vm
from orchestrator.domain.model import EntityRef, EntityType, LockMode, StorageDomainStatus, VmStatus
from tests.conftest import events_table, store_sql

SD = EntityRef(EntityType.STORAGE_DOMAIN, "sd-1")
VM = EntityRef(EntityType.VM, "vm-0001")


def churn(orch: Orchestrator, ref: EntityRef, times: int) -> None:
    """Take and release a read lock `times` times (two events each), as commands do."""
    for n in range(times):
        entity = orch.entity(ref)
        assert entity is not None
        entity.take_lock(f"c{n}", "CreateSnapshot", LockMode.READ)
        entity.release_lock(f"c{n}")
        orch.save(entity)


def test_an_entity_read_from_its_snapshot_keeps_its_status_and_takes_commands(
    store_url: str, agent_state: Path
) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 1)
        churn(orch, SD, 60)
        churn(orch, VM, 60)
    snapshots = "stored_snapshots" if "sqlite" in store_url else "orchestrator_snapshots"
    assert store_sql(store_url, f"SELECT COUNT(*) FROM {snapshots}")[0][0] >= 2, "both were snapshotted"
    assert store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}")[0][0] > 240
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:  # nothing cached
        domain, vm = orch.entity(SD), orch.entity(VM)
        assert isinstance(domain, StorageDomain) and domain.status is StorageDomainStatus.ACTIVE
        assert isinstance(vm, Vm) and vm.status is VmStatus.UP
        accepted = orch.submit("CreateSnapshot", {"vm_id": "vm-0001", "description": "after a snapshot"})
        assert accepted.command_id


def test_a_snapshot_taken_at_a_save_is_the_state_its_events_replay_to(store_url: str, agent_state: Path) -> None:
    """Snapshots are taken of the aggregate in hand when a save passes a multiple of 100 events, at the
    version the save leaves: the same state as its history replayed to that version."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 1)
        churn(orch, SD, 110)
        domain = orch.entity(SD)
        assert domain is not None
        snapshots: list[Any] = list(orch.store.app.snapshots.get(domain.id)) if orch.store.app.snapshots else []
        versions = [s.originator_version for s in snapshots]
        assert len(versions) == 2 and versions[0] in (100, 101) and versions[1] in (200, 201), versions
        for snapshot in snapshots:
            replayed = None
            for event in orch.store.events_of(domain.id)[: snapshot.originator_version]:
                replayed = event.mutate(replayed)
            expected = type(snapshot).take(replayed)
            assert snapshot.state == expected.state, f"snapshot at {snapshot.originator_version}"
