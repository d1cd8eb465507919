"""The `orchestrator` command line (Typer, with Rich for people and --json for programs).

Every error is one line on stderr, `error: ...`, and a non-zero exit code
(see README for the codes). Store URLs are printed with passwords hidden.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from eventsourcing.persistence import PersistenceError
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from orchestrator.application import Orchestrator
from orchestrator.bootstrap import build_engine
from orchestrator.config import load_engine_settings
from orchestrator.domain.inventory import Disk, InventoryEntity, Snapshot, StorageDomain, Template, Vm
from orchestrator.domain.model import EntityRef
from orchestrator.engine.lease import EngineLease
from orchestrator.errors import AgentUnavailableError, InputError, OrchestratorError, StoreError
from orchestrator.flows import FLOWS
from orchestrator.render import command_detail, commands_table
from orchestrator.testing import FaultConfig, SimulatedAgent
from orchestrator.views import CommandView, InventoryItemView, LockView
from projections.queries import ActiveTaskRow, CommandRow, EntityTaskRow, ViewFreshness
from projections.views import select_projections

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Event-sourced command orchestrator: long commands run as tasks on a host agent.",
)
agent_app = typer.Typer(no_args_is_help=True, help="The simulated host agent.")
projections_app = typer.Typer(no_args_is_help=True, help="Read models: status, rebuild, verify, follow.")
app.add_typer(agent_app, name="agent")
app.add_typer(projections_app, name="projections")

out = Console(highlight=False, soft_wrap=False, width=160)
log = logging.getLogger("orchestrator")


class _Globals:
    store: str | None = None
    agent_state: Path | None = None


G = _Globals()

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="store URL: sqlite:///PATH or postgresql://USER@HOST/DB (env ORCHESTRATOR_STORE)"),
]
AgentOpt = Annotated[
    Path | None,
    typer.Option("--agent-state", help="simulated agent state file (env ORCHESTRATOR_AGENT_STATE)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON document instead of tables")]


@app.callback()
def _main(store: StoreOpt = None, agent_state: AgentOpt = None, verbose: bool = False) -> None:
    G.store, G.agent_state = store, agent_state
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def _open(create: bool = False) -> Orchestrator:
    return Orchestrator.open(G.store, agent_state=G.agent_state, create=create)


def _print_json(model: BaseModel | list[Any]) -> None:
    if isinstance(model, list):
        data = [m.model_dump(mode="json") if isinstance(m, BaseModel) else m for m in model]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(model.model_dump_json(indent=2) + "\n")


def _freshness(orch: Orchestrator, name: str) -> ViewFreshness:
    orch.projections.catch_up()
    status = {s.name: s for s in orch.projections.status()}[name]
    return ViewFreshness(position=status.position, head=status.head, lag=status.lag)


# ---- flows, seed, submit --------------------------------------------------------------------


class FlowView(BaseModel):
    """`flows --json`: a flow and the JSON schema of its parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@app.command()
def flows(as_json: JsonOpt = False) -> None:
    """List the flows and their parameters."""
    if as_json:
        _print_json(
            [
                FlowView(name=name, description=f.description, parameters=f.params_model.model_json_schema())
                for name, f in FLOWS.items()
            ]
        )
        return
    table = Table("flow", "parameters", "what it does")
    for name, flow in FLOWS.items():
        fields = ", ".join(f"{k}{'' if v.is_required() else '?'}" for k, v in flow.params_model.model_fields.items())
        table.add_row(name, fields, flow.description)
    out.print(table)


@app.command()
def seed(
    vms: Annotated[int, typer.Option(min=0, max=10_000, help="VMs to create")] = 4,
    disks: Annotated[int, typer.Option(min=0, max=64, help="disks per VM")] = 2,
    status: Annotated[str, typer.Option(help="initial VM status: up or down")] = "up",
    as_json: JsonOpt = False,
) -> None:
    """Create VMs with disks in the inventory, and their images on the simulated agent."""
    if status not in ("up", "down"):
        raise InputError("--status must be up or down")
    with _open(create=True) as orch:
        result = orch.seed(vms, disks, status)
    if as_json:
        _print_json(result)
        return
    for vm in result.vms:
        out.print(f"{vm.vm_id}: {', '.join(vm.disk_ids) or 'no disks'}")
    out.print(f"storage domains: {', '.join(result.storage_domains)}")


@app.command()
def submit(
    flow: Annotated[str, typer.Argument(help="flow name (see 'orchestrator flows')")],
    params: Annotated[str, typer.Option("--params", help="flow parameters as a JSON object")] = "{}",
    command_id: Annotated[
        str | None, typer.Option("--id", help="command id (UUID); doubles as idempotency key")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and durably accept a command with all its expected tasks; print its id."""
    ident = None
    if command_id is not None:
        try:
            ident = UUID(command_id)
        except ValueError:
            raise InputError(f"--id {command_id!r} is not a UUID") from None
    with _open(create=True) as orch:
        result = orch.submit(flow, params, ident)
    if as_json:
        _print_json(result)
    else:
        out.print(str(result.command_id))
        if result.duplicate:
            print("(already accepted with these parameters)", file=sys.stderr)


@app.command()
def cancel(command_id: str, reason: str = "cancelled by user") -> None:
    """Ask the engine to cancel a command: running tasks are stopped, the rest never start."""
    with _open() as orch:
        result = orch.request_cancel(command_id, reason)
    if result.requested:
        out.print(f"cancel requested for {result.command_id}")
    else:
        out.print(f"cancel was already requested for {result.command_id} (reason: {result.reason})")


# ---- the engine -----------------------------------------------------------------------------


class EngineTimeoutError(OrchestratorError):
    exit_code = 9


@app.command()
def run(
    until_idle: Annotated[bool, typer.Option("--until-idle", help="stop when nothing is in flight")] = False,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between poll cycles")] = None,
    timeout: Annotated[float | None, typer.Option(help="give up (exit 9) after this many seconds")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="fail if another engine runs; do not stand by")] = False,
    no_projections: Annotated[
        bool, typer.Option("--no-projections", help="leave the read models to 'projections run' (PostgreSQL)")
    ] = False,
) -> None:
    """Recover, then execute accepted commands and poll until stopped (SIGINT/SIGTERM)."""
    settings = load_engine_settings(poll_interval=poll_interval)
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    stop = threading.Event()
    timed_out = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if timeout is not None:

        def give_up() -> None:
            timed_out.set()
            stop.set()

        timer = threading.Timer(timeout, give_up)
        timer.daemon = True
        timer.start()
    with _open(create=True) as orch:
        lease = EngineLease(orch.config)
        lease.acquire(
            wait=not no_wait,
            stop=stop.is_set,
            on_wait=lambda: log.warning("another engine runs on %s; standing by to take over", orch.config.redacted),
        )
        agent = orch.open_agent()
        try:
            engine = build_engine(orch, agent, settings, update_projections=not no_projections)
            started = time.monotonic()
            report = engine.recover(stop.is_set)
            if report.gave_up:
                log.warning(
                    "gave up waiting for the agent after %.2fs (%s); recovery decided nothing",
                    time.monotonic() - started,
                    engine.agent_trouble or "stopped",
                )
            else:
                log.info("recovered %d command(s) in %.2fs", len(report.decisions), time.monotonic() - started)
                engine.run(stop, until_idle=until_idle)
            if timed_out.is_set():
                if report.gave_up:
                    raise AgentUnavailableError(
                        f"gave up after {timeout:g}s waiting for the agent ({engine.agent_trouble or 'no answer'}); "
                        "recovery decided nothing; run again when the agent is back"
                    )
                if engine.agent_trouble:
                    raise AgentUnavailableError(
                        f"gave up after {timeout:g}s with {len(engine.inflight)} command(s) in flight; agent: "
                        f"{engine.agent_trouble}; nothing was decided without the agent; run again when it is back"
                    )
                raise EngineTimeoutError(
                    f"gave up after {timeout:g}s with {len(engine.inflight)} command(s) still in flight; "
                    "they go on when the engine runs again"
                )
        finally:
            agent.close()
            lease.release()


# ---- queries --------------------------------------------------------------------------------


class CommandListView(BaseModel):
    """`list --json`: commands from the commands read model."""

    freshness: ViewFreshness
    commands: list[CommandRow]


@app.command("list")
def list_commands(
    status: Annotated[str | None, typer.Option(help="accepted|running|ending|succeeded|failed")] = None,
    command_type: Annotated[str | None, typer.Option("--type", help="flow or child command type")] = None,
    parent: Annotated[str | None, typer.Option(help="children of this command")] = None,
    entity: Annotated[str | None, typer.Option(help="commands declaring TYPE:ID")] = None,
    in_flight: Annotated[bool, typer.Option("--in-flight", help="only commands still in flight")] = False,
    children: Annotated[bool, typer.Option("--children", help="include child commands")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List commands, filtered by status, type, parent or entity."""
    allowed = ("accepted", "running", "ending", "succeeded", "failed")
    if status is not None and status not in allowed:
        raise InputError(f"--status must be one of {', '.join(allowed)}")
    ref = EntityRef.parse(entity) if entity else None
    with _open() as orch:
        fresh = _freshness(orch, "commands")
        rows = orch.queries.list_commands(
            status=status,
            command_type=command_type,
            parent=parent,
            entity=ref,
            in_flight=in_flight,
            include_children=children,
            limit=limit,
        )
    if as_json:
        _print_json(CommandListView(freshness=fresh, commands=rows))
    else:
        out.print(commands_table(rows))
        out.print(f"{len(rows)} command(s); view at event {fresh.position} of {fresh.head} (lag {fresh.lag})")


@app.command()
def show(
    command_id: str,
    at_version: Annotated[int | None, typer.Option(help="state after this event number")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A command, its children and tasks (engine id, agent id or none, status, entities) and outcome."""
    with _open() as orch:
        command = orch.command(command_id, version=at_version)
    view = CommandView.of(command)
    if as_json:
        _print_json(view)
    else:
        out.print(command_detail(view))


class EntityTasksView(BaseModel):
    """`tasks --json`: tasks on one entity (from the entity -> task index)."""

    entity_type: str
    entity_id: str
    has_running_tasks: bool
    freshness: ViewFreshness
    tasks: list[EntityTaskRow]


@app.command()
def tasks(
    entity: Annotated[str, typer.Option(help="TYPE:ID, e.g. storage_domain:sd-1")],
    running: Annotated[bool, typer.Option("--running", help="only tasks not yet ended")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which tasks run on an entity (and does it have any)."""
    ref = EntityRef.parse(entity)
    with _open() as orch:
        fresh = _freshness(orch, "entity_tasks")
        rows = orch.queries.tasks_for_entity(ref, running_only=running)
        busy = orch.queries.has_running_tasks(ref)
    view = EntityTasksView(
        entity_type=ref.type.value, entity_id=ref.id, has_running_tasks=busy, freshness=fresh, tasks=rows
    )
    if as_json:
        _print_json(view)
        return
    table = Table("task", "agent task", "status", "mode", "command", "root command", title=f"tasks on {ref}")
    for r in rows:
        table.add_row(
            r.task_id,
            r.agent_task_id or "none",
            r.status,
            "read" if r.read_only else "write",
            r.command_id,
            r.root_command_id,
        )
    out.print(table)
    out.print(f"{ref} {'has' if busy else 'has no'} running tasks (view lag: {fresh.lag} event(s))")


class TaskEntitiesView(BaseModel):
    """`entities --json`: the entities one task touches."""

    task_id: str
    freshness: ViewFreshness
    entities: list[EntityTaskRow]


@app.command()
def entities(task: Annotated[str, typer.Option("--task", help="engine task id")], as_json: JsonOpt = False) -> None:
    """Which entities a task touches."""
    with _open() as orch:
        fresh = _freshness(orch, "entity_tasks")
        rows = orch.queries.entities_for_task(task)
    if as_json:
        _print_json(TaskEntitiesView(task_id=task, freshness=fresh, entities=rows))
        return
    table = Table("entity type", "entity id", "mode", "status", title=f"entities of task {task}")
    for r in rows:
        table.add_row(r.entity_type, r.entity_id, "read" if r.read_only else "write", r.status)
    out.print(table)


class ActiveTasksView(BaseModel):
    """`active --json`: every task not yet cleared on the agent (the seed's async_tasks)."""

    freshness: ViewFreshness
    tasks: list[ActiveTaskRow]


@app.command()
def active(as_json: JsonOpt = False) -> None:
    """Every task not yet cleared on the agent (empty when the engine is idle)."""
    with _open() as orch:
        fresh = _freshness(orch, "active_tasks")
        rows = orch.queries.active_tasks()
    if as_json:
        _print_json(ActiveTasksView(freshness=fresh, tasks=rows))
        return
    table = Table("task", "agent task", "verb", "status", "root command", title="active tasks")
    for r in rows:
        table.add_row(r.task_id, r.agent_task_id or "none", r.verb, r.status, r.root_command_id)
    out.print(table)


def _locks_of(entities: list[InventoryEntity]) -> list[LockView]:
    return [
        LockView(
            entity_type=e.ref.type.value,
            entity_id=e.entity_id,
            command_id=holder,
            command_type=lock["command_type"],
            mode=lock["mode"],
        )
        for e in entities
        for holder, lock in sorted(e.locks.items())
    ]


@app.command()
def locks(
    entity: Annotated[str | None, typer.Option(help="only this TYPE:ID")] = None, as_json: JsonOpt = False
) -> None:
    """Entity locks held now (durable: they are events on the entities)."""
    with _open() as orch:
        if entity:
            found = orch.entity(EntityRef.parse(entity))
            items = [found] if found is not None else []
        else:
            items = orch.inventory()
    held = _locks_of(items)
    if as_json:
        _print_json(held)
        return
    table = Table("entity", "mode", "command", "command type", title="held locks")
    for lock in held:
        table.add_row(f"{lock.entity_type}:{lock.entity_id}", lock.mode, lock.command_id, lock.command_type)
    out.print(table if held else "no locks held")


def _inventory_view(e: InventoryEntity) -> InventoryItemView:
    details: dict[str, Any] = {}
    status: str | None = None
    if isinstance(e, Vm):
        status, details = (
            e.status,
            {"disks": e.disk_ids, "memory_volumes": e.memory_volumes, "snapshots": e.snapshot_ids},
        )
    elif isinstance(e, Disk):
        details = {"vm": e.vm_id, "storage_domain": e.storage_domain_id, "image": e.image_id, "volumes": e.volumes}
    elif isinstance(e, StorageDomain | Template | Snapshot):
        status = e.status
        if isinstance(e, Template):
            details = {"name": e.name, "source_vm": e.source_vm_id, "images": e.images}
        elif isinstance(e, Snapshot):
            details = {"vm": e.vm_id, "description": e.description, "volumes": e.volumes}
    return InventoryItemView(
        type=e.ref.type.value, id=e.entity_id, removed=e.removed, status=status, details=details, locks=_locks_of([e])
    )


@app.command()
def inventory(
    all_entities: Annotated[bool, typer.Option("--all", help="include removed entities")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The engine-side inventory: storage domains, VMs, disks, templates, snapshots."""
    with _open() as orch:
        items = [_inventory_view(e) for e in orch.inventory() if all_entities or not e.removed]
    if as_json:
        _print_json(items)
        return
    table = Table("type", "id", "status", "details", "locks", title="inventory")
    for i in items:
        detail = ", ".join(f"{k}={v}" for k, v in i.details.items() if v)
        table.add_row(
            i.type,
            i.id + (" (removed)" if i.removed else ""),
            i.status or "",
            detail,
            ", ".join(f"{lk.mode}:{lk.command_id[:8]}" for lk in i.locks),
        )
    out.print(table)


# ---- the simulated agent --------------------------------------------------------------------


class AgentTaskRow(BaseModel):
    agent_task_id: str
    key: str
    verb: str
    state: str
    result: str
    message: str
    cleared: bool
    vanished: bool


class AgentView(BaseModel):
    """`agent show --json`: the simulated agent's tasks (with keys), storage and faults."""

    state_file: str
    tasks: list[AgentTaskRow]
    volumes: list[dict[str, Any]]
    faults: FaultConfig


def _agent() -> SimulatedAgent:
    with _open(create=True) as orch:
        path = orch.agent_state
    return SimulatedAgent.open(path)


@agent_app.command("show")
def agent_show(
    history: Annotated[bool, typer.Option("--history", help="include cleared tasks")] = False, as_json: JsonOpt = False
) -> None:
    """The simulated agent's tasks (with keys) and its storage (images and volumes)."""
    agent = _agent()
    try:
        rows = [
            AgentTaskRow(
                agent_task_id=r["agent_task_id"],
                key=r["key"],
                verb=r["verb"],
                state=r["state"],
                result=r["result"],
                message=r["message"],
                cleared=r["cleared_at"] is not None,
                vanished=bool(r["vanished"]),
            )
            for r in agent.backend.journal()
            if history or (r["cleared_at"] is None and not r["vanished"])
        ]
        view = AgentView(
            state_file=str(agent.backend.path),
            tasks=rows,
            volumes=agent.backend.storage_snapshot()["volumes"],
            faults=agent.backend.faults(),
        )
    finally:
        agent.close()
    if as_json:
        _print_json(view)
        return
    table = Table("agent task", "key", "verb", "state", "result", "cleared", title=f"agent tasks ({view.state_file})")
    for t in view.tasks:
        table.add_row(t.agent_task_id, t.key, t.verb, t.state, t.result, "yes" if t.cleared else "no")
    out.print(table if view.tasks else "the agent holds no tasks")
    vols = Table("storage domain", "image", "volume", "parent", title="agent storage")
    for v in view.volumes:
        vols.add_row(v["storage_domain_id"], v["image_id"], v["volume_id"], v["parent_id"] or "")
    out.print(vols)


@agent_app.command("faults")
def agent_faults(
    fail_verb: Annotated[list[str] | None, typer.Option(help="tasks of this verb fail (repeatable)")] = None,
    fail_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of tasks that fail")] = None,
    refuse_verb: Annotated[list[str] | None, typer.Option(help="creation of this verb is refused")] = None,
    vanish_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of tasks that vanish")] = None,
    unreachable_for: Annotated[float | None, typer.Option(min=0, help="seconds the agent is unreachable")] = None,
    malformed_for: Annotated[float | None, typer.Option(min=0, help="seconds the agent answers garbage")] = None,
    malformed_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of garbage answers")] = None,
    phantoms: Annotated[int | None, typer.Option(min=0, max=100, help="tasks reported but never given")] = None,
    extra_seconds: Annotated[float | None, typer.Option(min=0, help="added to every task's duration")] = None,
    latency: Annotated[float | None, typer.Option(min=0, help="seconds each call takes")] = None,
    create_answer_latency: Annotated[
        float | None, typer.Option(min=0, help="seconds a create call's answer is held after the tasks were made")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="switch every fault off first")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the simulated agent's faults (kept in its state file)."""
    agent = _agent()
    try:
        config = FaultConfig() if clear else agent.backend.faults()
        now = time.time()
        changes: dict[str, Any] = {
            "fail_verbs": fail_verb,
            "fail_share": fail_share,
            "refuse_verbs": refuse_verb,
            "vanish_share": vanish_share,
            "malformed_share": malformed_share,
            "phantom_tasks": phantoms,
            "extra_task_seconds": extra_seconds,
            "call_latency": latency,
            "create_answer_latency": create_answer_latency,
            "unreachable_until": now + unreachable_for if unreachable_for is not None else None,
            "malformed_until": now + malformed_for if malformed_for is not None else None,
        }
        config = FaultConfig.model_validate(
            {**config.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        )
        agent.backend.set_faults(config)
    finally:
        agent.close()
    if as_json:
        _print_json(config)
    else:
        out.print(config.model_dump())


# ---- projections ----------------------------------------------------------------------------


class ProjectionStatusView(BaseModel):
    name: str
    position: int
    head: int
    lag: int


@projections_app.command("status")
def projections_status(as_json: JsonOpt = False) -> None:
    """Each projection's position, the log's head, and the lag."""
    with _open() as orch:
        rows = [
            ProjectionStatusView(name=s.name, position=s.position, head=s.head, lag=s.lag)
            for s in orch.projections.status()
        ]
    if as_json:
        _print_json(rows)
        return
    table = Table("projection", "position", "head", "lag", title="projections")
    for r in rows:
        table.add_row(r.name, str(r.position), str(r.head), str(r.lag))
    out.print(table)


@projections_app.command("rebuild")
def projections_rebuild(
    names: Annotated[list[str] | None, typer.Argument(help="projections (default: all)")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="compare a fresh build with the live view")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild read models from the whole log and swap them in (or --verify them)."""
    from projections.rebuild import rebuild_or_verify

    with _open() as orch:
        ok = rebuild_or_verify(orch, select_projections(names or []), verify=verify, as_json=as_json, console=out)
    if not ok:
        raise typer.Exit(10)


@projections_app.command("run")
def projections_run(interval: float = 0.2) -> None:
    """Follow the log and keep every projection current (PostgreSQL: a process of its own)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _open() as orch:
        orch.projections.follow(stop.is_set, interval)


# ---- inspection and demo --------------------------------------------------------------------


@app.command()
def inspect(
    command: Annotated[str | None, typer.Option("--command", help="one command's history")] = None,
    at_version: Annotated[int | None, typer.Option(help="with --command: state after event N")] = None,
    with_agent: Annotated[
        bool, typer.Option("--with-agent/--no-agent", help="reconcile with the agent's tasks")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Read-only crash replay: commands in flight and what recovery would decide."""
    from orchestrator.inspection import run_inspection

    if at_version is not None and command is None:
        raise InputError("--at-version needs --command ID: it shows one command as it was after event N")

    code = run_inspection(
        G.store,
        G.agent_state,
        command=command,
        at_version=at_version,
        with_agent=with_agent,
        as_json=as_json,
        console=out,
    )
    raise typer.Exit(code)


@app.command()
def demo(
    store: Annotated[str | None, typer.Option("--store", help="store URL (default: a fresh SQLite file)")] = None,
    keep: Annotated[bool, typer.Option(help="keep the demo directory afterwards")] = True,
) -> None:
    """The main job: four flows, a SIGKILLed engine mid-RemoveVm, recovery, every invariant."""
    from orchestrator.demo import run_demo

    ok = run_demo(store or G.store, console=out, keep=keep)
    if not ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False, prog_name="orchestrator")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # usage errors: bad option, missing argument
        print(f"error: {exc.format_message()} (see --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except PersistenceError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: the store failed: {_scrub(text)}; check the store and try again", file=sys.stderr)
        sys.exit(StoreError.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


# Options of the `orchestrator` group (they go before the sub-command), with whether they take a value.
GROUP_OPTIONS = {"--store": True, "--agent-state": True, "--verbose": False}


def split_group_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ARGV into the group's options (`--store URL` ...) and the sub-command's own arguments."""
    group: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GROUP_OPTIONS:
            if GROUP_OPTIONS[name] and "=" not in arg and i + 1 < len(argv):
                group += [arg, argv[i + 1]]
                i += 2
                continue
            group.append(arg)
        else:
            rest.append(arg)
        i += 1
    return group, rest


def main_as(subcommand: list[str], argv: list[str]) -> None:
    """Run one sub-command as a script of its own: `script --store URL ARGS` = `orchestrator --store URL SUB ARGS`."""
    group, rest = split_group_options(argv)
    main([*group, *subcommand, *rest])


def _scrub(text: str) -> str:
    try:
        from orchestrator.store import parse_store_url, store_url_from_env

        return parse_store_url(store_url_from_env(G.store)).scrub(text)
    except OrchestratorError:
        return text
