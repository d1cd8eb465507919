"""`demo`: the main job, start to finish, on real files and real processes.

1. Start a simulated agent server for each of two storage pools (east, west),
   processes of their own on loopback, register the pools, seed both.
2. Run the four flows (RemoveVm, HibernateVm, CreateTemplate, CreateSnapshot)
   across both pools on an in-process engine talking to the agents over HTTP;
   afterwards no task is active and no agent holds one.
3. Submit a RemoveVm of a 4-disk VM (east), start a real engine subprocess, and
   SIGKILL it once exactly 2 of the 4 tasks were submitted (the seed's
   example). The engine is set, like the reference engine, to create one task
   per agent call, and the agent is slowed so the kill lands in the third call.
4. Ask the read-only inspection what recovery will decide, restart the engine
   (another subprocess) until idle, and show what recovery decided.
5. SIGKILL west's agent server, submit a command in each pool, and run an
   engine subprocess: east's command ends while west's agent is down (its
   command waits, decided nothing); bring the agent back and west's ends too.
6. Check every invariant (docs/invariants.md) against every pool's agent.
   Exit 0 only if all hold.

The store is `--store`, else ORCHESTRATOR_STORE, else a fresh SQLite file in a
new directory. Its URL reaches the engine processes through their environment,
never their command line (where `ps` would show a password), and is printed
redacted. With --json the tables go to stderr and a DemoReport to stdout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.bootstrap import Orchestrator, build_engine, inspect
from orchestrator.cli.context import G, JsonOpt, console_width, print_json
from orchestrator.cli.render import plain, styled
from orchestrator.cli.terminal import printable
from orchestrator.config import load_engine_settings
from orchestrator.domain.inventory import Disk, Vm
from orchestrator.domain.model import CommandStatus, EntityRef, EntityType
from orchestrator.engine.report import CycleReport
from orchestrator.pools import add_pool
from orchestrator.service import SubmitResult
from orchestrator.store import STORE_ENV_VAR, parse_store_url
from orchestrator.testing import AgentProcess, FaultConfig, InvariantResult, check_invariants
from orchestrator.testing.seed import SeededVm
from orchestrator.testing.simulator_control import SimulatorControl

POOLS = ("east", "west")
OUTAGE_POOL = "west"  # whose agent server is SIGKILLed for a while
app = typer.Typer()


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="keep the demo directory afterwards")] = True,
    as_json: JsonOpt = False,
) -> None:
    """The main job: two pools with agent servers, four flows, a SIGKILLed engine mid-RemoveVm,
    recovery, a SIGKILLed agent server, every invariant.

    Uses --store (or ORCHESTRATOR_STORE) if given, else a fresh SQLite file. Exit codes: 0 every
    invariant holds; 1 one does not.
    """
    from orchestrator.documents import DemoReport

    store = G.store or os.environ.get(STORE_ENV_VAR) or None
    console = Console(highlight=False, width=console_width(), stderr=as_json)
    report: dict[str, object] = {}
    ok = run_demo(store, console=console, keep=keep, report=report)
    if as_json:
        print_json(DemoReport(ok=ok, store=str(report["store"]), directory=str(report["directory"]), kept=keep))
    if not ok:
        raise typer.Exit(1)


@dataclass
class Outcome:
    """What one step showed, and whether it showed what it should."""

    ok: bool
    detail: str


@dataclass
class Scene:
    """The demo's store, its two pools' agent servers and what was seeded in each."""

    orch: Orchestrator
    store: str
    workdir: Path
    agents: dict[str, AgentProcess]
    controls: dict[str, SimulatorControl]
    vms: dict[str, list[SeededVm]] = field(default_factory=dict)  # per pool, in seed order
    expected: list[UUID] = field(default_factory=list)

    @property
    def engines(self) -> _Engines:
        return _Engines(self.store, self.workdir / "agent.db")


def run_demo(store: str | None, console: Console, keep: bool = True, report: dict[str, object] | None = None) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    store = store or f"sqlite:///{workdir / 'orchestrator.db'}"
    shown = parse_store_url(store).redacted
    if report is not None:
        report.update(store=shown, directory=str(workdir))
    console.print(
        Panel(
            f"store  {escape(shown)}\nfiles  {escape(str(workdir))}\n\ntwo storage pools, each with an agent server "
            "of its own; four flows across them, an engine SIGKILLed in the middle of a RemoveVm of a 4-disk VM, "
            "recovery, one pool's agent SIGKILLed for a while, and every invariant",
            title="orchestrator demo",
        )
    )
    with (
        Orchestrator.open(store, agent_state=workdir / "agent.db", create=True) as orch,
        _agent_servers(workdir) as agents,
    ):
        ok = _run(orch, store, workdir, agents, console)
    if not keep:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    console.print(f"files kept in {escape(str(workdir))}" if keep else "demo files removed")
    return ok


@contextmanager
def _agent_servers(workdir: Path) -> Iterator[dict[str, AgentProcess]]:
    """One simulated agent server per pool, a process of its own on loopback (killed at the end)."""
    agents: dict[str, AgentProcess] = {}
    try:
        for pool in POOLS:
            state, log = workdir / f"{pool}.agent.db", workdir / f"{pool}.agent.log"
            agents[pool] = AgentProcess(state, pool, task_seconds=0.5, log=log).start()
        yield agents
    finally:
        for agent in agents.values():
            agent.kill()


def _run(orch: Orchestrator, store: str, workdir: Path, agents: dict[str, AgentProcess], console: Console) -> bool:
    for pool, agent in agents.items():
        add_pool(orch, pool, agent.url)
    controls = {pool: orch.simulator(pool) for pool in POOLS}
    scene = Scene(orch, store, workdir, agents, controls)
    try:
        seed_demo_inventory(scene, console)
        four = run_four_flows(scene, console)
        crash = crash_mid_remove_vm(scene, console)
        outage = agent_outage(scene, console)
        results = check_invariants(orch, controls, expected_commands=scene.expected)
    finally:
        for control in controls.values():
            control.close()
    return show_invariants(results, [four, crash, outage], console)


def seed_demo_inventory(scene: Scene, console: Console) -> None:
    """east: a 4-disk VM, a 2-disk VM, the 4-disk crash victim, one more; west: three 2-disk VMs."""
    orch = scene.orch
    east = [*orch.seed(1, 4, pool="east").vms, *orch.seed(1, 2, pool="east").vms, *orch.seed(1, 4, pool="east").vms]
    east += orch.seed(1, 2, pool="east").vms
    west = list(orch.seed(3, 2, pool="west").vms)
    scene.vms = {"east": east, "west": west}
    for pool in POOLS:
        agent = scene.agents[pool]
        names = ", ".join(v.vm_id for v in scene.vms[pool])
        console.print(
            f"[bold]1. pool {pool}[/]: agent server pid {agent.proc.pid if agent.proc else '?'} at "
            f"{escape(agent.url)}; seeded {names}"
        )


def _vm(orch: Orchestrator, vm_id: str) -> Vm:
    vm = orch.entity(EntityRef(EntityType.VM, vm_id))
    assert isinstance(vm, Vm)
    return vm


def run_four_flows(scene: Scene, console: Console) -> Outcome:
    """The four flows across both pools on an in-process engine; afterwards nothing is active anywhere."""
    orch, east, west = scene.orch, scene.vms["east"], scene.vms["west"]
    submitted = [
        orch.submit("RemoveVm", {"vm_id": east[0].vm_id}),
        orch.submit(
            "CreateTemplate", {"vm_id": east[1].vm_id, "name": "golden", "target_storage_domain_id": "sd-east-2"}
        ),
        orch.submit("HibernateVm", {"vm_id": west[0].vm_id}),
        orch.submit("CreateSnapshot", {"vm_id": west[1].vm_id, "description": "before upgrade"}),
    ]
    scene.expected += [s.command_id for s in submitted]
    agents = orch.agents(timeout=10)
    try:
        engine = build_engine(orch, agents, load_engine_settings(poll_interval=0.1))
        engine.recover()
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} tasks ended"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            job = bar.add_task("2. four flows, two pools, in-process engine", total=sum(s.tasks for s in submitted))

            def advance(report: CycleReport) -> None:
                bar.advance(job, report.tasks_ended)

            engine.run(threading.Event(), until_idle=True, on_cycle=advance)
    finally:
        agents.close()
    table = Table("flow", "pool", "command", "outcome", "tasks", "summary", title="four flows, no crash")
    for s in submitted:
        command = orch.command(s.command_id)
        status = styled(command.status.value)
        table.add_row(s.flow, command.pool_id, str(s.command_id)[:8], status, str(len(command.tasks)), plain(s.summary))
    console.print(table)
    orch.read_models.catch_up()
    active = orch.read_models.queries.active_tasks()
    held = sum(len(_uncleared(c)) for c in scene.controls.values())
    console.print(f"   active-tasks view: {len(active)} row(s); the agents hold {held} uncleared task(s)")
    succeeded = all(orch.command(s.command_id).status is CommandStatus.SUCCEEDED for s in submitted)
    return Outcome(succeeded and not active and not held, "four flows, two pools: each succeeded; nothing left active")


def _uncleared(control: SimulatorControl) -> list[dict[str, object]]:
    return [r for r in control.journal() if r["cleared_at"] is None and not r["vanished"]]


class _Engines:
    """Engine subprocesses of the demo's store; the URL goes through their environment, never their argv."""

    def __init__(self, store: str, agent_state: Path) -> None:
        self.env = {**os.environ, STORE_ENV_VAR: store}
        self.argv = engine_argv(agent_state)
        self.logs = agent_state.parent

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """An engine in the background, its log in the demo's directory (engine-NAME.log)."""
        with (self.logs / f"engine-{name}.log").open("ab") as log:
            return subprocess.Popen(
                [*self.argv, "--poll-interval", "0.1"],
                env={**self.env, **env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def until_idle(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, "--until-idle", "--poll-interval", "0.1", "--timeout", "120"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


def engine_argv(agent_state: Path) -> list[str]:
    """The command line of the demo's engine processes: no store URL in it (`ps` shows argv to everyone)."""
    return [sys.executable, "-m", "orchestrator", "--agent-state", str(agent_state), "run"]


def crash_mid_remove_vm(scene: Scene, console: Console) -> Outcome:
    """SIGKILL an engine after 2 of the victim's 4 submissions; predict recovery, restart, compare."""
    orch, engines, victim_vm = scene.orch, scene.engines, scene.vms["east"][2]
    victim = orch.submit("RemoveVm", {"vm_id": victim_vm.vm_id})
    scene.expected.append(victim.command_id)
    submitted = _kill_after_two_submissions(scene, victim, victim_vm.vm_id, console)
    predicted = inspect(engines.env[STORE_ENV_VAR], scene.workdir / "agent.db")
    for c in predicted.commands:
        why = escape(c.reason)
        console.print(f"   inspection predicts for {c.flow} {c.command_id[:8]}: [bold]{c.verdict}[/] ({why})")
    with console.status("4. restarting the engine (subprocess) until idle..."):
        restart = engines.until_idle()
    console.print(f"[bold]4. restarted[/] engine exited with code {restart.returncode}")
    command = orch.command(victim.command_id)
    _show_recovery(orch, victim, console)
    vm = _vm(orch, victim_vm.vm_id)
    images = {v.image_id for v in scene.controls["east"].storage().volumes}
    on_agent = [d for d, image in _images_of(orch, victim_vm.disk_ids) if image in images]
    console.print(f"   {vm.entity_id} is {vm.status} with disks {vm.disk_ids}; the agent has images of {on_agent}")
    ok = (
        submitted == 2
        and command.status is CommandStatus.FAILED
        and vm.disk_ids == on_agent
        and restart.returncode == 0
        and all(c.verdict == "fail" for c in predicted.commands)
        and any(v == "fail" for _, v, _ in command.recoveries)
    )
    if not ok:
        for line in restart.stderr.splitlines()[-20:]:
            console.print(escape(printable(line)))
    return Outcome(ok, "RemoveVm killed after 2 of 4 submissions failed; the VM lists exactly the disks the agent has")


def _images_of(orch: Orchestrator, disk_ids: list[str]) -> list[tuple[str, str]]:
    """(disk, its image) of each disk in the inventory (the seed's disks, removed ones too)."""
    disks = [orch.entity(EntityRef(EntityType.DISK, d)) for d in disk_ids]
    return [(d.entity_id, d.image_id) for d in disks if isinstance(d, Disk)]


def _kill_after_two_submissions(scene: Scene, victim: SubmitResult, vm_id: str, console: Console) -> int:
    east = scene.controls["east"]
    east.set_faults(FaultConfig(call_latency=0.8))
    proc = scene.engines.start("killed", ORCHESTRATOR_SUBMIT_BATCH="1", ORCHESTRATOR_AGENT_TASK_SECONDS="1")
    submitted = 0
    with console.status(f"3. engine subprocess submitting RemoveVm {vm_id}, one task per agent call..."):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            submitted = sum(1 for t in scene.orch.command(victim.command_id).tasks.values() if t.agent_task_id)
            if submitted >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    east.set_faults(FaultConfig())
    console.print(f"[bold]3. SIGKILLed[/] engine pid {proc.pid} with {submitted} of 4 tasks submitted")
    return submitted


def agent_outage(scene: Scene, console: Console) -> Outcome:
    """West's agent server SIGKILLed: east's command ends meanwhile, west's waits; both end once it is back."""
    orch = scene.orch
    down = scene.agents[OUTAGE_POOL]
    down.kill()
    console.print(f"[bold]5. SIGKILLed[/] the agent server of pool {OUTAGE_POOL}")
    east = orch.submit("HibernateVm", {"vm_id": scene.vms["east"][3].vm_id})
    west = orch.submit("RemoveVm", {"vm_id": scene.vms["west"][2].vm_id})
    scene.expected += [east.command_id, west.command_id]
    proc = scene.engines.start("outage")
    try:
        with console.status(f"   engine subprocess running; pool {OUTAGE_POOL}'s agent is down..."):
            east_ended = _wait(lambda: orch.command(east.command_id).ended, 60)
            west_meanwhile = orch.command(west.command_id)
            west_waited = not west_meanwhile.ended  # now: the command object goes on changing
        console.print(
            f"   meanwhile: east's {east.flow} {styled(orch.command(east.command_id).status.value)}; "
            f"west's {west.flow} {styled(west_meanwhile.status.value)}, "
            f"{sum(1 for t in west_meanwhile.tasks.values() if t.agent_task_id)} task(s) on its agent"
        )
        down.start()  # the same port, the same state file: the agent as it was
        console.print(f"   agent server of pool {OUTAGE_POOL} back (pid {down.proc.pid if down.proc else '?'})")
        with console.status(f"   waiting for west's {west.flow} to end..."):
            west_ended = _wait(lambda: not orch.command(west.command_id).in_flight, 90)
            east_cleared = _wait(lambda: not orch.command(east.command_id).in_flight, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    final = {c.command_id: orch.command(c.command_id).status for c in (east, west)}
    console.print(
        f"   after: east's {styled(final[east.command_id].value)}, west's {styled(final[west.command_id].value)}; "
        f"engine exited with code {proc.returncode}"
    )
    ok = (
        east_ended
        and west_waited
        and west_ended
        and east_cleared
        and all(s is CommandStatus.SUCCEEDED for s in final.values())
        and proc.returncode == 0
    )
    if not ok:
        console.print(
            f"   [red]expected[/]: east's ended meanwhile ({east_ended}), west's not ({west_waited}), "
            f"west's ended and cleared once back ({west_ended}), east's cleared ({east_cleared}), "
            f"a clean engine exit ({proc.returncode})"
        )
    return Outcome(ok, f"{OUTAGE_POOL}'s agent down: east's command ended meanwhile; west's ended once it was back")


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _show_recovery(orch: Orchestrator, victim: SubmitResult, console: Console) -> None:
    command = orch.command(victim.command_id)
    rec = Table("when", "verdict", "reason", title=f"what recovery decided for RemoveVm {str(victim.command_id)[:8]}")
    for at, verdict, reason in command.recoveries:
        rec.add_row(at.strftime("%H:%M:%S"), plain(verdict), plain(reason))
    console.print(rec)
    tasks = Table("task", "agent task", "status", "disk", title=f"RemoveVm: {command.status.value}")
    for t in command.tasks.values():
        disk = next(e.ref.id for e in t.entities if e.ref.type is EntityType.DISK)
        kind = f" ({t.end_kind.value})" if t.end_kind and t.end_kind.value != "finished" else ""
        tasks.add_row(t.task_id[:8], t.agent_task_id or "none", styled(t.status.value + kind), disk)
    console.print(tasks)


def show_invariants(results: list[InvariantResult], steps: list[Outcome], console: Console) -> bool:
    inv = Table("#", "invariant", "holds", "detail", title="invariants (docs/invariants.md)")
    for r in results:
        inv.add_row(str(r.number), r.name, "[green]yes[/]" if r.ok else "[red]NO[/]", plain(r.detail))
    names = ("four flows ran normally", "no success after a partial submission", "one pool's agent down")
    for name, outcome in zip(names, steps, strict=True):
        inv.add_row("", name, "[green]yes[/]" if outcome.ok else "[red]NO[/]", outcome.detail)
    console.print(inv)
    ok = all(o.ok for o in steps) and all(r.ok for r in results)
    console.print("[bold green]every invariant holds[/]" if ok else "[bold red]an invariant does not hold[/]")
    return ok
