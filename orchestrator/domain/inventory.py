"""The engine-side inventory: storage domains, VMs, disks, templates, snapshots.

Each entity is an aggregate. Its entity locks are part of its own event
stream, so a lock is taken in the same transaction that accepts the command,
and two engine processes can never both take conflicting locks: the second
write of the same aggregate version fails on the store's optimistic
concurrency check. Locks survive restarts because they are events.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar, overload

from eventsourcing.domain import Aggregate

from orchestrator.domain.model import (
    DEFAULT_POOL,
    EntityRef,
    EntityType,
    ImageSetStatus,
    LockMode,
    StorageDomainStatus,
    VmStatus,
    entity_aggregate_id,
)

S = TypeVar("S", bound=StrEnum)


class StatusField(Generic[S]):
    """A status kept in the aggregate's own attributes and always given back as its enum.

    A snapshot restores an aggregate's attributes from JSON, where an enum is a plain
    string; reading the status through this field makes it the enum again, whatever
    restored it (and `is` comparisons keep working)."""

    def __init__(self, enum: type[S]) -> None:
        self.enum = enum
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, entity: None, owner: type) -> StatusField[S]: ...

    @overload
    def __get__(self, entity: object, owner: type) -> S: ...

    def __get__(self, entity: object | None, owner: type) -> S | StatusField[S]:
        if entity is None:
            return self
        return self.enum(entity.__dict__[self.name])

    def __set__(self, entity: object, value: str) -> None:
        entity.__dict__[self.name] = self.enum(value)


class InventoryEntity(Aggregate):
    """Base of all inventory entities: identity, locks and removal."""

    entity_type: ClassVar[EntityType]

    class Registered(Aggregate.Created):
        entity_id: str
        attrs: dict[str, Any]

    class LockTaken(Aggregate.Event):
        command_id: str
        command_type: str
        mode: str

        def apply(self, aggregate: InventoryEntity) -> None:
            aggregate.locks[self.command_id] = {"mode": self.mode, "command_type": self.command_type}
            if self.mode == LockMode.WRITE:
                aggregate.writers[self.command_id] = self.command_type

    class LockReleased(Aggregate.Event):
        command_id: str

        def apply(self, aggregate: InventoryEntity) -> None:
            aggregate.locks.pop(self.command_id, None)
            aggregate.writers.pop(self.command_id, None)

    class Removed(Aggregate.Event):
        """The entity is gone, and the lock its remover held goes with it: one event, not a
        `LockReleased` after it (before, one always followed in the same transaction, so
        histories recorded either way replay to the same state)."""

        command_id: str

        def apply(self, aggregate: InventoryEntity) -> None:
            aggregate.removed = True
            aggregate.locks.pop(self.command_id, None)
            aggregate.writers.pop(self.command_id, None)

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:
        self.entity_id = entity_id
        self.locks: dict[str, dict[str, str]] = {}
        self.writers: dict[str, str] = {}  # holders of write locks (at most one), for quick checks
        self.removed = False
        self._init_attrs(attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        raise NotImplementedError

    @classmethod
    def register(cls, entity_id: str, **attrs: Any) -> InventoryEntity:
        ref = EntityRef(cls.entity_type, entity_id)
        return cls._create(cls.Registered, id=entity_aggregate_id(ref), entity_id=entity_id, attrs=attrs)

    @property
    def ref(self) -> EntityRef:
        return EntityRef(self.entity_type, self.entity_id)

    # ---- locks -------------------------------------------------------------------------

    def lock_conflict(self, command_id: str, mode: LockMode) -> tuple[str, dict[str, str]] | None:
        """The lock that stops `command_id` from taking `mode`, if any (checked in O(1))."""
        holders = self.locks if mode is LockMode.WRITE else self.writers
        for holder in holders:
            if holder != command_id:
                return holder, self.locks[holder]
        return None

    def take_lock(self, command_id: str, command_type: str, mode: LockMode) -> None:
        conflict = self.lock_conflict(command_id, mode)
        if conflict is not None:
            raise ValueError(f"{self.ref} is locked by {conflict[0]}")
        if command_id not in self.locks:
            self.trigger_event(self.LockTaken, command_id=command_id, command_type=command_type, mode=mode.value)

    def release_lock(self, command_id: str) -> None:
        if command_id in self.locks:
            self.trigger_event(self.LockReleased, command_id=command_id)

    def remove(self, command_id: str) -> None:
        if not self.removed:
            self.trigger_event(self.Removed, command_id=command_id)


class StorageDomain(InventoryEntity):
    entity_type = EntityType.STORAGE_DOMAIN
    status = StatusField(StorageDomainStatus)

    class StatusChanged(Aggregate.Event):
        status: str

        def apply(self, aggregate: StorageDomain) -> None:
            aggregate.status = StorageDomainStatus(self.status)

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.name: str = attrs.get("name", self.entity_id)
        self.status = attrs.get("status", StorageDomainStatus.ACTIVE)
        self.pool_id: str = attrs.get("pool_id", DEFAULT_POOL)  # its pool's agent runs its tasks

    def set_status(self, status: StorageDomainStatus) -> None:
        if status != self.status:
            self.trigger_event(self.StatusChanged, status=status.value)


class StoragePool(InventoryEntity):
    """A storage pool: its storage domains' tasks run on the pool's agent (its SPM host's, in the reference)."""

    entity_type = EntityType.STORAGE_POOL

    class AgentChanged(Aggregate.Event):
        agent_url: str | None

        def apply(self, aggregate: StoragePool) -> None:
            aggregate.agent_url = self.agent_url

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.name: str = attrs.get("name", self.entity_id)
        self.agent_url: str | None = attrs.get("agent_url")

    def set_agent(self, url: str | None) -> None:
        if url != self.agent_url:
            self.trigger_event(self.AgentChanged, agent_url=url)


class Vm(InventoryEntity):
    entity_type = EntityType.VM
    status = StatusField(VmStatus)

    class StatusChanged(Aggregate.Event):
        status: str

        def apply(self, aggregate: Vm) -> None:
            aggregate.status = VmStatus(self.status)

    class DisksDetached(Aggregate.Event):
        disk_ids: list[str]

        def apply(self, aggregate: Vm) -> None:
            aggregate.disk_ids = [d for d in aggregate.disk_ids if d not in self.disk_ids]

    class Hibernated(Aggregate.Event):
        memory_volumes: list[list[str]]  # [storage_domain, image, volume]

        def apply(self, aggregate: Vm) -> None:
            aggregate.status = VmStatus.HIBERNATED
            aggregate.memory_volumes = [list(v) for v in self.memory_volumes]

    class SnapshotAdded(Aggregate.Event):
        snapshot_id: str

        def apply(self, aggregate: Vm) -> None:
            aggregate.snapshot_ids.append(self.snapshot_id)

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.name: str = attrs.get("name", self.entity_id)
        self.status = attrs.get("status", VmStatus.DOWN)
        self.disk_ids: list[str] = list(attrs.get("disk_ids", []))
        self.memory_volumes: list[list[str]] = []
        self.snapshot_ids: list[str] = []

    def set_status(self, status: VmStatus) -> None:
        if status != self.status:
            self.trigger_event(self.StatusChanged, status=status.value)

    def detach_disks(self, disk_ids: list[str]) -> None:
        present = [d for d in disk_ids if d in self.disk_ids]
        if present:
            self.trigger_event(self.DisksDetached, disk_ids=present)

    def hibernate(self, memory_volumes: list[list[str]]) -> None:
        if self.status is not VmStatus.HIBERNATED:
            self.trigger_event(self.Hibernated, memory_volumes=memory_volumes)

    def add_snapshot(self, snapshot_id: str) -> None:
        if snapshot_id not in self.snapshot_ids:
            self.trigger_event(self.SnapshotAdded, snapshot_id=snapshot_id)


class Disk(InventoryEntity):
    entity_type = EntityType.DISK

    class VolumeAppended(Aggregate.Event):
        volume_id: str

        def apply(self, aggregate: Disk) -> None:
            aggregate.volumes.append(self.volume_id)

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.vm_id: str = attrs["vm_id"]
        self.storage_domain_id: str = attrs["storage_domain_id"]
        self.image_id: str = attrs["image_id"]
        self.volumes: list[str] = list(attrs["volumes"])

    @property
    def active_volume(self) -> str:
        return self.volumes[-1]

    def append_volume(self, volume_id: str) -> None:
        if volume_id not in self.volumes:
            self.trigger_event(self.VolumeAppended, volume_id=volume_id)


class Template(InventoryEntity):
    entity_type = EntityType.TEMPLATE
    status = StatusField(ImageSetStatus)

    class Ready(Aggregate.Event):
        def apply(self, aggregate: Template) -> None:
            aggregate.status = ImageSetStatus.OK

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.name: str = attrs["name"]
        self.source_vm_id: str = attrs["source_vm_id"]
        self.images: list[list[str]] = [list(i) for i in attrs["images"]]  # [sd, image, volume]
        self.status = attrs.get("status", ImageSetStatus.LOCKED)

    def mark_ready(self) -> None:
        if self.status is not ImageSetStatus.OK:
            self.trigger_event(self.Ready)


class Snapshot(InventoryEntity):
    entity_type = EntityType.SNAPSHOT
    status = StatusField(ImageSetStatus)

    class Ready(Aggregate.Event):
        def apply(self, aggregate: Snapshot) -> None:
            aggregate.status = ImageSetStatus.OK

    def __init__(self, entity_id: str, attrs: dict[str, Any]) -> None:  # eventsourcing needs it declared
        super().__init__(entity_id, attrs)

    def _init_attrs(self, attrs: dict[str, Any]) -> None:
        self.vm_id: str = attrs["vm_id"]
        self.description: str = attrs.get("description", "")
        self.volumes: dict[str, str] = dict(attrs["volumes"])  # disk id -> new volume
        self.status = attrs.get("status", ImageSetStatus.LOCKED)

    def mark_ready(self) -> None:
        if self.status is not ImageSetStatus.OK:
            self.trigger_event(self.Ready)


ENTITY_CLASSES: dict[EntityType, type[InventoryEntity]] = {
    cls.entity_type: cls for cls in (StoragePool, StorageDomain, Vm, Disk, Template, Snapshot)
}
