"""One poll cycle at scale: many agents, each with many running tasks, all in flight in one engine.

Set-up (not timed): one process hosts the agents (scripts/bench_fleet_host.py,
agent i for pool fleet-i at its own path); a second process registers the pools,
seeds each pool's VMs (4 disks each) and accepts one RemoveVm per VM. Then this
process, which does nothing else, runs the engine: it recovers, submits every
task (they run for days on the agents), and is measured:

- idle: one `TaskManager.cycle()` in which nothing changed: one status call
  per agent, all agents at once, and no store write;
- busy: one cycle right after 10% of the tasks (chosen at random on every agent)
  were made to end;
- the engine process's resident memory once every task is in flight, and at its peak.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from orchestrator import Orchestrator, SubmitResult, TaskManager, load_engine_settings
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.pools import add_pool
from orchestrator.testing import SimulatedAgentBackend
from scripts.bench_fleet_host import agent_path, pool_of, state_of
from scripts.bench_numbers import Stopwatch, median
from scripts.bench_plan import DISKS_PER_VM, SectionRun

HOST_START_SECONDS = 120.0
BUSY_SHARE = 0.10


@contextmanager
def agent_host(directory: Path, agents: int) -> Iterator[str]:
    """The agents' process, for as long as the block runs; yields the base URL."""
    url_file = directory / "fleet.url"
    argv = [sys.executable, "-m", "scripts.bench_fleet_host", "--dir", str(directory)]
    argv += ["--agents", str(agents), "--url-file", str(url_file)]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(argv, cwd=repo, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + HOST_START_SECONDS
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fleet's agent host did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield url_file.read_text().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prepare(store_url: str, agent_state: str, base_url: str, agents: int, vms_per_agent: int) -> None:
    """In a process of its own: the pools, their inventory and one RemoveVm per VM, accepted."""
    with Orchestrator.open(store_url, agent_state=Path(agent_state), create=True) as orch:
        for n in range(agents):
            add_pool(orch, pool_of(n), f"{base_url}{agent_path(n)}/rpc")
        known: set[EntityRef] = set()  # the last VM seeded: the next pool's are numbered after it
        for n in range(agents):
            seeded = orch.seed(vms_per_agent, DISKS_PER_VM, pool=pool_of(n), existing=known)
            known = {EntityRef(EntityType.VM, seeded.vms[-1].vm_id)}
            for result in orch.submit_many([("RemoveVm", {"vm_id": vm.vm_id}) for vm in seeded.vms]):
                if not isinstance(result, SubmitResult):
                    raise RuntimeError(f"a fleet command was refused: {result}")


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def submit_everything(engine: TaskManager, tasks: int) -> tuple[float, int]:
    """Cycles until every task runs on its agent: (seconds, cycles)."""
    watch = Stopwatch()
    submitted = cycles = 0
    while submitted < tasks:
        report = engine.cycle()
        submitted += report.submitted
        cycles += 1
        if cycles > 1000:
            raise RuntimeError(f"only {submitted:,} of {tasks:,} tasks submitted after {cycles} cycles")
    return watch.seconds, cycles


def timed_cycle(engine: TaskManager) -> dict[str, Any]:
    watch = Stopwatch()
    report = engine.cycle()
    return {
        "seconds": watch.seconds,
        "agent_calls": report.agent_calls,
        "store_transactions": report.store_transactions,
        "tasks_ended": report.tasks_ended,
        "commands_ended": report.commands_ended,
        "agent_trouble": report.agent_trouble,
    }


def hurry(directory: Path, agents: int, share: float) -> int:
    """End `share` of the running tasks of every agent (through its state file, beside its server)."""
    ended = 0
    for n in range(agents):
        backend = SimulatedAgentBackend(state_of(directory, n), task_seconds=1e6)
        try:
            ended += backend.hurry(share)
        finally:
            backend.close()
    return ended


def run_fleet(run: SectionRun) -> dict[str, Any]:
    agents, per_agent = run.sizes.fleet_agents, run.sizes.fleet_tasks_per_agent
    tasks = agents * per_agent
    store = run.scratch.store(run.backend, "fleet")
    directory = run.scratch.root / store.label
    directory.mkdir()
    setup: dict[str, float] = {}
    with ExitStack() as cleanup:
        cleanup.callback(run.scratch.drop, store)
        base_url = cleanup.enter_context(agent_host(directory, agents))
        watch = Stopwatch()
        agent_state = str(directory / "default.agent")
        args = (store.url, agent_state, base_url, agents, per_agent // DISKS_PER_VM)
        child = multiprocessing.get_context("spawn").Process(target=prepare, args=args)
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the fleet's set-up failed (exit {child.exitcode})")
        setup["seed_and_accept_seconds"] = watch.seconds
        run.say(f"fleet: {agents} agents, {tasks:,} tasks accepted in {watch.seconds:.0f} s")
        orch = Orchestrator.open(store.url, agent_state=Path(agent_state), create=False)
        cleanup.callback(orch.close)
        setup["rss_before_engine_mib"] = rss_mib()
        pool_agents = orch.agents(timeout=120)
        cleanup.callback(pool_agents.close)
        engine = orch.engine(pool_agents, load_engine_settings(poll_interval=0.01, submit_batch=1000))
        watch = Stopwatch()
        engine.recover()
        setup["recover_seconds"] = watch.seconds
        setup["submit_seconds"], setup["submit_cycles"] = submit_everything(engine, tasks)
        run.say(f"fleet: every task running after {setup['submit_seconds']:.0f} s")
        gc.collect()
        rss_in_flight = rss_mib()
        idle = [timed_cycle(engine) for _ in range(max(3, run.runs))]
        busy = []
        for _ in range(run.runs):
            hurried = hurry(directory, agents, BUSY_SHARE)
            busy.append({**timed_cycle(engine), "hurried": hurried})
            run.say(f"fleet: busy cycle {busy[-1]['seconds']:.2f} s ({busy[-1]['tasks_ended']:,} tasks ended)")
            while engine.cycle().progressed:  # what the busy cycle left (end actions, clears) before the next
                pass
        return {
            "agents": agents,
            "tasks_per_agent": per_agent,
            "tasks_in_flight": tasks,
            "idle_seconds": median([c["seconds"] for c in idle]),
            "busy_seconds": median([c["seconds"] for c in busy]),
            "idle": idle,
            "busy": busy,
            "rss_in_flight_mib": rss_in_flight,
            "peak_rss_mib": peak_rss_mib(),
            "setup": setup,
            "pid": os.getpid(),
        }


def run_section(run: SectionRun) -> dict[str, Any]:
    return run_fleet(run)
