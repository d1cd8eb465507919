"""`demo`: the main job, start to finish, on real files and real processes.

1. Seed an inventory on the simulated agent.
2. Run the four flows (RemoveVm, HibernateVm, CreateTemplate, CreateSnapshot)
   normally; afterwards no task is active and the agent holds none.
3. Submit a RemoveVm of a 4-disk VM, start a real engine subprocess, and SIGKILL
   it once exactly 2 of the 4 tasks were submitted (the seed's example). The
   engine is set, like the reference engine, to create one task per agent call,
   and the agent is slowed so the kill lands in the third call.
4. Ask the read-only inspection what recovery will decide, restart the engine
   (another subprocess) until idle, and show what recovery decided.
5. Check every invariant (docs/invariants.md). Exit 0 only if all hold.

The store URL reaches the engine processes through their environment, never
their command line (where `ps` would show a password), and is printed redacted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.bootstrap import Orchestrator, build_engine, inspect
from orchestrator.cli.context import G, out
from orchestrator.cli.render import styled
from orchestrator.config import load_engine_settings
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import CommandStatus, EntityRef, EntityType
from orchestrator.engine.report import CycleReport
from orchestrator.service import SubmitResult
from orchestrator.store import STORE_ENV_VAR, parse_store_url
from orchestrator.testing import FaultConfig, InvariantResult, SimulatedAgent, check_invariants

VICTIM = "vm-0005"
app = typer.Typer()


@app.command()
def demo(
    store: Annotated[str | None, typer.Option("--store", help="store URL (default: a fresh SQLite file)")] = None,
    keep: Annotated[bool, typer.Option(help="keep the demo directory afterwards")] = True,
) -> None:
    """The main job: four flows, a SIGKILLed engine mid-RemoveVm, recovery, every invariant."""
    if not run_demo(store or G.store, console=out, keep=keep):
        raise typer.Exit(1)


@dataclass
class Outcome:
    """What one step showed, and whether it showed what it should."""

    ok: bool
    detail: str


def run_demo(store: str | None, console: Console, keep: bool = True) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    store = store or f"sqlite:///{workdir / 'orchestrator.db'}"
    agent_state = workdir / "agent.db"
    shown = parse_store_url(store).redacted
    console.print(
        Panel(
            f"store  {shown}\nagent  {agent_state}\n\nfour flows, then an engine SIGKILLed in the middle of a "
            "RemoveVm of a 4-disk VM, recovery, and every invariant",
            title="orchestrator demo",
        )
    )
    with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
        ok = _run(orch, store, agent_state, console)
    if not keep:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    console.print(f"files kept in {workdir}" if keep else "demo files removed")
    return ok


def _run(orch: Orchestrator, store: str, agent_state: Path, console: Console) -> bool:
    seed_demo_inventory(orch, console)
    agent = SimulatedAgent.open(agent_state, task_seconds=0.5)
    try:
        flows, four = run_four_flows(orch, agent, console)
        victim = orch.submit("RemoveVm", {"vm_id": VICTIM})
        crash = crash_mid_remove_vm(orch, agent, victim, _Engines(store, agent_state), console)
        results = check_invariants(orch, agent, expected_commands=[s.command_id for s in [*flows, victim]])
    finally:
        agent.close()
    return show_invariants(results, four, crash, console)


def seed_demo_inventory(orch: Orchestrator, console: Console) -> None:
    """vm-0001 (4 disks), vm-0002..4 (2 disks), vm-0005 (4 disks, the crash victim)."""
    orch.seed(1, 4)
    orch.seed(3, 2)
    orch.seed(1, 4)
    console.print("[bold]1. seeded[/] 5 VMs, 14 disks on storage domain sd-1 (sd-2 is empty)")


def run_four_flows(orch: Orchestrator, agent: SimulatedAgent, console: Console) -> tuple[list[SubmitResult], Outcome]:
    """The four flows on an in-process engine; afterwards nothing is active and the agent holds nothing."""
    submitted = [
        orch.submit("RemoveVm", {"vm_id": "vm-0001"}),
        orch.submit("HibernateVm", {"vm_id": "vm-0002"}),
        orch.submit("CreateTemplate", {"vm_id": "vm-0003", "name": "golden", "target_storage_domain_id": "sd-2"}),
        orch.submit("CreateSnapshot", {"vm_id": "vm-0004", "description": "before upgrade"}),
    ]
    engine = build_engine(orch, agent, load_engine_settings(poll_interval=0.1))
    engine.recover()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks ended"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        job = bar.add_task("2. four flows on the in-process engine", total=sum(s.tasks for s in submitted))

        def advance(report: CycleReport) -> None:
            bar.advance(job, report.tasks_ended)

        engine.run(threading.Event(), until_idle=True, on_cycle=advance)
    table = Table("flow", "command", "outcome", "tasks", "summary", title="four flows, no crash")
    for s in submitted:
        command = orch.command(s.command_id)
        table.add_row(s.flow, str(s.command_id)[:8], styled(command.status.value), str(len(command.tasks)), s.summary)
    console.print(table)
    orch.read_models.catch_up()
    active = orch.read_models.queries.active_tasks()
    held = [r for r in agent.backend.journal() if r["cleared_at"] is None and not r["vanished"]]
    console.print(f"   active-tasks view: {len(active)} row(s); agent holds {len(held)} uncleared task(s)")
    succeeded = all(orch.command(s.command_id).status is CommandStatus.SUCCEEDED for s in submitted)
    return submitted, Outcome(succeeded and not active and not held, "each succeeded; nothing left active anywhere")


class _Engines:
    """Engine subprocesses of the demo's store; the URL goes through their environment."""

    def __init__(self, store: str, agent_state: Path) -> None:
        self.env = {**os.environ, STORE_ENV_VAR: store}
        self.argv = [sys.executable, "-m", "orchestrator", "--agent-state", str(agent_state), "run"]

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.argv, "--poll-interval", "0.1"],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
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


def crash_mid_remove_vm(
    orch: Orchestrator, agent: SimulatedAgent, victim: SubmitResult, engines: _Engines, console: Console
) -> Outcome:
    """SIGKILL an engine after 2 of the victim's 4 submissions; predict recovery, restart, compare."""
    submitted = _kill_after_two_submissions(orch, agent, victim, engines, console)
    predicted = inspect(engines.env[STORE_ENV_VAR], agent.backend.path)
    for c in predicted.commands:
        console.print(f"   inspection predicts for {c.flow} {c.command_id[:8]}: [bold]{c.verdict}[/] ({c.reason})")
    with console.status("4. restarting the engine (subprocess) until idle..."):
        restart = engines.until_idle()
    console.print(f"[bold]4. restarted[/] engine exited with code {restart.returncode}")
    command = orch.command(victim.command_id)
    _show_recovery(orch, victim, console)
    vm = orch.entity(EntityRef(EntityType.VM, VICTIM))
    assert isinstance(vm, Vm)
    on_agent = _disks_with_images(agent)
    console.print(f"   {VICTIM} is {vm.status} with disks {vm.disk_ids}; the agent still has images of {on_agent}")
    ok = (
        submitted == 2
        and command.status is CommandStatus.FAILED
        and vm.disk_ids == on_agent
        and restart.returncode == 0
        and all(c.verdict == "fail" for c in predicted.commands)
        and any(v == "fail" for _, v, _ in command.recoveries)
    )
    if not ok and restart.stderr:
        console.print(restart.stderr[-2000:])
    return Outcome(ok, "RemoveVm killed after 2 of 4 submissions failed; the VM lists exactly the disks the agent has")


def _kill_after_two_submissions(
    orch: Orchestrator, agent: SimulatedAgent, victim: SubmitResult, engines: _Engines, console: Console
) -> int:
    agent.backend.set_faults(FaultConfig(call_latency=0.8))
    proc = engines.start(ORCHESTRATOR_SUBMIT_BATCH="1", ORCHESTRATOR_AGENT_TASK_SECONDS="1")
    submitted = 0
    with console.status(f"3. engine subprocess submitting RemoveVm {VICTIM}, one task per agent call..."):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            submitted = sum(1 for t in orch.command(victim.command_id).tasks.values() if t.agent_task_id)
            if submitted >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    agent.backend.set_faults(FaultConfig())
    console.print(f"[bold]3. SIGKILLed[/] engine pid {proc.pid} with {submitted} of 4 tasks submitted")
    return submitted


def _show_recovery(orch: Orchestrator, victim: SubmitResult, console: Console) -> None:
    command = orch.command(victim.command_id)
    rec = Table("when", "verdict", "reason", title=f"what recovery decided for RemoveVm {str(victim.command_id)[:8]}")
    for at, verdict, reason in command.recoveries:
        rec.add_row(at.strftime("%H:%M:%S"), verdict, reason)
    console.print(rec)
    tasks = Table("task", "agent task", "status", "disk", title=f"RemoveVm {VICTIM}: {command.status.value}")
    for t in command.tasks.values():
        disk = next(e.ref.id for e in t.entities if e.ref.type is EntityType.DISK)
        kind = f" ({t.end_kind.value})" if t.end_kind and t.end_kind.value != "finished" else ""
        tasks.add_row(t.task_id[:8], t.agent_task_id or "none", styled(t.status.value + kind), disk)
    console.print(tasks)


def _disks_with_images(agent: SimulatedAgent) -> list[str]:
    images = {v.image_id for v in agent.storage().volumes}
    return [f"disk-0005-{k}" for k in range(1, 5) if f"img-0005-{k}" in images]


def show_invariants(results: list[InvariantResult], flows: Outcome, crash: Outcome, console: Console) -> bool:
    inv = Table("#", "invariant", "holds", "detail", title="invariants (docs/invariants.md)")
    for r in results:
        inv.add_row(str(r.number), r.name, "[green]yes[/]" if r.ok else "[red]NO[/]", r.detail)
    for name, outcome in (("four flows ran normally", flows), ("no success after a partial submission", crash)):
        inv.add_row("", name, "[green]yes[/]" if outcome.ok else "[red]NO[/]", outcome.detail)
    console.print(inv)
    ok = flows.ok and crash.ok and all(r.ok for r in results)
    console.print("[bold green]every invariant holds[/]" if ok else "[bold red]an invariant does not hold[/]")
    return ok
