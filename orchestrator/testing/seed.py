"""Seeding a demo inventory: storage domains, VMs and their disks, in the store and on the simulated agent.

The agent's storage is written first (it is the truth), all or nothing and tagged
with a token, so that a seed that loses the race for the store (another seed
wrote the same entities at the same moment) takes back exactly what it added and
says so; nothing is left behind anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import uuid4

from eventsourcing.persistence import IntegrityError
from pydantic import BaseModel

from orchestrator.domain.inventory import Disk, InventoryEntity, StorageDomain, Vm
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType, StorageDomainStatus
from orchestrator.errors import SeedConflictError
from orchestrator.service import CommandService

SEED_BATCH = 2_000  # aggregates per transaction (one huge insert can hang the PostgreSQL driver)
SEED_DOMAINS = ("sd-1", "sd-2")  # the default pool's


def seed_domains(pool: str) -> tuple[str, str]:
    """A pool's two storage domains: sd-1 and sd-2 in the default pool, sd-POOL-1 and sd-POOL-2 elsewhere."""
    return SEED_DOMAINS if pool == DEFAULT_POOL else (f"sd-{pool}-1", f"sd-{pool}-2")


class SeededVm(BaseModel):
    vm_id: str
    disk_ids: list[str]


class SeedResult(BaseModel):
    """`seed --json`: the storage domains and the VMs created, with their disks."""

    storage_domains: list[str]
    vms: list[SeededVm]


class AgentStorage(Protocol):
    """What seeding needs of an agent: storage added all or nothing under a token, and taken back."""

    def seed_storage(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]: ...

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int: ...


def flow_fits_vm(flow: str, vm: Vm) -> bool:
    """Whether a seeded VM in its current state can take a command of this flow (for workloads that
    pick VMs at random: the soak, the chaos test): hibernating needs it up, removing it not
    hibernated, a template or a snapshot its disks (a snapshot also a VM that is not hibernated)."""
    if flow == "HibernateVm":
        return vm.status == "up"
    if flow == "RemoveVm":
        return vm.status != "hibernated"
    return bool(vm.disk_ids) and (flow == "CreateTemplate" or vm.status != "hibernated")


def plan_seed(
    existing: set[EntityRef], vms: int, disks: int, status: str, pool: str = DEFAULT_POOL
) -> tuple[list[InventoryEntity], list[SeededVm]]:
    """The entities of a seed: new VMs numbered after the existing ones, each disk on the pool's first domain."""
    domains = seed_domains(pool)
    taken = [int(ref.id.split("-")[1]) for ref in existing if ref.type is EntityType.VM and ref.id[3:].isdigit()]
    start = max(taken, default=0) + 1
    new: list[InventoryEntity] = [
        StorageDomain.register(sd, name=sd, status=StorageDomainStatus.ACTIVE, pool_id=pool)
        for sd in domains
        if EntityRef(EntityType.STORAGE_DOMAIN, sd) not in existing
    ]
    seeded: list[SeededVm] = []
    for n in range(start, start + vms):
        vm_id = f"vm-{n:04d}"
        disk_ids = [f"disk-{n:04d}-{k}" for k in range(1, disks + 1)]
        for k, disk_id in enumerate(disk_ids, start=1):
            image, volume = f"img-{n:04d}-{k}", f"vol-{n:04d}-{k}-base"
            new.append(
                Disk.register(disk_id, vm_id=vm_id, storage_domain_id=domains[0], image_id=image, volumes=[volume])
            )
        new.append(Vm.register(vm_id, name=vm_id, status=status, disk_ids=disk_ids))
        seeded.append(SeededVm(vm_id=vm_id, disk_ids=disk_ids))
    return new, seeded


def volumes_of(entities: Sequence[InventoryEntity]) -> list[tuple[str, str, str]]:
    return [(e.storage_domain_id, e.image_id, v) for e in entities if isinstance(e, Disk) for v in e.volumes]


def seed_inventory(
    service: CommandService,
    agent: AgentStorage,
    vms: int,
    disks: int,
    status: str = "up",
    pool: str = DEFAULT_POOL,
    existing: set[EntityRef] | None = None,
) -> SeedResult:
    """Create a pool's storage domains, VMs and their disks, in the store and on the pool's agent.

    `existing`: the entities already there, when the caller knows (else the whole inventory is read);
    the new VMs are numbered after the highest VM among them."""
    if existing is None:
        existing = {e.ref for e in service.inventory()}
    new, seeded = plan_seed(existing, vms, disks, status, pool)
    token = uuid4().hex
    clashes = agent.seed_storage(seed_domains(pool), volumes_of(new), token)
    if clashes:
        raise SeedConflictError(
            f"another seed ran at the same time ({len(clashes)} of these volumes, e.g. {clashes[0]}, are "
            "already on the agent); nothing was added; run the seed again"
        )
    saved = 0
    try:
        for start in range(0, len(new), SEED_BATCH):
            service.save(*new[start : start + SEED_BATCH])
            saved += len(new[start : start + SEED_BATCH])
    except BaseException as exc:
        service.store.forget(e.id for e in new)
        agent.unseed(token, [v for _, _, v in volumes_of(new[saved:])])
        if isinstance(exc, IntegrityError):
            kept = f"; {saved} entities were recorded before it" if saved else "; nothing was added"
            raise SeedConflictError(f"another seed ran at the same time{kept}; run the seed again") from None
        raise
    return SeedResult(storage_domains=list(seed_domains(pool)), vms=seeded)
