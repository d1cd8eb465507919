"""Inventory aggregates replayed from their events: histories recorded before and after a change of
which events an action records give the same state."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.inventory import Disk
from orchestrator.domain.model import LockMode


def replayed(entity: Disk) -> Any:
    """The entity rebuilt from its own pending events alone, as a load from the store does."""
    rebuilt: Any = None
    for event in entity.collect_events():
        rebuilt = event.mutate(rebuilt)
    return rebuilt


def a_disk() -> Disk:
    disk = Disk.register("d-1", vm_id="vm-1", storage_domain_id="sd-1", image_id="img-1", volumes=["vol-1"])
    assert isinstance(disk, Disk)
    return disk


def test_removal_gives_up_the_removers_lock_and_records_no_release_after_it() -> None:
    disk = a_disk()
    disk.take_lock("cmd-1", "RemoveVm", LockMode.WRITE)
    disk.remove("cmd-1")
    disk.release_lock("cmd-1")  # the end action releases every lock of the command: nothing left to release
    kinds = [type(e).__name__ for e in disk.pending_events]
    assert kinds == ["Registered", "LockTaken", "Removed"]
    again = replayed(disk)
    assert again.removed and again.locks == {} and again.writers == {}


def test_an_older_history_with_a_release_after_the_removal_replays_to_the_same_state() -> None:
    disk = a_disk()
    disk.take_lock("cmd-1", "RemoveVm", LockMode.WRITE)
    disk.trigger_event(Disk.Removed, command_id="cmd-1")
    disk.trigger_event(Disk.LockReleased, command_id="cmd-1")  # as recorded before Removed gave the lock up
    again = replayed(disk)
    assert again.removed and again.locks == {} and again.writers == {}
    assert again.version == disk.version


def test_a_removal_keeps_the_locks_of_other_holders() -> None:
    disk = a_disk()
    disk.take_lock("reader", "CreateSnapshot", LockMode.READ)
    disk.trigger_event(Disk.Removed, command_id="remover")
    again = replayed(disk)
    assert again.removed and set(again.locks) == {"reader"}
