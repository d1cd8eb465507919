"""`list`, `show`, `tasks`, `entities`, `active`, `locks`, `inventory`: reading what the store knows."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json
from orchestrator.domain.model import CommandStatus, EntityRef
from orchestrator.errors import InputError

app = typer.Typer()


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
    from orchestrator.cli.render import commands_table
    from projections.documents import CommandListView

    allowed = [s.value for s in CommandStatus]
    if status is not None and status not in allowed:
        raise InputError(f"--status must be one of {', '.join(allowed)}")
    ref = EntityRef.parse(entity) if entity else None
    with open_orchestrator() as orch:
        fresh = orch.read_models.freshness("commands")
        rows = orch.read_models.queries.list_commands(
            status=status,
            command_type=command_type,
            parent=parent,
            entity=ref,
            in_flight=in_flight,
            include_children=children,
            limit=limit,
        )
    if as_json:
        print_json(CommandListView(freshness=fresh, commands=rows))
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
    from orchestrator.cli.render import command_detail
    from orchestrator.documents import CommandView

    with open_orchestrator() as orch:
        command = orch.command(command_id, version=at_version)
    view = CommandView.of(command)
    if as_json:
        print_json(view)
    else:
        out.print(command_detail(view))


@app.command()
def tasks(
    entity: Annotated[str, typer.Option(help="TYPE:ID, e.g. storage_domain:sd-1")],
    running: Annotated[bool, typer.Option("--running", help="only tasks not yet ended")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which tasks run on an entity (and does it have any)."""
    from projections.documents import EntityTasksView

    ref = EntityRef.parse(entity)
    with open_orchestrator() as orch:
        fresh = orch.read_models.freshness("entity_tasks")
        rows = orch.read_models.queries.tasks_for_entity(ref, running_only=running)
        busy = orch.read_models.queries.has_running_tasks(ref)
    view = EntityTasksView(
        entity_type=ref.type.value, entity_id=ref.id, has_running_tasks=busy, freshness=fresh, tasks=rows
    )
    if as_json:
        print_json(view)
        return
    table = Table("task", "agent task", "status", "mode", "command", "root command", title=f"tasks on {ref}")
    for r in rows:
        mode = "read" if r.read_only else "write"
        table.add_row(r.task_id, r.agent_task_id or "none", r.status, mode, r.command_id, r.root_command_id)
    out.print(table)
    out.print(f"{ref} {'has' if busy else 'has no'} running tasks (view lag: {fresh.lag} event(s))")


@app.command()
def entities(task: Annotated[str, typer.Option("--task", help="engine task id")], as_json: JsonOpt = False) -> None:
    """Which entities a task touches."""
    from projections.documents import TaskEntitiesView

    with open_orchestrator() as orch:
        fresh = orch.read_models.freshness("entity_tasks")
        rows = orch.read_models.queries.entities_for_task(task)
    if as_json:
        print_json(TaskEntitiesView(task_id=task, freshness=fresh, entities=rows))
        return
    table = Table("entity type", "entity id", "mode", "status", title=f"entities of task {task}")
    for r in rows:
        table.add_row(r.entity_type, r.entity_id, "read" if r.read_only else "write", r.status)
    out.print(table)


@app.command()
def active(as_json: JsonOpt = False) -> None:
    """Every task not yet cleared on the agent (empty when the engine is idle)."""
    from projections.documents import ActiveTasksView

    with open_orchestrator() as orch:
        fresh = orch.read_models.freshness("active_tasks")
        rows = orch.read_models.queries.active_tasks()
    if as_json:
        print_json(ActiveTasksView(freshness=fresh, tasks=rows))
        return
    table = Table("task", "agent task", "verb", "status", "root command", title="active tasks")
    for r in rows:
        table.add_row(r.task_id, r.agent_task_id or "none", r.verb, r.status, r.root_command_id)
    out.print(table)


@app.command()
def locks(
    entity: Annotated[str | None, typer.Option(help="only this TYPE:ID")] = None, as_json: JsonOpt = False
) -> None:
    """Entity locks held now (durable: they are events on the entities)."""
    from orchestrator.documents import LockView

    with open_orchestrator() as orch:
        if entity:
            found = orch.entity(EntityRef.parse(entity))
            items = [found] if found is not None else []
        else:
            items = orch.inventory()
    held = LockView.all_of(items)
    if as_json:
        print_json(held)
        return
    table = Table("entity", "mode", "command", "command type", title="held locks")
    for lock in held:
        table.add_row(f"{lock.entity_type}:{lock.entity_id}", lock.mode, lock.command_id, lock.command_type)
    out.print(table if held else "no locks held")


@app.command()
def inventory(
    all_entities: Annotated[bool, typer.Option("--all", help="include removed entities")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The engine-side inventory: storage domains, VMs, disks, templates, snapshots."""
    from orchestrator.documents import InventoryItemView

    with open_orchestrator() as orch:
        items = [InventoryItemView.of(e) for e in orch.inventory() if all_entities or not e.removed]
    if as_json:
        print_json(items)
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
