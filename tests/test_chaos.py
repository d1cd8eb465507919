"""Issue 14, chaos: three engines on one PostgreSQL database, every way of losing a lease at random.

Three real engine processes (`orchestrator run`, lease timeout 2 s) share three pools, each with an
agent server of its own, on a PostgreSQL server of this module's own. While new commands of every
flow arrive in waves (a fresh Orchestrator each wave), a seeded generator SIGKILLs engines (and
starts them again), freezes them with SIGSTOP for longer than the lease timeout (then SIGCONT),
cuts their lease connections (`pg_terminate_backend`), and restarts the database server once.
Then everything is woken, the engines finish every command, and the evidence is read three ways:

- the invariants (docs/invariants.md), fenced writes (9) among them, over every accepted command;
- the events' writer stamps in log order, per pool: never an epoch below one already written, and
  each epoch one engine's;
- each agent's own log of the fenced calls it admitted and refused (`Simulator.fence_log`): never a
  call admitted from an epoch after the agent first admitted a higher one.

The seed is printed (and in every failure message); `ORCHESTRATOR_CHAOS_SEED` replays one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import pytest

from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.protocol import Fence, StaleEpochError
from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType
from orchestrator.errors import CommandRefusedError, NotFoundError, OrchestratorError
from orchestrator.pools import add_pool
from orchestrator.store import writer_of
from orchestrator.testing import AgentProcess, FaultConfig, SimulatedAgent
from orchestrator.testing.postgres_server import PostgresServer, postgres_bin_dir
from orchestrator.testing.seed import flow_fits_vm
from orchestrator.testing.simulator_admin import SimulatorAdmin
from orchestrator.testing.simulator_protocol import FenceLogEntry
from tests.conftest import REPO, invariants_hold, serve_agent, wait_for
from tests.test_engines_shared import LEASE_TIMEOUT, engine_env, holders

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL server binaries are not installed")

POOLS = {"p1": 0.3, "p2": 0.6, "p3": 1.0}  # each pool's agent server, and how long its tasks take
ENGINES = 3
CHAOS_SECONDS = 45.0
MAX_ACTIONS = 60
FREEZE_SECONDS = (float(LEASE_TIMEOUT) + 0.5, float(LEASE_TIMEOUT) + 2.5)  # longer than the lease timeout
WAVE_EVERY = (1.0, 2.5)  # seconds between waves of new commands
DRAIN_SECONDS = 60.0
FLOWS = ("RemoveVm", "HibernateVm", "CreateSnapshot", "CreateTemplate")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def served() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


# ---- the engines ------------------------------------------------------------------------------------


@dataclass
class EngineSlot:
    """One of the three engines: its process of the moment, restarted after each SIGKILL."""

    number: int
    store: str
    agent_state: Path
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    frozen_until: float | None = None  # monotonic
    restart_at: float | None = None  # monotonic, after a SIGKILL
    unexpected_exits: list[str] = field(default_factory=list)
    refused_starts: int = 0  # starts that met a store error (exit 3)
    _log: IO[bytes] | None = None

    @property
    def log_paths(self) -> list[Path]:
        return sorted(self.logs.glob(f"engine-{self.number}-*.log"))

    def start(self) -> None:
        self.starts += 1
        self._log = (self.logs / f"engine-{self.number}-{self.starts:02d}.log").open("wb")
        argv = [sys.executable, "-m", "orchestrator", "--store", self.store, "--agent-state", str(self.agent_state)]
        self.proc = subprocess.Popen(
            [*argv, "run"], cwd=REPO, env=engine_env(), stdout=subprocess.DEVNULL, stderr=self._log
        )
        self.restart_at = None

    def up(self) -> bool:
        """Started and through its recovery (or standing by): it has its signal handlers."""
        self.check()
        return self.running and "recovered" in self.log_paths[-1].read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """An engine that exited without being told to is a problem, unless it was starting while the
        database was down (exit 3, "cannot connect": an engine needs its store to start). Either way
        it is started again."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        self._closed()
        text = self.log_paths[-1].read_text(errors="replace")
        last = (text.strip().splitlines() or [""])[-1]
        if code == 3 and ("cannot connect" in last or "recovered" not in text):
            # A store error while starting ends `run` with exit 3 (docs/leases.md, "Store outages": for a
            # supervisor to retry): the database down, or the lease connection cut, during the start-up.
            self.refused_starts += 1
        else:
            self.unexpected_exits.append(f"engine {self.number} start {self.starts} exited with {code}: {last}")
        self.start()

    def kill(self, restart_in: float) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._closed()
        self.frozen_until = None
        self.restart_at = time.monotonic() + restart_in

    def freeze(self, seconds: float) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen_until = time.monotonic() + seconds

    def wake(self) -> None:
        if self.proc is not None and self.frozen_until is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen_until = None

    def stop(self) -> int | None:
        """SIGCONT, SIGTERM, and the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        self.wake()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._closed()
        return code

    def _closed(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


# ---- the user: waves of commands ----------------------------------------------------------------------


@dataclass
class Waves:
    """New commands of every flow in each pool, a fresh Orchestrator per wave; what was accepted."""

    store: str
    agent_state: Path
    rng: random.Random
    vms: dict[str, str] = field(default_factory=dict)  # vm id -> pool
    accepted: list[UUID] = field(default_factory=list)
    uncertain: list[UUID] = field(default_factory=list)  # a store error came back: accepted or not
    flows: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    store_errors: int = 0
    waves: int = 0
    templates: int = 0
    slowest_wave: float = 0.0

    def seed(self, orch: Orchestrator, pool: str, vms: int) -> None:
        for disks in (1, 2, 3):
            for vm in orch.seed(max(1, vms // 3), disks, pool=pool).vms:
                self.vms[vm.vm_id] = pool

    def params(self, flow: str, vm_id: str) -> dict[str, Any]:
        if flow == "CreateTemplate":
            self.templates += 1
            return {"vm_id": vm_id, "name": f"chaos-{self.templates}"}
        if flow == "CreateSnapshot":
            return {"vm_id": vm_id, "description": f"chaos wave {self.waves}"}
        return {"vm_id": vm_id}

    def wave(self) -> None:
        """A few commands per pool; refusals (locks) are counted, store errors end the wave."""
        self.waves += 1
        started = time.monotonic()
        try:
            with Orchestrator.open(self.store, agent_state=self.agent_state, create=False) as orch:
                for pool in POOLS:
                    self._pool_wave(orch, pool)
        except CommandRefusedError:
            self.refused += 1
        except OrchestratorError:  # the database restarting: StoreError and the like
            self.store_errors += 1
        finally:
            self.slowest_wave = max(self.slowest_wave, time.monotonic() - started)

    def _pool_wave(self, orch: Orchestrator, pool: str) -> None:
        free: list[Vm] = []
        for vm_id in sorted(v for v, p in self.vms.items() if p == pool):
            vm = orch.entity(EntityRef(EntityType.VM, vm_id))
            if isinstance(vm, Vm) and not vm.removed and not vm.locks and vm.disk_ids:
                free.append(vm)
        if sum(1 for vm in free if vm.status == "up") < 3:
            self.seed(orch, pool, 6)
            return
        self.rng.shuffle(free)
        for _ in range(self.rng.randint(1, 3)):
            flow = self.rng.choice(FLOWS)
            vm = next((v for v in free if flow_fits_vm(flow, v)), None)
            if vm is None:
                continue
            free.remove(vm)
            self.submit(orch, flow, vm.entity_id)
        if self.rng.random() < 0.3:  # now and then a conflict, refused by the locks (or a parallel template)
            busy = [v for v, p in self.vms.items() if p == pool and v not in {f.entity_id for f in free}]
            if busy:
                self.submit(orch, self.rng.choice(FLOWS), self.rng.choice(sorted(busy)))

    def submit(self, orch: Orchestrator, flow: str, vm_id: str) -> None:
        command_id = uuid.uuid4()
        try:
            orch.submit(flow, self.params(flow, vm_id), command_id=command_id)
        except CommandRefusedError:
            self.refused += 1
            return
        except OrchestratorError:
            self.uncertain.append(command_id)
            raise
        self.accepted.append(command_id)
        self.flows[flow] = self.flows.get(flow, 0) + 1

    def settle(self, orch: Orchestrator) -> None:
        """Each submit that failed on a store error either recorded its command or did not: find out."""
        for command_id in self.uncertain:
            try:
                orch.command(command_id)
            except NotFoundError:
                continue
            self.accepted.append(command_id)
        self.uncertain = []


# ---- the evidence ----------------------------------------------------------------------------------------


Write = tuple[str, int, int]  # engine, epoch, position in the log


def writes_by_pool(orch: Orchestrator) -> tuple[dict[str, list[Write]], list[str]]:
    """Every event written under a lease, per pool, in the log's order; and the events that could not
    be put in a pool.

    A command's events name its pool. An engine saves the inventory events of a transaction after its
    commands' (one transaction, numbered in one run of the log: the recorder locks the table), so an
    inventory event belongs to the pool of the command event just before it, of the same writer."""
    pools: dict[UUID | str, str] = {}
    out: dict[str, list[Write]] = {}
    unplaced: list[str] = []
    last: tuple[dict[str, Any], str] | None = None  # the last command event's writer, and its pool
    for page in orch.store.notifications(after=0):
        for n in page:
            event = orch.store.app.mapper.to_domain_event(n)
            writer = writer_of(event)
            epoch, engine = writer.get("epoch"), writer.get("engine")
            if n.originator_id not in pools and n.topic.startswith(RootCommand.__module__ + ":RootCommand"):
                pools[n.originator_id] = orch.command(n.originator_id).pool_id
            pool = pools.get(n.originator_id)
            if pool is not None:
                last = (writer, pool)
            elif last is not None and last[0] == writer:
                pool = last[1]
            if not isinstance(epoch, int) or epoch <= 0 or not isinstance(engine, str):
                continue  # not written under a lease (an accept, a seed)
            if pool is None:
                unplaced.append(f"notification {n.id} ({n.topic.rsplit(':', 1)[-1]}) by {engine} at epoch {epoch}")
                continue
            out.setdefault(pool, []).append((engine, epoch, int(n.id)))
    return out, unplaced


def log_order_problems(writes: dict[str, list[Write]]) -> list[str]:
    """Per pool: no write at an epoch below one already written; each epoch one engine's."""
    problems = []
    for pool, found in sorted(writes.items()):
        highest, engine_of = 0, dict[int, str]()
        for engine, epoch, position in found:
            if epoch < highest:
                problems.append(f"pool {pool}: {engine} wrote at epoch {epoch} (#{position}) after epoch {highest}")
            first = engine_of.setdefault(epoch, engine)
            if first != engine:
                problems.append(f"pool {pool}: epoch {epoch} written by {first} and {engine} (#{position})")
            highest = max(highest, epoch)
    return problems


def fence_log_problems(pool: str, entries: list[FenceLogEntry]) -> list[str]:
    """No call admitted from an epoch after the agent first admitted a higher one; each epoch one engine."""
    problems = []
    highest, engine_of = 0, dict[int, str]()
    for n, e in enumerate(entries):
        if not e.admitted:
            continue
        if e.epoch < highest:
            problems.append(f"agent of {pool}: {e.method} of {e.engine_id} admitted at epoch {e.epoch} after {highest}")
        first = engine_of.setdefault(e.epoch, e.engine_id)
        if first != e.engine_id:
            problems.append(f"agent of {pool}: epoch {e.epoch} admitted for {first} and {e.engine_id} (entry {n})")
        highest = max(highest, e.epoch)
    return problems


def tails(slots: list[EngineSlot], lines: int = 15) -> str:
    out = []
    for slot in slots:
        for path in slot.log_paths[-2:]:
            text = path.read_text(errors="replace").strip().splitlines()
            out.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
    return "\n".join(out)


# ---- the agent's evidence, on its own -----------------------------------------------------------------


def test_the_agent_logs_every_fenced_call_it_admits_and_refuses(tmp_path: Path, served: list[AgentProcess]) -> None:
    agent = serve_agent(tmp_path / "p1.agent", "p1", tmp_path)
    served.append(agent)
    before = time.time()
    old = HttpAgent(agent.url, expected_pool="p1", fence=Fence(engine_id="engine-a", epoch=1))
    new = HttpAgent(agent.url, expected_pool="p1")
    try:
        old.clear_tasks(["nothing"])
        old.stop_tasks(["nothing"])
        new.announce(Fence(engine_id="engine-b", epoch=2))
        with pytest.raises(StaleEpochError):
            old.clear_tasks(["nothing"])
        new.fence = None
        new.clear_tasks(["nothing"])  # unfenced: not a fenced call, not logged
    finally:
        old.close()
        new.close()
    with SimulatorAdmin(agent.url) as admin:
        log = admin.fence_log()
    assert [(e.method, e.engine_id, e.epoch, e.admitted) for e in log] == [
        ("Tasks.clear", "engine-a", 1, True),
        ("Tasks.stop", "engine-a", 1, True),
        ("Tasks.clear", "engine-b", 2, True),
        ("Tasks.clear", "engine-a", 1, False),
    ]
    assert before <= log[0].at <= log[-1].at <= time.time()
    assert fence_log_problems("p1", log) == []
    assert fence_log_problems("p1", [*log, log[0]]) != []  # the check does catch a late admission


# ---- a bug the chaos found ------------------------------------------------------------------------------


def log_of(slot: EngineSlot) -> str:
    return slot.log_paths[-1].read_text(errors="replace") if slot.log_paths else ""


def test_an_engine_that_loses_its_lease_during_its_start_up_recovery_stands_by(
    server: PostgresServer, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    """The chaos found it: an engine starts and takes pools with commands in flight; while its
    start-up recovery waits for their agents, its lease connection is cut. The recovery's next agent
    call finds the lease no longer trusted: the engine must stand by and take the pool again, as it
    does for a lease lost once it runs, not end (exit 12 is for --exit-on-lease-loss only)."""
    store = f"{server.url}?schema=startup_{uuid.uuid4().hex[:12]}"
    agent = serve_agent(tmp_path / "p1.agent", "p1", tmp_path, 1.0)
    served.append(agent)
    with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
        add_pool(orch, "p1", agent.url)
        (vm,) = orch.seed(1, 2, pool="p1").vms
    logs = tmp_path / "logs"
    logs.mkdir()
    first, second = EngineSlot(1, store, agent_state, logs), EngineSlot(2, store, agent_state, logs)
    default_agent = SimulatedAgent.open(agent_state)  # the default pool's, in process: its faults in its file
    admin = SimulatorAdmin(agent.url)
    try:
        first.start()
        with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
            command_id = orch.submit("RemoveVm", {"vm_id": vm.vm_id}).command_id
            wait_for(
                lambda: all(t.agent_task_id for t in orch.command(command_id).tasks.values()),
                timeout=30,
                what="both tasks on the agent",
            )
        first.kill(restart_in=3600)  # dead for good: its pools are the next engine's at once
        outage = FaultConfig(unreachable_until=time.time() + 60)  # every agent down: recovery waits for them
        admin.set_faults(outage)
        default_agent.backend.set_faults(outage)
        second.start()
        wait_for(lambda: log_of(second).count("took the lease of pool") == 2, timeout=30, what="its two takes")
        assert server.terminate_backends("orchestrator-lease") >= 1  # its lease connection cut meanwhile
        wait_for(
            lambda: not second.running or "lost the lease of pool p1" in log_of(second),
            timeout=30,
            what="the lease loss to be noticed",
        )
        admin.set_faults(FaultConfig())
        default_agent.backend.set_faults(FaultConfig())
        with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
            wait_for(
                lambda: not second.running or orch.command(command_id).ended,
                timeout=60,
                what="the command to end (or the engine to exit)",
            )
        code = second.proc.poll() if second.proc is not None else None
        assert second.running, f"the engine exited with {code}:\n{log_of(second)[-3000:]}"
    finally:
        admin.close()
        default_agent.close()
        first.stop()
        second.stop()


# ---- the chaos -----------------------------------------------------------------------------------------


@dataclass
class Chaos:
    rng: random.Random
    server: PostgresServer
    slots: list[EngineSlot]
    counts: dict[str, int] = field(default_factory=dict)
    restarted_db: bool = False
    restarting: threading.Thread | None = None

    def count(self, action: str) -> None:
        self.counts[action] = self.counts.get(action, 0) + 1

    def tend(self) -> None:
        """Wake engines whose freeze is over, start those killed a moment ago, notice unexpected exits."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.frozen_until is not None and now >= slot.frozen_until:
                slot.wake()
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                slot.start()
            if slot.frozen_until is None:
                slot.check()

    def act(self, elapsed: float) -> None:
        running = [s for s in self.slots if s.running and s.frozen_until is None]
        if self.restarting is not None:
            if self.restarting.is_alive():
                return  # no other chaos while the database is down
            self.restarting.join()
            self.restarting = None
        if not self.restarted_db and elapsed > CHAOS_SECONDS * 0.4:
            # In a thread of its own: waves of commands go on meeting the database down.
            self.count("database restart")
            self.restarted_db = True
            down = self.rng.uniform(1.0, 3.0)
            self.restarting = threading.Thread(target=self.server.restart, args=(down,), daemon=True)
            self.restarting.start()
            return
        action = self.rng.choice(["kill", "kill", "freeze", "freeze", "cut", "cut"])
        if action != "cut" and len(running) < 2:
            action = "cut"  # keep at least one engine able to act
        if action == "kill":
            self.rng.choice(running).kill(restart_in=self.rng.uniform(0.0, 1.5))
        elif action == "freeze":
            self.rng.choice(running).freeze(self.rng.uniform(*FREEZE_SECONDS))
        else:
            self.server.terminate_backends("orchestrator-lease")
        self.count(action)


def test_three_engines_under_random_kills_freezes_cuts_and_a_database_restart_never_split_brain(
    server: PostgresServer, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    seed = int(os.environ.get("ORCHESTRATOR_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"chaos seed {seed} (rerun with ORCHESTRATOR_CHAOS_SEED={seed})")
    said = f"chaos seed {seed}"
    rng = random.Random(seed)
    store = f"{server.url}?schema=chaos_{uuid.uuid4().hex[:12]}"
    agents = {pool: serve_agent(tmp_path / f"{pool}.agent", pool, tmp_path, seconds) for pool, seconds in POOLS.items()}
    served.extend(agents.values())
    waves = Waves(store, agent_state, rng)
    with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
        for pool, agent in agents.items():
            add_pool(orch, pool, agent.url)
            waves.seed(orch, pool, 12)
    logs = tmp_path / "logs"
    logs.mkdir()
    slots = [EngineSlot(n, store, agent_state, logs) for n in range(1, ENGINES + 1)]
    chaos = Chaos(rng, server, slots)
    phases: dict[str, float] = {}
    try:
        for slot in slots:
            slot.start()
        wait_for(
            lambda: all(holders(store, agent_state).get(p, (None, 0))[0] for p in POOLS),
            timeout=30,
            what="every pool to be held",
        )
        started = time.monotonic()
        next_wave = next_action = started
        actions = 0
        while (elapsed := time.monotonic() - started) < CHAOS_SECONDS:
            chaos.tend()
            now = time.monotonic()
            if now >= next_wave:
                waves.wave()
                next_wave = time.monotonic() + rng.uniform(*WAVE_EVERY)
            if now >= next_action and actions < MAX_ACTIONS and elapsed > 2.0:
                chaos.act(elapsed)
                actions += 1
                next_action = time.monotonic() + rng.uniform(0.5, 2.0)
            time.sleep(0.05)
        phases["chaos"] = time.monotonic() - started
        # The end: everything awake and running, no more chaos; the engines finish every command.
        if chaos.restarting is not None:
            chaos.restarting.join(timeout=120)
        for slot in slots:
            slot.wake()
            if slot.proc is None:
                slot.start()
        wait_for(lambda: all(s.up() for s in slots), timeout=60, interval=0.1, what=f"every engine up ({said})")
        with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
            waves.settle(orch)

            def every_command_ended() -> bool:
                for slot in slots:
                    slot.check()
                return all(orch.command(c).ended for c in waves.accepted) and not orch.store.in_flight_ids()

            wait_for(every_command_ended, timeout=DRAIN_SECONDS, interval=0.2, what=f"every command to end ({said})")
        phases["drain"] = time.monotonic() - started - phases["chaos"]
    finally:
        codes = [slot.stop() for slot in slots]
    report = f"{said}; chaos {chaos.counts}; waves {waves.waves}, flows {waves.flows}, refused {waves.refused}, "
    report += f"store errors {waves.store_errors}; starts ended by a store error (exit 3) "
    report += f"{sum(s.refused_starts for s in slots)}; seconds: "
    report += ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + f", slowest wave {waves.slowest_wave:.1f}"
    print(report)
    problems = [e for slot in slots for e in slot.unexpected_exits]
    problems += [f"engine {s.number} ended with {c} on SIGTERM" for s, c in zip(slots, codes, strict=True) if c != 0]
    for slot in slots:
        for path in slot.log_paths:
            if "Traceback" in path.read_text(errors="replace"):
                problems.append(f"traceback in {path.name}")
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + tails(slots)
    # The chaos did happen, and so did takeovers.
    assert {"kill", "freeze", "cut", "database restart"} <= set(chaos.counts), report
    assert set(waves.flows) == set(FLOWS) and len(waves.accepted) >= 20, report

    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state, expected_commands=waves.accepted)
        writes, unplaced = writes_by_pool(orch)
        # A command that uses no storage domain runs in the default pool: a RemoveVm of a VM whose
        # disks a failed removal took already (the waves' conflicts pick such VMs now and then).
        strays = [
            f"{c.id} {c.flow} {c.summary!r}"
            for c in (orch.command(i) for i in waves.accepted)
            if c.pool_id not in POOLS
            and (c.pool_id != DEFAULT_POOL or any(e.ref.type is EntityType.STORAGE_DOMAIN for e in c.entities))
        ]
    assert unplaced == [], f"{report}: events written under a lease that belong to no pool: {unplaced[:5]}"
    assert strays == [], f"{report}: commands in a pool they do not belong to: {strays[:5]}"
    assert set(POOLS) <= set(writes) <= {*POOLS, DEFAULT_POOL}, report
    assert log_order_problems(writes) == [], report
    assert max(epoch for found in writes.values() for _, epoch, _ in found) >= 3, f"{report}: no takeover wrote"
    for pool, agent in agents.items():
        with SimulatorAdmin(agent.url) as admin:
            entries = admin.fence_log()
        refused = sum(1 for e in entries if not e.admitted)
        print(
            f"{pool}: epochs up to {max(e.epoch for e in entries)}, {len(entries) - refused} fenced calls admitted, "
            f"{refused} refused as stale"
        )
        assert entries and fence_log_problems(pool, entries) == [], report
        # The agent's epochs are the store's: an epoch the agent admitted is the same engine's in both.
        in_store = {epoch: engine for engine, epoch, _ in writes[pool]}
        mismatched = [e for e in entries if e.admitted and in_store.get(e.epoch, e.engine_id) != e.engine_id]
        assert mismatched == [], f"{report}: agent of {pool} and the store disagree on {mismatched[:3]}"
