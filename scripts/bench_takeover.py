"""Takeover time: from an engine's death (SIGKILL) or freeze (SIGSTOP) to the standby's first `Recovered`.

PostgreSQL only (SQLite runs one engine at a time). Two engine processes (`orchestrator run`) on one
store, with default settings but the lease timeout of the row: engine A pinned to pool p1 (`--pools
p1`), whose agent is a server process of its own; engine B unpinned, holding the default pool and
standing by for p1 (reserved for A while A lives). Each trial accepts one RemoveVm of 4 disks in p1
and waits until A has its tasks running on the agent; then A is SIGKILLed or SIGSTOPped. The clock
runs from the signal (this host's wall clock, read just before sending it) to the timestamp of the
first `Recovered` event that B writes for that command (stamped by B, on the same host's clock);
"to lease" is B's `acquired_at` of p1 (the database's clock, on the same host). A killed engine's
liveness lock goes with its process, so B takes over at its next rebalance; a frozen one still
holds its lock, so B waits for the lease to expire (the lease timeout after A's last renewal, made
every third of it). After each trial A is started again (killed) or woken (SIGCONT: it stands by,
then takes its pinned pool back), and the trial's command ends before the next trial begins.

The engine processes and agent servers here are shared with scripts/bench_engines.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from eventsourcing.utils import get_topic

from orchestrator import DEFAULT_POOL, Orchestrator
from orchestrator.domain.commands import RootCommand
from orchestrator.pools import add_pool
from orchestrator.store import writer_of
from orchestrator.store.leases import LeaseSnapshot
from orchestrator.testing import AgentProcess
from scripts.bench_numbers import median
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_results import REPO
from scripts.bench_stores import Scratch, Store

POSTGRES_ONLY = "PostgreSQL only: on SQLite one engine runs at a time (another stands by on the file lock)"
TASK_SECONDS = 1.0  # each trial's tasks: running at the signal, soon ended after the takeover
DEFAULT_LEASE_TIMEOUT = 10.0  # ORCHESTRATOR_LEASE_TIMEOUT's default
ROWS = (("kill", DEFAULT_LEASE_TIMEOUT), ("freeze", DEFAULT_LEASE_TIMEOUT), ("freeze", 2.0))
RECOVERED_TOPIC = get_topic(RootCommand.Recovered)


# ---- engine processes and agent servers (scripts/bench_engines.py uses them too) -------------------


def engine_env(**settings: str) -> dict[str, str]:
    """This environment without any ORCHESTRATOR_ setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update({f"ORCHESTRATOR_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class EngineProcess:
    """`orchestrator run` in a process of its own; its stderr goes to a log file per start."""

    store: str
    agent_state: Path
    log_dir: Path
    name: str
    args: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts:03d}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> EngineProcess:
        self.close_log()
        self.starts += 1
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "orchestrator", "--store", self.store, "--agent-state", str(self.agent_state)]
        self.proc = subprocess.Popen(
            [*argv, "run", *self.args],
            cwd=REPO,
            env=engine_env(**self.settings),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        return self

    def signal(self, sig: signal.Signals) -> float:
        """Send a signal; the wall-clock time just before it went."""
        at = time.time()
        os.kill(self.pid, sig)
        return at

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> int | None:
        """SIGCONT then SIGTERM (a graceful end), or SIGKILL after a minute; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self.close_log()
        return code

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def last_lines(self, n: int = 5) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines() if self.log_path.exists() else []
        return " | ".join(lines[-n:])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    """Wait on a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def lease_snapshot(orch: Orchestrator) -> LeaseSnapshot:
    table = orch.store.dialect.leases()
    try:
        return table.snapshot()
    finally:
        table.close()


def holder_pids(orch: Orchestrator) -> dict[str, int | None]:
    """Each pool's holder, by the pid of its engine process (None: nobody holds it)."""
    snapshot = lease_snapshot(orch)
    pid_of = {e.engine_id: e.pid for e in snapshot.engines}
    out: dict[str, int | None] = {}
    for row in snapshot.leases:
        holder = snapshot.holder(row.pool)
        out[row.pool] = pid_of.get(holder) if holder is not None else None
    return out


@dataclass
class Rig:
    """A store with pools, each with an agent server, for engine processes to share."""

    scratch: Scratch
    store: Store
    agent_state: Path
    log_dir: Path
    orch: Orchestrator
    agents: dict[str, AgentProcess]
    vms: dict[str, list[str]]  # pool -> VM ids seeded there, not used yet
    cleanup: ExitStack

    def engine(self, name: str, *args: str, **settings: str) -> EngineProcess:
        engine = EngineProcess(self.store.url, self.agent_state, self.log_dir, name, args, dict(settings))
        self.cleanup.callback(engine.stop)
        return engine


@contextmanager
def rig(
    scratch: Scratch, label: str, pools: dict[str, int], task_seconds: float, store: Store | None = None
) -> Iterator[Rig]:
    """A fresh PostgreSQL store (by default a scratch schema) with these pools (pool -> VMs of 4 disks to
    seed there), each pool with an agent server of its own; every engine started from it is stopped,
    and the store dropped, after."""
    with ExitStack() as cleanup:
        store = store or scratch.store("postgres", label)
        cleanup.callback(scratch.drop, store)
        log_dir = scratch.root / f"{store.label}-logs"
        log_dir.mkdir()
        agents: dict[str, AgentProcess] = {}
        for pool in pools:
            state = scratch.agent_path(f"{label}-{pool}")
            agent = AgentProcess(state, pool, task_seconds=task_seconds, url_file=state.with_name(state.name + ".url"))
            cleanup.callback(agent.kill)
            agents[pool] = agent.start()
        orch = Orchestrator.open(store.url, agent_state=scratch.agent_path(label), create=True)
        cleanup.callback(orch.close)
        vms: dict[str, list[str]] = {}
        for pool, count in pools.items():
            add_pool(orch, pool, agents[pool].url)
            vms[pool] = [vm.vm_id for vm in orch.seed(count, DISKS_PER_VM, pool=pool).vms]
        rigged = Rig(scratch, store, orch.agent_state, log_dir, orch, agents, vms, cleanup)
        yield rigged  # each engine started from it registered its stop


# ---- one takeover ---------------------------------------------------------------------------------------


@dataclass
class Trial:
    to_recovered: float  # seconds from the signal to the standby's first Recovered of the command
    to_lease: float  # seconds from the signal to the standby's acquired_at of the pool


def first_recovered(orch: Orchestrator, after: int, command_id: UUID, not_by: str) -> RootCommand.Recovered | None:
    for page in orch.store.notifications(after=after, topics=[RECOVERED_TOPIC]):
        for n in page:
            if n.originator_id != command_id:
                continue
            event = orch.store.app.mapper.to_domain_event(n)
            if isinstance(event, RootCommand.Recovered) and writer_of(event).get("engine") != not_by:
                return event
    return None


def takeover_trial(r: Rig, pinned: EngineProcess, kind: str) -> Trial:
    """One command in flight in p1 under the pinned engine; the engine killed or frozen; the takeover timed."""
    orch = r.orch
    vm = r.vms["p1"].pop()
    command_id = orch.submit("RemoveVm", {"vm_id": vm}).command_id
    wait_until(
        lambda: all(t.agent_task_id for t in orch.command(command_id).tasks.values()),
        timeout=60,
        what="the pinned engine to submit the command's tasks",
    )
    snapshot = lease_snapshot(orch)
    old = snapshot.holder("p1")
    assert old is not None and next(e.pid for e in snapshot.engines if e.engine_id == old) == pinned.pid
    head = orch.store.head()
    at = pinned.signal(signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
    found: list[RootCommand.Recovered] = []

    def recovered() -> bool:
        event = first_recovered(orch, head, command_id, old)
        if event is not None:
            found.append(event)
        return bool(found)

    wait_until(recovered, timeout=120, what="the standby's Recovered event")
    lease = next(row for row in lease_snapshot(orch).leases if row.pool == "p1")
    trial = Trial(found[0].timestamp.timestamp() - at, lease.acquired_at - at)
    # Back as before: the pinned engine (restarted, or woken) holds p1 again, and the command has ended.
    if kind == "kill":
        pinned.kill()
        pinned.start()
    else:
        pinned.signal(signal.SIGCONT)
    wait_until(
        lambda: holder_pids(orch).get("p1") == pinned.pid and orch.command(command_id).ended,
        timeout=120,
        what="the pinned engine to hold p1 again and the command to end",
        interval=0.05,
    )
    return trial


def takeover_row(run: SectionRun, kind: str, lease_timeout: float, trials: int) -> dict[str, Any]:
    with rig(run.scratch, f"takeover-{kind}", {"p1": trials + 1}, TASK_SECONDS) as r:
        timeout = f"{lease_timeout:g}"
        pinned = r.engine("pinned", "--pools", "p1", lease_timeout=timeout).start()
        wait_until(lambda: holder_pids(r.orch).get("p1") == pinned.pid, 60, "the pinned engine to take p1", 0.05)
        standby = r.engine("standby", lease_timeout=timeout).start()
        wait_until(lambda: holder_pids(r.orch).get(DEFAULT_POOL) == standby.pid, 60, "the standby's pool", 0.05)
        done: list[Trial] = []
        for n in range(1, trials + 1):
            try:
                done.append(takeover_trial(r, pinned, kind))
            except RuntimeError as exc:
                raise RuntimeError(
                    f"{exc}; pinned engine: {pinned.last_lines()}; standby: {standby.last_lines()}"
                ) from None
            if n in (1, trials) or n % 5 == 0:
                run.say(f"takeover after {kind} (lease {timeout}s), trial {n}: {done[-1].to_recovered:.2f}s")
        exits = {"pinned": pinned.stop(), "standby": standby.stop()}
    seconds = [t.to_recovered for t in done]
    return {
        "kind": kind,
        "lease_timeout": lease_timeout,
        "trials": trials,
        "median_seconds": median(seconds),
        "worst_seconds": max(seconds),
        "best_seconds": min(seconds),
        "median_to_lease_seconds": median([t.to_lease for t in done]),
        "runs": seconds,
        "engine_exits": exits,
    }


def run_section(run: SectionRun) -> dict[str, Any]:
    if run.backend != "postgres":
        run.say(f"takeover: skipped ({POSTGRES_ONLY})")
        return {"skipped": POSTGRES_ONLY}
    rows = [takeover_row(run, kind, timeout, run.sizes.takeover_trials) for kind, timeout in ROWS]
    return {
        "rows": rows,
        "task_seconds": TASK_SECONDS,
        "settings": "engine defaults (poll interval 2 s, heartbeat every lease timeout / 3) but the lease timeout",
    }
