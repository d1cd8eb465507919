"""The soak's user: commands of every flow kept in flight on a pool of VMs, deliberate conflicts, and cancels."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any
from uuid import UUID

from orchestrator import EntityRef, EntityType, Orchestrator
from orchestrator.domain.inventory import Vm
from orchestrator.errors import CommandRefusedError, EntityLockedError
from orchestrator.testing.seed import flow_fits_vm
from scripts.soak_config import FLOW_NAMES, SoakConfig
from scripts.soak_report import Figures

MAX_HIBERNATED = 6  # hibernated VMs kept as CreateTemplate sources; the rest leave the pool


class Workload:
    """Submits and cancels through one long-lived Orchestrator, and remembers what it was told."""

    def __init__(self, orch: Orchestrator, config: SoakConfig, rng: random.Random, figures: Figures) -> None:
        self.orch = orch
        self.config = config
        self.rng = rng
        self.figures = figures
        self.pool: list[str] = []  # VM ids the soak still submits on
        self.accepted: dict[UUID, str] = {}  # command id -> flow
        self.in_flight: set[UUID] = set()  # as last seen
        self.cancelled: list[UUID] = []  # request_cancel returned without an error
        self.template_names = 0

    # ---- inventory -----------------------------------------------------------------------

    def seed_vms(self, n: int) -> None:
        by_disks = Counter(self.rng.choice([1, 1, 2, 2, 3, 4]) for _ in range(n))
        for disks, count in sorted(by_disks.items()):
            result = self.orch.seed(count, disks)
            self.pool += [vm.vm_id for vm in result.vms]
            self.figures.vms_seeded += count

    def vms(self) -> dict[str, Vm]:
        """The pool's VMs as the store has them now; removed and surplus hibernated ones leave the pool."""
        out: dict[str, Vm] = {}
        hibernated = 0
        for vm_id in list(self.pool):
            vm = self.orch.entity(EntityRef(EntityType.VM, vm_id))
            assert isinstance(vm, Vm), vm_id
            self._check_lock_modes(vm)
            if vm.removed:
                self.pool.remove(vm_id)
                continue
            if vm.status == "hibernated" and not vm.locks:
                hibernated += 1
                if hibernated > MAX_HIBERNATED:
                    self.pool.remove(vm_id)
                    continue
            out[vm_id] = vm
        return out

    def _check_lock_modes(self, vm: Vm) -> None:
        writers = [h for h, lock in vm.locks.items() if lock["mode"] == "write"]
        if writers and len(vm.locks) > 1:
            self.figures.problems.append(f"{vm.ref} holds a write lock beside other locks: {vm.locks}")

    # ---- commands ------------------------------------------------------------------------

    def refresh_in_flight(self) -> None:
        self.in_flight = {c for c in self.in_flight if not self.orch.command(c).ended}

    def in_flight_by_flow(self) -> Counter[str]:
        return Counter(self.accepted[c] for c in self.in_flight)

    def params(self, flow: str, vm_id: str) -> dict[str, Any]:
        if flow == "CreateTemplate":
            self.template_names += 1
            params: dict[str, Any] = {"vm_id": vm_id, "name": f"soak-{self.template_names}"}
            if self.rng.random() < 0.5:
                params["target_storage_domain_id"] = self.rng.choice(["sd-1", "sd-2"])
            return params
        if flow == "CreateSnapshot":
            return {"vm_id": vm_id, "description": f"soak {self.figures.cycles}"}
        return {"vm_id": vm_id}

    def submit(self, flow: str, vm: Vm) -> UUID | None:
        holders = {UUID(h): lock["mode"] for h, lock in vm.locks.items()}
        try:
            result = self.orch.submit(flow, self.params(flow, vm.entity_id))
        except EntityLockedError:
            self.figures.refused_locked += 1
            return None
        except CommandRefusedError as exc:
            if "kept changing" in str(exc):  # optimistic concurrency lost ACCEPT_ATTEMPTS times in a row
                self.figures.refused_contention += 1
            else:
                self.figures.refused_state += 1
            return None
        self.accepted[result.command_id] = flow
        self.in_flight.add(result.command_id)
        self.figures.submitted[flow] += 1
        wants_write = flow != "CreateTemplate"
        for holder, mode in holders.items():
            if (wants_write or mode == "write") and not self.orch.command(holder).ended:
                self.figures.problems.append(
                    f"{flow} {result.command_id} was accepted on vm {vm.entity_id} while "
                    f"{self.accepted.get(holder, '?')} {holder} still holds a {mode} lock on it"
                )
        return result.command_id

    def submit_round(self) -> list[UUID]:
        """Submit commands of every flow on free VMs (and a deliberate conflict); the ids accepted."""
        before = set(self.accepted)
        self.refresh_in_flight()
        vms = self.vms()
        free = [v for v in vms.values() if not v.locks]
        if sum(1 for v in free if v.status == "up") < max(2, self.config.vms // 2):
            up = sum(1 for v in vms.values() if v.status == "up")
            self.seed_vms(max(self.config.vms // 2, self.config.vms - up))
            vms = self.vms()
            free = [v for v in vms.values() if not v.locks]
        self.rng.shuffle(free)
        counts = self.in_flight_by_flow()
        for flow in self.rng.sample(FLOW_NAMES, len(FLOW_NAMES)):
            for _ in range(self.config.per_flow - counts[flow]):
                vm = next((v for v in free if flow_fits_vm(flow, v)), None)
                if vm is None:
                    break
                free.remove(vm)
                self.submit(flow, vm)
        # Deliberate conflicts: a write on a VM some command holds (must be refused), or a
        # second CreateTemplate beside a running one (read locks: must be accepted, G3).
        if self.rng.random() < self.config.conflict_chance:
            busy = [v for v in self.vms().values() if v.locks]
            if busy:
                vm = self.rng.choice(busy)
                readers_only = all(lock["mode"] == "read" for lock in vm.locks.values())
                flow = "CreateTemplate" if readers_only and self.rng.random() < 0.6 else self.rng.choice(FLOW_NAMES)
                self.figures.conflicts_tried += 1
                if self.submit(flow, vm) is not None and flow == "CreateTemplate" and readers_only:
                    self.figures.parallel_templates += 1
        self.figures.max_in_flight = max(self.figures.max_in_flight, len(self.in_flight))
        return [c for c in self.accepted if c not in before]

    def cancel_racing(self, fresh: list[UUID]) -> None:
        """A user cancels a command just accepted, while the engine is submitting its tasks."""
        if not fresh:
            return
        time.sleep(self.rng.uniform(0.0, 0.4))
        command_id = self.rng.choice(fresh)
        try:
            self.orch.request_cancel(command_id, "cancelled while being submitted")
        except CommandRefusedError:
            self.figures.cancels_too_late += 1
            return
        self.figures.cancels_racing += 1
        self.cancelled.append(command_id)

    def cancel_one(self) -> None:
        """A user cancels a command in flight (the engine stops its tasks; the rest never start)."""
        if not self.in_flight:
            return
        command_id = self.rng.choice(sorted(self.in_flight))
        try:
            self.orch.request_cancel(command_id, "cancelled by the soak")
        except CommandRefusedError:
            self.figures.cancels_too_late += 1  # it had ended meanwhile
            return
        self.figures.cancels += 1
        self.cancelled.append(command_id)
