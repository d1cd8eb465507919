"""`orchestrator demo`: the main job, start to finish, on real files and real processes.

1. Seed an inventory on the simulated agent.
2. Run the four flows (RemoveVm, HibernateVm, CreateTemplate, CreateSnapshot)
   normally; afterwards no task is active and the agent holds none.
3. Submit a RemoveVm of a 4-disk VM, start a real engine subprocess, and SIGKILL
   it once exactly 2 of the 4 tasks were submitted (the seed's example). The
   engine is set, like the reference engine, to create one task per agent call,
   and the agent is slowed so the kill lands in the third call.
4. Ask the read-only inspection what recovery will decide, restart the engine
   (another subprocess) until idle, and show what recovery decided.
5. Check every invariant of DESIGN.md section 7. Exit 0 only if all hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.application import Orchestrator
from orchestrator.bootstrap import build_engine
from orchestrator.config import load_engine_settings
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.inspection import ReadOnlyStore, inspect_store
from orchestrator.invariants import check_invariants
from orchestrator.render import styled
from orchestrator.testing import FaultConfig, SimulatedAgent


def _engine_cmd(store: str, agent_state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "--store", store, "--agent-state", str(agent_state), "run", *extra]


def run_demo(store: str | None, console: Console, keep: bool = True) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-demo-"))
    store = store or f"sqlite:///{workdir / 'orchestrator.db'}"
    agent_state = workdir / "agent.db"
    console.print(
        Panel(
            f"store  {store}\nagent  {agent_state}\n\nfour flows, then an engine SIGKILLed in the middle of a "
            "RemoveVm of a 4-disk VM, recovery, and the seven invariants",
            title="orchestrator demo",
        )
    )
    orch = Orchestrator.open(store, agent_state=agent_state, create=True)
    try:
        ok = _run(orch, store, agent_state, console)
    finally:
        orch.close()
    if not keep:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    console.print(f"files kept in {workdir}" if keep else "demo files removed")
    return ok


def _run(orch: Orchestrator, store: str, agent_state: Path, console: Console) -> bool:
    # 1. Seed: vm-0001 (4 disks), vm-0002..4 (2 disks), vm-0005 (4 disks, the crash victim).
    orch.seed(1, 4)
    orch.seed(3, 2)
    orch.seed(1, 4)
    console.print("[bold]1. seeded[/] 5 VMs, 14 disks on storage domain sd-1 (sd-2 is empty)")

    # 2. The four flows, normally.
    submitted = [
        orch.submit("RemoveVm", {"vm_id": "vm-0001"}),
        orch.submit("HibernateVm", {"vm_id": "vm-0002"}),
        orch.submit("CreateTemplate", {"vm_id": "vm-0003", "name": "golden", "target_storage_domain_id": "sd-2"}),
        orch.submit("CreateSnapshot", {"vm_id": "vm-0004", "description": "before upgrade"}),
    ]
    total = sum(s.tasks for s in submitted)
    agent = SimulatedAgent.open(agent_state, task_seconds=0.5)
    engine = build_engine(orch, agent, load_engine_settings(poll_interval=0.1))
    engine.recover()
    ended = 0
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks ended"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        job = bar.add_task("2. four flows on the in-process engine", total=total)

        def advance(report: object) -> None:
            nonlocal ended
            ended += getattr(report, "tasks_ended", 0)
            bar.update(job, completed=ended)

        engine.run(threading.Event(), until_idle=True, on_cycle=advance)
    table = Table("flow", "command", "outcome", "tasks", "summary", title="four flows, no crash")
    for s in submitted:
        command = orch.command(s.command_id)
        table.add_row(s.flow, str(s.command_id)[:8], styled(command.status.value), str(len(command.tasks)), s.summary)
    console.print(table)
    orch.projections.catch_up()
    active = orch.queries.active_tasks()
    held = [r for r in agent.backend.journal() if r["cleared_at"] is None and not r["vanished"]]
    console.print(f"   active-tasks view: {len(active)} row(s); agent holds {len(held)} uncleared task(s)")
    flows_ok = (
        all(orch.command(s.command_id).status.value == "succeeded" for s in submitted) and not active and not held
    )

    # 3. RemoveVm of a 4-disk VM; SIGKILL the engine after 2 of 4 submissions.
    victim = orch.submit("RemoveVm", {"vm_id": "vm-0005"})
    agent.backend.set_faults(FaultConfig(call_latency=0.8))
    env = {**os.environ, "ORCHESTRATOR_SUBMIT_BATCH": "1", "ORCHESTRATOR_AGENT_TASK_SECONDS": "1"}
    engine_proc = subprocess.Popen(
        _engine_cmd(store, agent_state, "--poll-interval", "0.1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    submitted_before_kill = 0
    with console.status("3. engine subprocess submitting RemoveVm vm-0005, one task per agent call..."):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            command = orch.command(victim.command_id)
            submitted_before_kill = sum(1 for t in command.tasks.values() if t.agent_task_id)
            if submitted_before_kill >= 2 or engine_proc.poll() is not None:
                break
            time.sleep(0.02)
        engine_proc.send_signal(signal.SIGKILL)
        engine_proc.wait()
    console.print(
        f"[bold]3. SIGKILLed[/] engine pid {engine_proc.pid} with {submitted_before_kill} of 4 tasks submitted"
    )
    agent.backend.set_faults(FaultConfig())

    # 4. What recovery will decide (read-only inspection), then restart.
    reader = ReadOnlyStore(store)
    try:
        predicted = inspect_store(reader, agent_state, with_agent=True)
    finally:
        reader.close()
    for c in predicted.commands:
        console.print(f"   inspection predicts for {c.flow} {c.command_id[:8]}: [bold]{c.verdict}[/] ({c.reason})")
    with console.status("4. restarting the engine (subprocess) until idle..."):
        restart = subprocess.run(
            _engine_cmd(store, agent_state, "--until-idle", "--poll-interval", "0.1", "--timeout", "120"),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    console.print(f"[bold]4. restarted[/] engine exited with code {restart.returncode}")
    command = orch.command(victim.command_id)
    rec = Table("when", "verdict", "reason", title=f"what recovery decided for RemoveVm {str(victim.command_id)[:8]}")
    for at, verdict, reason in command.recoveries:
        rec.add_row(at.strftime("%H:%M:%S"), verdict, reason)
    console.print(rec)
    tasks = Table("task", "agent task", "status", "disk", title=f"RemoveVm vm-0005: {command.status.value}")
    for t in command.tasks.values():
        disk = next(e.ref.id for e in t.entities if e.ref.type is EntityType.DISK)
        kind = f" ({t.end_kind.value})" if t.end_kind and t.end_kind.value != "finished" else ""
        tasks.add_row(t.task_id[:8], t.agent_task_id or "none", styled(t.status.value + kind), disk)
    console.print(tasks)
    vm = orch.entity(EntityRef(EntityType.VM, "vm-0005"))
    assert isinstance(vm, Vm)
    images_on_agent = {v.image_id for v in agent.storage().volumes}
    disks_on_agent = sorted(
        d for d in (f"disk-0005-{k}" for k in range(1, 5)) if f"img-0005-{d[-1]}" in images_on_agent
    )
    console.print(f"   vm-0005 is {vm.status} with disks {vm.disk_ids}; the agent still has images of {disks_on_agent}")
    crash_ok = (
        submitted_before_kill == 2
        and command.status.value == "failed"
        and vm.disk_ids == disks_on_agent
        and restart.returncode == 0
        and all(c.verdict == "fail" for c in predicted.commands)
        and any(v == "fail" for _, v, _ in command.recoveries)
    )

    # 5. The invariants.
    results = check_invariants(orch, agent, expected_commands=[s.command_id for s in [*submitted, victim]])
    agent.close()
    inv = Table("#", "invariant", "holds", "detail", title="invariants (DESIGN.md section 7)")
    for r in results:
        inv.add_row(str(r.number), r.name, "[green]yes[/]" if r.ok else "[red]NO[/]", r.detail)
    inv.add_row(
        "",
        "four flows ran normally",
        "[green]yes[/]" if flows_ok else "[red]NO[/]",
        "each succeeded; no active task, nothing left on the agent",
    )
    inv.add_row(
        "",
        "no success after a partial submission",
        "[green]yes[/]" if crash_ok else "[red]NO[/]",
        "RemoveVm killed after 2 of 4 submissions failed; the VM lists exactly the disks the agent still has",
    )
    console.print(inv)
    ok = flows_ok and crash_ok and all(r.ok for r in results)
    if not ok and restart.stderr:
        console.print(restart.stderr[-2000:])
    console.print("[bold green]every invariant holds[/]" if ok else "[bold red]an invariant does not hold[/]")
    return ok
