"""Soak: many commands of every flow in flight, a real engine SIGKILLed at random, agent faults on and off.

    python scripts/soak.py --cycles 50 --store sqlite:////tmp/soak/store.db [--seed S] [--json out.json]

Each cycle the soak (this process, driving the library) submits new commands of every flow on
VMs that are free, and sometimes deliberately on VMs that are not (a conflicting write must be
refused; a second CreateTemplate of one VM must be accepted). Meanwhile a real engine
subprocess (`python -m orchestrator run`) executes them; at a random moment of a cycle it is
SIGKILLed and restarted, sometimes killed again while it recovers. The simulated agent's
faults are switched on at random and off again (unreachable for a while, slow calls, calls
timing out, a share of tasks vanishing or failing, refused creations, malformed answers,
phantom tasks, answers to create calls held back): the engine subprocess reads them from the
agent's state file on every call. Now and then a user cancels a command in flight, or one just
submitted while the engine is submitting its tasks; an engine start dies at the `in_recovery`
crash point (verdicts recorded, stops not yet made); a rebuild or verification of the read models
runs beside the engine, and is sometimes SIGKILLed midway. Every --truth-every cycles the soak compares
every idle entity (no lock held) with the agent's storage, because a mismatch can be undone by
later commands before the end (the simulated agent will create a volume on a deleted image).

After the last cycle the soak clears the faults, kills the engine one last time, runs
`orchestrator run --until-idle` and checks every invariant of docs/invariants.md through a
fresh Orchestrator, plus what it watched on the way: no conflicting locks granted, no engine
exit it did not cause, no engine traceback, the final run ended, every cancel that returned was
recorded, and its own long-lived Orchestrator sees what the store holds. It prints a table (and
writes JSON with --json), explains each volume the inventory and the agent disagree on (which
agent task, which command), and exits 1 on any violation.

Every random choice comes from one generator seeded by --seed (printed): a run with the same
seed makes the same choices, though the engine's timing makes each run differ in detail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python scripts/soak.py` from anywhere
    sys.path.insert(0, str(REPO))

import orchestrator  # noqa: E402
from orchestrator.bootstrap import Orchestrator  # noqa: E402
from orchestrator.crashpoints import CRASH_EXIT_CODE  # noqa: E402
from orchestrator.domain.commands import RootCommand  # noqa: E402
from orchestrator.domain.inventory import Disk, Template, Vm  # noqa: E402
from orchestrator.domain.model import (  # noqa: E402
    CommandStatus,
    EndKind,
    EntityRef,
    EntityType,
    TaskStatus,
    parse_agent_task_key,
)
from orchestrator.errors import CommandRefusedError, EntityLockedError, OrchestratorError  # noqa: E402
from orchestrator.store import parse_store_url  # noqa: E402
from orchestrator.testing import FaultConfig, InvariantResult, SimulatedAgent, check_invariants, expected_storage  # noqa: E402  # noqa: E402

FLOW_NAMES = ("RemoveVm", "HibernateVm", "CreateTemplate", "CreateSnapshot")
FAULT_KINDS = ("unreachable", "slow", "timeout", "vanish", "fail", "refuse", "malformed", "phantom", "slow_answer")
VERBS = ("delete_image", "create_volume", "copy_image")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
EARLY_KILL_SECONDS = 0.8  # a kill this soon after a start lands in (or right after) recovery
MAX_HIBERNATED = 6  # hibernated VMs kept as CreateTemplate sources; the rest leave the pool


@dataclass
class SoakConfig:
    store: str
    cycles: int
    agent_state: Path
    workdir: Path
    seed: int
    vms: int = 16
    per_flow: int = 3
    cycle_seconds: float = 2.0
    kill_chance: float = 0.4
    recovery_kill_chance: float = 0.25
    fault_chance: float = 0.4
    conflict_chance: float = 0.4
    cancel_chance: float = 0.3
    race_cancel_chance: float = 0.3
    recovery_crash_chance: float = 0.15
    rebuild_chance: float = 0.25
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    truth_every: int = 5
    task_seconds: float = 0.6
    poll_interval: float = 0.1
    final_timeout: float = 120.0


@dataclass
class ActiveFault:
    kind: str
    until: float  # epoch seconds
    fields: dict[str, Any]


@dataclass
class Figures:
    """Everything the soak counts; the table and the JSON are made from it."""

    seed: int
    store: str
    agent_state: str
    workdir: str
    cycles: int = 0
    seconds: float = 0.0
    drain_seconds: float = 0.0
    engine_starts: int = 0
    kills: int = 0
    early_kills: int = 0
    submit_batches: Counter[str] = field(default_factory=Counter)
    submitted: Counter[str] = field(default_factory=Counter)
    refused_locked: int = 0
    refused_state: int = 0
    refused_contention: int = 0
    conflicts_tried: int = 0
    parallel_templates: int = 0
    cancels: int = 0
    cancels_racing: int = 0
    cancels_too_late: int = 0
    recovery_crashes: int = 0
    rebuilds: Counter[str] = field(default_factory=Counter)
    vms_seeded: int = 0
    max_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    outcomes_by_flow: dict[str, Counter[str]] = field(default_factory=dict)
    failure_causes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    invariants: list[InvariantResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    truth_checks: int = 0
    truth_compared: int = 0
    write_conflicts: int = 0

    @property
    def violations(self) -> int:
        return sum(1 for r in self.invariants if not r.ok) + len(self.problems)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "store": self.store,
            "agent_state": self.agent_state,
            "workdir": self.workdir,
            "cycles": self.cycles,
            "seconds": round(self.seconds, 1),
            "drain_seconds": round(self.drain_seconds, 1),
            "engine_starts": self.engine_starts,
            "kills": self.kills,
            "early_kills": self.early_kills,
            "submit_batches": dict(self.submit_batches),
            "commands": {
                "submitted": sum(self.submitted.values()),
                "submitted_by_flow": dict(self.submitted),
                "refused": self.refused_locked + self.refused_state + self.refused_contention,
                "refused_locked": self.refused_locked,
                "refused_state": self.refused_state,
                "refused_contention": self.refused_contention,
                "conflicts_tried": self.conflicts_tried,
                "parallel_templates": self.parallel_templates,
                "cancels_requested": self.cancels,
                "cancels_racing_submission": self.cancels_racing,
                "cancels_too_late": self.cancels_too_late,
                "max_in_flight": self.max_in_flight,
                "ended": dict(self.outcomes),
                "ended_by_flow": {f: dict(c) for f, c in sorted(self.outcomes_by_flow.items())},
                "failure_causes": dict(self.failure_causes),
            },
            "vms_seeded": self.vms_seeded,
            "recovery_crashes": self.recovery_crashes,
            "rebuilds": dict(self.rebuilds),
            "faults": {k: self.faults.get(k, 0) for k in FAULT_KINDS},
            "invariants": [r.model_dump() for r in self.invariants],
            "problems": self.problems,
            "diagnosis": self.diagnosis,
            "notes": self.notes,
            "truth_checks_mid_run": self.truth_checks,
            "idle_images_compared_mid_run": self.truth_compared,
            "engine_write_conflicts": self.write_conflicts,
            "violations": self.violations,
        }


class Engine:
    """One `orchestrator run` subprocess at a time; its stderr goes to a log file per start."""

    def __init__(self, config: SoakConfig, rng: random.Random, figures: Figures) -> None:
        self.config = config
        self.rng = rng
        self.figures = figures
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env.update(
            ORCHESTRATOR_AGENT_TASK_SECONDS=str(self.config.task_seconds),
            ORCHESTRATOR_POLL_INTERVAL=str(self.config.poll_interval),
            ORCHESTRATOR_AGENT_BACKOFF_MAX="2",
            ORCHESTRATOR_END_ACTION_BACKOFF="0.2",
        )
        env.update(extra)
        return env

    def argv(self) -> list[str]:
        c = self.config
        return [sys.executable, "-m", "orchestrator", "--store", c.store, "--agent-state", str(c.agent_state)]

    def start(self, *, crash_in_recovery: bool = False) -> None:
        assert self.proc is None
        batch = self.rng.choice(["1", "1", "2", "100"])  # one task per agent call makes kills land mid-command
        self.figures.submit_batches[batch] += 1
        self.figures.engine_starts += 1
        self.log_path = self.config.workdir / f"engine-{self.figures.engine_starts:04d}.log"
        self._log = self.log_path.open("wb")
        extra = {"ORCHESTRATOR_CRASH_AT": "in_recovery"} if crash_in_recovery else {}
        self.proc = subprocess.Popen(
            [*self.argv(), "run"],
            cwd=REPO,
            env=self.env(ORCHESTRATOR_SUBMIT_BATCH=batch, **extra),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.started_at = time.monotonic()

    def crash_in_recovery(self, cycle: int) -> None:
        """A start that exits at the `in_recovery` crash point (verdicts recorded, stops not yet made)."""
        self.kill()
        self.start(crash_in_recovery=True)
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        if code != CRASH_EXIT_CODE:
            self.figures.problems.append(
                f"cycle {cycle}: an engine meant to exit in recovery ended with {code}: {self.last_lines()}"
            )
        else:
            self.figures.recovery_crashes += 1
        self.kill()
        self.start()

    def check_alive(self, cycle: int) -> None:
        """An engine that exited without being killed is a problem (a crash, or a crash loop)."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        self._closed()
        self.figures.problems.append(
            f"cycle {cycle}: engine exited by itself with code {code}: {self.last_lines()} (log {self.log_path})"
        )
        self.start()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.figures.kills += 1
            if time.monotonic() - self.started_at < EARLY_KILL_SECONDS:
                self.figures.early_kills += 1
        self.proc.wait()
        self._closed()

    def _closed(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def last_lines(self, n: int = 3) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:]) or "(empty log)"

    def drain(self) -> subprocess.CompletedProcess[str]:
        """The last engine: recover and run until nothing is in flight."""
        timeout = self.config.final_timeout
        return subprocess.run(
            [*self.argv(), "run", "--until-idle", "--timeout", f"{timeout:g}"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            check=False,
        )


class Rebuilder:
    """Read-model rebuilds and verifications run beside the engine, some of them killed midway.

    A run that ends by itself must end well: rebuilt (0), verified equal (0), or refused
    because another runs (11). A verification that finds a difference (10) is a problem.
    """

    def __init__(self, config: SoakConfig, rng: random.Random, figures: Figures, engine: Engine) -> None:
        self.config = config
        self.rng = rng
        self.figures = figures
        self.engine = engine
        self.runs: list[tuple[subprocess.Popen[str], str, float | None]] = []  # process, kind, kill at

    def step(self, cycle: int) -> None:
        self._reap(cycle)
        if self.rng.random() >= self.config.rebuild_chance:
            return
        kind = self.rng.choice(["rebuild", "verify", "rebuild commands"])
        args = ["projections", "rebuild", *(["--verify"] if kind == "verify" else kind.split()[1:])]
        proc = subprocess.Popen(
            [*self.engine.argv(), *args],
            cwd=REPO,
            env=self.engine.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_at = time.monotonic() + self.rng.uniform(0.2, 1.5) if self.rng.random() < 0.4 else None
        self.runs.append((proc, kind, kill_at))
        self.figures.rebuilds[f"{kind} started"] += 1

    def _reap(self, cycle: int) -> None:
        still = []
        for proc, kind, kill_at in self.runs:
            if proc.poll() is None and kill_at is not None and time.monotonic() >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.figures.rebuilds[f"{kind} killed"] += 1
                continue
            if proc.poll() is None:
                still.append((proc, kind, kill_at))
                continue
            _, stderr = proc.communicate()
            if proc.returncode == 0:
                self.figures.rebuilds[f"{kind} ok"] += 1
            elif proc.returncode == 11:
                self.figures.rebuilds[f"{kind} refused: another runs"] += 1
            else:
                tail = " | ".join(stderr.strip().splitlines()[-2:])
                self.figures.problems.append(f"cycle {cycle}: projections {kind} exited {proc.returncode}: {tail}")
        self.runs = still

    def finish(self) -> None:
        """Wait for the runs still going (bounded), then reap them."""
        deadline = time.monotonic() + 120
        while self.runs and time.monotonic() < deadline:
            self._reap(self.figures.cycles)
            time.sleep(0.05)
        for proc, kind, _ in self.runs:
            proc.kill()
            self.figures.problems.append(f"projections {kind} did not end within 120s")
        self.runs = []


class Faults:
    """Faults switched on for a while, then off; written to the agent's state file each change."""

    def __init__(
        self, agent: SimulatedAgent, rng: random.Random, figures: Figures, cycle_seconds: float, kinds: tuple[str, ...]
    ) -> None:
        self.agent = agent
        self.rng = rng
        self.figures = figures
        self.cycle_seconds = cycle_seconds
        self.kinds = kinds
        self.active: dict[str, ActiveFault] = {}

    def _fields(self, kind: str, until: float) -> dict[str, Any]:
        r = self.rng
        if kind == "unreachable":
            return {"unreachable_until": until}
        if kind == "slow":
            return {"call_latency": round(r.uniform(0.05, 0.4), 3), "extra_task_seconds": round(r.uniform(0, 2), 2)}
        if kind == "timeout":
            return {"call_latency": 0.3, "timeout_seconds": 0.2}
        if kind == "vanish":
            return {"vanish_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "fail":
            return {"fail_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "refuse":
            return {"refuse_verbs": [r.choice(VERBS)]}
        if kind == "malformed":
            if r.random() < 0.5:
                return {"malformed_until": min(until, time.time() + r.uniform(0.3, 2.0))}
            return {"malformed_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "phantom":
            return {"phantom_tasks": r.randint(1, 3)}
        if kind == "slow_answer":  # the agent makes the tasks, then its answer is slow: cancels race with it
            return {"create_answer_latency": round(r.uniform(0.2, 1.0), 2)}
        raise ValueError(kind)

    def step(self, chance: float) -> None:
        now = time.time()
        changed = False
        for kind in [k for k, f in self.active.items() if f.until <= now]:
            del self.active[kind]
            changed = True
        if self.rng.random() < chance:
            kind = self.rng.choice([k for k in self.kinds if k not in self.active] or list(self.kinds))
            seconds = self.rng.uniform(0.5, 2.0) * self.cycle_seconds
            if kind in ("unreachable", "timeout"):  # the engine can do nothing meanwhile: keep these short
                seconds = min(seconds, self.rng.uniform(0.5, 2.5))
            until = now + seconds
            self.active[kind] = ActiveFault(kind, until, self._fields(kind, until))
            self.figures.faults[kind] += 1
            changed = True
        if changed:
            self.write()

    def write(self) -> None:
        merged: dict[str, Any] = {"seed": self.rng.randrange(2**31)}
        for fault in self.active.values():
            for name, value in fault.fields.items():
                if name == "call_latency":
                    merged[name] = max(value, merged.get(name, 0.0))
                elif name == "timeout_seconds":
                    merged[name] = min(value, merged.get(name, 10.0))
                else:
                    merged[name] = value
        self.agent.backend.set_faults(FaultConfig.model_validate(merged))

    def clear(self) -> None:
        self.active.clear()
        self.agent.backend.set_faults(FaultConfig())

    def blocks_recovery(self) -> bool:
        """While the agent cannot answer, recovery waits for it (it never decides from silence)."""
        return any(k in self.active for k in ("unreachable", "timeout", "malformed"))


class Soak:
    def __init__(self, config: SoakConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.rng = random.Random(config.seed)
        self.figures = Figures(
            seed=config.seed,
            store=parse_store_url(config.store).redacted,
            agent_state=str(config.agent_state),
            workdir=str(config.workdir),
        )
        self.orch = Orchestrator.open(config.store, agent_state=config.agent_state, create=True)
        self.agent = SimulatedAgent.open(config.agent_state)
        self.engine = Engine(config, self.rng, self.figures)
        self.rebuilder = Rebuilder(config, self.rng, self.figures, self.engine)
        self.faults = Faults(self.agent, self.rng, self.figures, config.cycle_seconds, config.fault_kinds)
        self.pool: list[str] = []  # VM ids the soak still submits on
        self.accepted: dict[UUID, str] = {}  # command id -> flow
        self.in_flight: dict[UUID, str] = {}  # command id -> vm id, as last seen
        self.template_names = 0
        self.truth_reported: set[str] = set()
        self.cancelled: list[UUID] = []  # request_cancel returned without an error
        self.long_lived = self.orch

    def close(self) -> None:
        self.engine.kill()
        self.agent.close()
        self.orch.close()
        if self.long_lived is not self.orch:
            self.long_lived.close()

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
        for command_id in list(self.in_flight):
            if self.orch.command(command_id).ended:
                del self.in_flight[command_id]

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

    @staticmethod
    def fits(flow: str, vm: Vm) -> bool:
        if flow == "HibernateVm":
            return vm.status == "up"
        if flow == "RemoveVm":
            return vm.status != "hibernated"
        if flow == "CreateSnapshot":
            return vm.status != "hibernated" and bool(vm.disk_ids)
        return bool(vm.disk_ids)

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
        self.in_flight[result.command_id] = vm.entity_id
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
                vm = next((v for v in free if self.fits(flow, v)), None)
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

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> Figures:
        c = self.config
        started = time.monotonic()
        self.faults.clear()
        self.seed_vms(c.vms)
        self.engine.start()
        for cycle in range(1, c.cycles + 1):
            self.figures.cycles = cycle
            cycle_end = time.monotonic() + self.rng.uniform(0.5, 1.5) * c.cycle_seconds
            self.engine.check_alive(cycle)
            if cycle % c.truth_every == 0:
                self.check_truth_now(cycle)
            self.faults.step(c.fault_chance)
            self.rebuilder.step(cycle)
            fresh = self.submit_round()
            if self.rng.random() < c.race_cancel_chance:
                self.cancel_racing(fresh)
            if self.rng.random() < c.recovery_crash_chance and not self.faults.blocks_recovery():
                self.engine.crash_in_recovery(cycle)
            cancel_at = time.monotonic() + self.rng.uniform(0, c.cycle_seconds)
            cancel = self.rng.random() < c.cancel_chance
            if self.rng.random() < c.kill_chance:
                self._sleep_until(min(cycle_end, time.monotonic() + self.rng.uniform(0, c.cycle_seconds)))
                self.engine.kill()
                self._sleep_until(min(cycle_end, time.monotonic() + self.rng.uniform(0, 0.5)))
                self.engine.start()
                if self.rng.random() < c.recovery_kill_chance:
                    self._sleep_until(time.monotonic() + self.rng.uniform(0.05, EARLY_KILL_SECONDS - 0.1))
                    self.engine.kill()
                    self.engine.start()
            if cancel:
                self._sleep_until(min(cancel_at, cycle_end))
                self.cancel_one()
            self._sleep_until(cycle_end)
            self.console.print(
                f"cycle {cycle}/{c.cycles}: {len(self.in_flight)} in flight, "
                f"faults: {', '.join(sorted(self.faults.active)) or 'none'}; kills {self.figures.kills}",
                highlight=False,
                markup=False,
            )
        self.engine.check_alive(c.cycles)
        self.rebuilder.finish()
        self.faults.clear()
        self.engine.kill()
        drain_started = time.monotonic()
        self.console.print("last cycle done: faults cleared, engine killed; running it until idle", highlight=False)
        drained = self.engine.drain()
        self.figures.drain_seconds = time.monotonic() - drain_started
        if drained.returncode != 0:
            tail = " | ".join(drained.stderr.strip().splitlines()[-3:])
            self.figures.problems.append(f"final `run --until-idle` exited with {drained.returncode}: {tail}")
        # The invariants are read by a fresh Orchestrator, as a new process would; the soak's own
        # long-lived one (which cancelled and submitted all along) must see the same thing.
        self.long_lived = self.orch
        self.orch = Orchestrator.open(self.config.store, agent_state=self.config.agent_state, create=False)
        self._tally()
        self.figures.invariants = check_invariants(self.orch, self.agent, expected_commands=list(self.accepted))
        self._compare_views()
        self._scan_logs()
        if not all(r.ok for r in self.figures.invariants):
            self.figures.diagnosis += self.diagnose()
        self.figures.seconds = time.monotonic() - started
        return self.figures

    def _compare_views(self) -> None:
        """The soak's first Orchestrator object against the store; every cancel that returned is recorded."""
        for command_id in self.cancelled:
            if self.orch.command(command_id).cancel_reason is None:
                self.figures.problems.append(
                    f"request_cancel of {self.accepted[command_id]} {command_id} returned, "
                    "but the store has no cancel request"
                )
        stale = []
        for command_id in self.accepted:
            mine, truth = self.long_lived.command(command_id), self.orch.command(command_id)
            if command_view(mine) != command_view(truth):
                stale.append(f"{self.accepted[command_id]} {command_id}")
        if stale:
            self.figures.problems.append(
                f"the soak's long-lived Orchestrator shows {len(stale)} command(s) otherwise than the store "
                f"(e.g. {', '.join(stale[:3])})"
            )

    def _scan_logs(self) -> None:
        """An engine traceback is a problem; a log record of several lines is worth a note."""
        multi_line = 0
        example = ""
        for path in sorted(self.config.workdir.glob("engine-*.log")):
            text = path.read_text(errors="replace")
            if "Traceback" in text:
                last = text.strip().splitlines()[-1]
                self.figures.problems.append(f"traceback in {path}: {last}")
            self.figures.write_conflicts += text.count("store refused a write")
            for line in text.splitlines():
                if line.strip() and not LOG_RECORD.match(line) and not line.startswith("orchestrator: crash point"):
                    multi_line += 1
                    example = example or f"{path.name}: {line.strip()[:150]}"
        if multi_line:
            self.figures.notes.append(
                f"{multi_line} engine log line(s) continue a record over several lines, e.g. {example}"
            )

    def diagnose(self) -> list[str]:
        """For each volume the inventory and the agent disagree on, the agent tasks and commands behind it."""
        expected = expected_storage(self.orch.inventory())
        actual = self.agent.storage().triples()
        journal = self.agent.backend.journal()
        lines = []
        for side, triples in (("only in the inventory", expected - actual), ("only on the agent", actual - expected)):
            for sd, image, volume in sorted(triples):
                lines.append(f"{volume} ({image} on {sd}) is {side}")
                lines += self.tasks_behind(journal, image, volume)
        return lines

    def tasks_behind(self, journal: list[dict[str, Any]], image: str, volume: str | None = None) -> list[str]:
        """The agent tasks that made or deleted a volume (or deleted its image), and what the engine made of them."""
        lines = []
        for row in journal:
            names_image = f'"{image}"' in row["args"]
            deleted_image = row["verb"] == "delete_image" and names_image
            made = f'"{volume}"' in row["args"] if volume else names_image and row["verb"] != "delete_image"
            if not (made or deleted_image):
                continue
            parsed = parse_agent_task_key(row["key"])
            detail = ""
            if parsed is not None:
                command = self.orch.command(parsed[0])
                task = command.tasks.get(parsed[1])
                seen = f"{task.status.value} ({task.end_kind})" if task else "unknown task"
                detail = (
                    f" - {command.flow} {command.id} {command.status.value} ({command.outcome_reason}); "
                    f"the engine has this task as {seen}"
                )
            state = f"{row['state']}/{row['result'] or '-'}" + (" reverted" if row["reverted"] else "")
            lines.append(f"    agent task {row['verb']} {state}{detail}")
        return lines

    def check_truth_now(self, cycle: int) -> None:
        """Invariant 7 while the engine runs, on every entity no command holds.

        Only the soak accepts commands and it is busy here, so an entity without locks now has no
        command in flight and none can start: its volumes on the agent must be what the inventory
        says. An image on the agent that neither the inventory nor a command in flight names must
        not exist. (The final check alone can miss a mismatch that later commands happen to undo.)
        """
        busy: set[str] = set()
        for command_id in self.in_flight:  # read before the inventory: a command ending meanwhile is in both
            for task in self.orch.command(command_id).tasks.values():
                busy |= {str(task.args[k]) for k in ("image_id", "target_image_id") if k in task.args}
        claims: dict[tuple[str, str], tuple[str, set[str], bool]] = {}  # (sd, image) -> (entity, volumes, idle)
        for e in self.orch.inventory():
            idle = not e.locks
            if isinstance(e, Disk):
                claims[(e.storage_domain_id, e.image_id)] = (str(e.ref), set() if e.removed else set(e.volumes), idle)
            elif isinstance(e, Template):
                for sd, image, volume in e.images:
                    claims[(sd, image)] = (str(e.ref), set() if e.removed else {volume}, idle)
            elif isinstance(e, Vm) and e.status == "hibernated" and not e.removed:
                for sd, image, volume in e.memory_volumes:
                    claims[(sd, image)] = (str(e.ref), {volume}, idle)
        on_agent: dict[tuple[str, str], set[str]] = {}
        for v in self.agent.backend.storage_snapshot()["volumes"]:
            on_agent.setdefault((v["storage_domain_id"], v["image_id"]), set()).add(v["volume_id"])
        wrong: list[tuple[str, str]] = []
        self.figures.truth_checks += 1
        for key, (entity, volumes, idle) in claims.items():
            self.figures.truth_compared += idle
            if idle and on_agent.get(key, set()) != volumes:
                have = ", ".join(sorted(on_agent.get(key, set()))) or "nothing"
                wrong.append((key[1], f"{entity} is idle; the inventory has {sorted(volumes)}, the agent {have}"))
        for key, volumes in on_agent.items():
            if key not in claims and key[1] not in busy:
                wrong.append((key[1], f"the agent has {', '.join(sorted(volumes))} unknown to the inventory"))
        if not wrong:
            return
        journal = self.agent.backend.journal()
        for image, text in wrong:
            if image in self.truth_reported:
                continue
            self.truth_reported.add(image)
            self.figures.problems.append(f"cycle {cycle}: truth differs on image {image}: {text}")
            self.figures.diagnosis += [f"cycle {cycle}, image {image}: {text}", *self.tasks_behind(journal, image)]

    @staticmethod
    def _sleep_until(deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _tally(self) -> None:
        for command_id, flow in self.accepted.items():
            command = self.orch.command(command_id)
            outcome = command.status.value
            if command.status is CommandStatus.FAILED and command.flagged:
                outcome = "flagged"
            elif not command.ended:
                outcome = "in flight"
            self.figures.outcomes[outcome] += 1
            self.figures.outcomes_by_flow.setdefault(flow, Counter())[outcome] += 1
            if command.status is CommandStatus.FAILED:
                self.figures.failure_causes[failure_cause(command)] += 1


def command_view(command: RootCommand) -> tuple[Any, ...]:
    """What a user reads of a command: version, status, cancel request, and each task's state."""
    tasks = sorted((t.task_id, t.status.value, t.agent_task_id, t.cleared) for t in command.tasks.values())
    return command.version, command.status.value, command.cancel_reason, tasks


def failure_cause(command: RootCommand) -> str:
    """Why a command failed, in a few words (the first cause that applies)."""
    if command.flagged:
        return "end action gave up"
    if command.cancel_reason:
        return "cancelled"
    if command.failure_reason and "no agent task id" in command.failure_reason:
        return "cut short by a crash (G1)"
    kinds = {t.end_kind for t in command.tasks.values() if t.status is TaskStatus.FAILED}
    for kind, words in (
        (EndKind.VANISHED, "task vanished"),
        (EndKind.REFUSED, "task refused"),
        (EndKind.ZOMBIE, "zombie task"),
        (EndKind.FINISHED, "task failed on the agent"),
        (EndKind.STOPPED, "task stopped"),
        (EndKind.NOT_SUBMITTED, "task not submitted"),
    ):
        if kind in kinds:
            return words
    return f"other: {(command.failure_reason or command.outcome_reason)[:60]}"


def render(figures: Figures) -> Table:
    f = figures
    table = Table("what", "figure", title=f"soak: seed {f.seed}, {f.store}", show_lines=False)
    table.add_row("cycles", f"{f.cycles} in {f.seconds:.0f}s (final run until idle: {f.drain_seconds:.1f}s)")
    table.add_row(
        "engine",
        f"{f.engine_starts} starts, {f.kills} SIGKILLs ({f.early_kills} within {EARLY_KILL_SECONDS}s of a start)",
    )
    batches = ", ".join(f"{n}x batch {b}" for b, n in sorted(f.submit_batches.items(), key=lambda i: int(i[0])))
    table.add_row("submit batch per start", batches)
    by_flow = ", ".join(f"{flow} {f.submitted[flow]}" for flow in FLOW_NAMES)
    table.add_row("commands submitted", f"{sum(f.submitted.values())} ({by_flow}); at most {f.max_in_flight} in flight")
    table.add_row(
        "commands refused",
        f"{f.refused_locked + f.refused_state + f.refused_contention} ({f.refused_locked} locked, "
        f"{f.refused_state} by validation, {f.refused_contention} store contention); "
        f"{f.conflicts_tried} deliberate conflicts, {f.parallel_templates} parallel CreateTemplate accepted",
    )
    table.add_row(
        "cancels requested",
        f"{f.cancels} at random, {f.cancels_racing} racing a submission "
        f"(and {f.cancels_too_late} too late: the command had ended or its end action begun)",
    )
    table.add_row("crashes inside recovery", str(f.recovery_crashes))
    table.add_row(
        "read-model rebuilds beside the engine", ", ".join(f"{n} {k}" for k, n in sorted(f.rebuilds.items())) or "none"
    )
    ended = ", ".join(f"{n} {o}" for o, n in sorted(f.outcomes.items()))
    table.add_row("commands ended", ended or "none")
    for flow in FLOW_NAMES:
        counts = f.outcomes_by_flow.get(flow, Counter())
        table.add_row(f"  {flow}", ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "none")
    table.add_row("failed because", ", ".join(f"{n} {c}" for c, n in f.failure_causes.most_common()) or "-")
    table.add_row("faults injected", ", ".join(f"{k} {f.faults.get(k, 0)}" for k in FAULT_KINDS))
    table.add_row("VMs seeded", str(f.vms_seeded))
    table.add_row(
        "truth checked mid-run",
        f"{f.truth_checks} times, {f.truth_compared} idle images compared with the agent",
    )
    table.add_row("engine write conflicts", f"{f.write_conflicts} (store refused a write; the engine re-read)")
    for note in f.notes:
        table.add_row("note", note)
    for r in f.invariants:
        mark = "[green]holds[/]" if r.ok else "[red]VIOLATED[/]"
        table.add_row(f"invariant {r.number}: {r.name}", f"{mark} - {r.detail}")
    for problem in f.problems:
        table.add_row("[red]problem[/]", problem)
    colour = "green" if f.violations == 0 else "red"
    table.add_row("[bold]invariant violations[/]", f"[bold {colour}]{f.violations}[/]")
    return table


def default_agent_state(store: str, workdir: Path) -> Path:
    config = parse_store_url(store)
    if config.kind == "sqlite" and config.path is not None:
        return config.path.with_name(config.path.name + ".agent")
    return workdir / "agent.db"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--cycles", type=int, required=True, help="soak cycles")
    p.add_argument("--store", required=True, help="store URL: sqlite:///PATH or postgresql://...")
    p.add_argument("--agent-state", type=Path, help="agent state file (default: beside a SQLite store)")
    p.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    p.add_argument("--json", type=Path, help="also write the figures here as JSON")
    p.add_argument("--vms", type=int, default=16, help="VMs to seed (more are seeded as they are used up)")
    p.add_argument("--per-flow", type=int, default=3, help="commands of each flow to keep in flight")
    p.add_argument("--cycle-seconds", type=float, default=2.0, help="mean length of a cycle")
    p.add_argument("--kill-chance", type=float, default=0.4, help="chance per cycle to SIGKILL the engine")
    p.add_argument("--recovery-kill-chance", type=float, default=0.25, help="chance to kill a restart at once")
    p.add_argument("--fault-chance", type=float, default=0.4, help="chance per cycle to switch a fault on")
    p.add_argument("--conflict-chance", type=float, default=0.4, help="chance per cycle of a deliberate conflict")
    p.add_argument("--cancel-chance", type=float, default=0.3, help="chance per cycle that a user cancels one")
    p.add_argument(
        "--race-cancel-chance", type=float, default=0.3, help="chance per cycle to cancel a command just submitted"
    )
    p.add_argument(
        "--recovery-crash-chance",
        type=float,
        default=0.15,
        help="chance per cycle of an engine start dying in recovery",
    )
    p.add_argument(
        "--rebuild-chance", type=float, default=0.25, help="chance per cycle to rebuild or verify the read models"
    )
    p.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"fault kinds to switch on, comma-separated (default: all of {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--truth-every", type=int, default=5, help="compare idle entities with the agent every N cycles")
    p.add_argument("--task-seconds", type=float, default=0.6, help="how long an agent task takes")
    p.add_argument("--final-timeout", type=float, default=120.0, help="limit for the final run until idle")
    p.add_argument("--workdir", type=Path, help="engine logs go here (default: a new temporary directory)")
    args = p.parse_args(argv)
    if args.cycles < 1:
        p.error("--cycles must be at least 1")
    if args.truth_every < 1:
        p.error("--truth-every must be at least 1")
    if args.vms < 2:
        p.error("--vms must be at least 2")
    args.fault_kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(args.fault_kinds) - set(FAULT_KINDS))
    if unknown or not args.fault_kinds:
        p.error(f"--faults: unknown kind(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULT_KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, width=160)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"soak-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        agent_state = args.agent_state or default_agent_state(args.store, workdir)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = SoakConfig(
        store=args.store,
        cycles=args.cycles,
        agent_state=agent_state,
        workdir=workdir,
        seed=seed,
        vms=args.vms,
        per_flow=args.per_flow,
        cycle_seconds=args.cycle_seconds,
        kill_chance=args.kill_chance,
        recovery_kill_chance=args.recovery_kill_chance,
        fault_chance=args.fault_chance,
        conflict_chance=args.conflict_chance,
        cancel_chance=args.cancel_chance,
        race_cancel_chance=args.race_cancel_chance,
        recovery_crash_chance=args.recovery_crash_chance,
        rebuild_chance=args.rebuild_chance,
        fault_kinds=args.fault_kinds,
        truth_every=args.truth_every,
        task_seconds=args.task_seconds,
        final_timeout=args.final_timeout,
    )
    console.print(f"soak seed {seed} (rerun with --seed {seed}); agent state {agent_state}; engine logs in {workdir}")
    console.print(f"engine code: {Path(orchestrator.__file__).parent}", markup=False)
    try:
        soak = Soak(config, console)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        figures = soak.run()
    finally:
        soak.close()
    console.print(render(figures))
    if figures.diagnosis:
        console.print("where inventory and agent disagree:", markup=False)
        for line in figures.diagnosis:
            console.print("  " + line, markup=False)
    if args.json:
        args.json.write_text(json.dumps(figures.as_json(), indent=2) + "\n")
    console.print(f"seed {seed}: {figures.violations} violation(s)")
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
