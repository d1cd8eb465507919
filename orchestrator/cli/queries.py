"""`list`, `show`, `tasks`, `entities`, `active`, `locks`, `inventory`: reading what the store knows.

Asked about something that does not exist (a command, an entity, a task), they
exit 6 with one line; a filter that is merely empty answers an empty list and
says so. Read models are caught up first where the store may be written; on a
read-only copy they are read as they are, and `freshness` says how far behind.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer

from orchestrator.cli.context import JsonOpt, out, print_json, print_json_line
from orchestrator.cli.stores import Session, access_for_id, open_session
from orchestrator.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from orchestrator.domain.commands import RootCommand
    from orchestrator.domain.model import EntityRef

app = typer.Typer()
STATUSES = ("accepted", "running", "ending", "succeeded", "failed")
EntityOpt = Annotated[str, typer.Option(help="TYPE:ID, e.g. storage_domain:sd-1")]


@app.command("list")
def list_commands(
    status: Annotated[str | None, typer.Option(help="accepted|running|ending|succeeded|failed")] = None,
    command_type: Annotated[str | None, typer.Option("--type", help="flow or child command type")] = None,
    parent: Annotated[str | None, typer.Option(help="children of this command (id or prefix)")] = None,
    entity: Annotated[str | None, typer.Option(help="commands declaring TYPE:ID")] = None,
    in_flight: Annotated[bool, typer.Option("--in-flight", help="only commands still in flight")] = False,
    children: Annotated[bool, typer.Option("--children", help="include child commands")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="at most this many")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """List commands, filtered by status, type, parent or entity (from the commands read model).

    Exit codes: 4 a bad filter (an unknown status or command type); 6 the --parent command or the
    --entity does not exist. A filter that matches nothing prints an empty list.
    """
    from projections.documents import CommandListView

    if status is not None and status not in STATUSES:
        raise InputError(f"--status must be one of {', '.join(STATUSES)}")
    with open_session("write-if-possible") as session:
        fresh, writable = session.freshness("commands"), session.writable
        if command_type is not None and _check_command_type(session, command_type) == "child":
            children = True  # a child command type: its commands are children
        parent_id = None if parent is None else str(session.resolve_command_id(parent, roots_only=False))
        ref = None if entity is None else _known_entity(session, entity)
        rows = session.read_models.queries.list_commands(
            status=status,
            command_type=command_type,
            parent=parent_id,
            entity=ref,
            in_flight=in_flight,
            include_children=children,
            limit=limit,
        )
    if as_json:
        print_json(CommandListView(freshness=fresh, commands=rows))
        return
    from orchestrator.cli.render import commands_table

    if rows:
        out.print(commands_table(rows))
    else:
        sys.stdout.write("no commands match\n" if _filtered(status, command_type, parent, entity, in_flight) else "")
    sys.stdout.write(f"{len(rows)} command(s); view at event {fresh.position} of {fresh.head} (lag {fresh.lag})\n")
    if fresh.lag and not writable:
        sys.stdout.write("(read-only store: its read models were not caught up; 'show ID' reads a command's history)\n")


def _filtered(*filters: object) -> bool:
    return any(f for f in filters)


def _check_command_type(session: Session, command_type: str) -> str:
    """ "flow", or "child" for a child command type some command has; anything else is a mistake, not an empty list."""
    from orchestrator.flows import FLOWS

    if command_type in FLOWS:
        return "flow"
    children = set(session.read_models.queries.command_types()) - set(FLOWS)
    if command_type in children:
        return "child"
    seen = f"; child types seen: {', '.join(sorted(children))}" if children else ""
    raise InputError(f"unknown command type {command_type[:64]!r}; flows: {', '.join(FLOWS)}{seen}")


def _known_entity(session: Session, text: str) -> EntityRef:
    """TYPE:ID of an entity the inventory holds (an image, known only through tasks, is taken as given)."""
    from orchestrator.domain.inventory import ENTITY_CLASSES
    from orchestrator.domain.model import EntityRef

    ref = EntityRef.parse(text)
    if ref.type in ENTITY_CLASSES and session.service.entity(ref) is None:
        raise NotFoundError(f"no {ref.type.value.replace('_', ' ')} {ref.id} in the inventory")
    return ref


@app.command()
def show(
    command_id: Annotated[str, typer.Argument(help="command id (or a unique prefix of 6+ characters)")],
    at_version: Annotated[int | None, typer.Option(help="the state after this event (1 = accepted)")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="show it again at each change, until it ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A command, its children and tasks (engine id, agent id or none, status, entities) and outcome.

    With --follow it is shown again as it changes until it ends (on a terminal, in place; otherwise
    once per change; with --json, one document per line). Exit codes: 4 --at-version beyond its
    history, or a bad id; 6 no such command.
    """
    if at_version is not None and follow:
        raise InputError("--at-version shows the past; --follow the present: give one of them")
    with open_session(access_for_id(command_id)) as session:
        ident = session.resolve_command_id(command_id)
        if follow:
            _follow(session, ident, as_json)
            return
        command = command_at(session, ident, at_version)
        history = session.events.events_of(ident) if as_json else []
    from orchestrator.documents import CommandView

    view = CommandView.of(command, history)
    if as_json:
        print_json(view)
        return
    from orchestrator.cli.render import command_detail

    out.print(command_detail(view))


def command_at(session: Session, ident: UUID, at_version: int | None) -> RootCommand:
    """The command now, or after event `at_version` (refused outside 1..its number of events)."""
    assert isinstance(ident, UUID)
    latest = session.command(ident)
    if at_version is None:
        return latest
    if at_version < 1:
        raise InputError(f"--at-version {at_version} is not an event number: events are numbered from 1")
    if at_version > latest.version:
        raise InputError(
            f"command {latest.id} has only {latest.version} event(s); --at-version must be 1 to {latest.version}"
        )
    return session.command(ident, version=at_version)


def _follow(session: Session, ident: UUID, as_json: bool) -> None:
    from orchestrator.cli.render import command_detail
    from orchestrator.cli.waiting import follow
    from orchestrator.documents import CommandView

    if as_json:
        follow(session, ident, lambda c: print_json_line(CommandView.of(c)))
    elif sys.stdout.isatty():
        from rich.live import Live

        from orchestrator.cli.context import stdout_console

        with Live(console=stdout_console(), auto_refresh=False) as live:
            follow(session, ident, lambda c: live.update(command_detail(CommandView.of(c)), refresh=True))
    else:

        def print_once(command: RootCommand) -> None:
            out.print(command_detail(CommandView.of(command)))
            sys.stdout.flush()

        follow(session, ident, print_once)


@app.command()
def tasks(
    entity: EntityOpt,
    running: Annotated[bool, typer.Option("--running", help="only tasks not yet ended")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which tasks run on an entity, and does it have any (from the entity -> task index).

    Exit codes: 4 not TYPE:ID; 6 no such entity in the inventory.
    """
    from projections.documents import EntityTasksView

    with open_session("write-if-possible") as session:
        fresh = session.freshness("entity_tasks")
        ref = _known_entity(session, entity)
        rows = session.read_models.queries.tasks_for_entity(ref, running_only=running)
        busy = session.read_models.queries.has_running_tasks(ref)
    view = EntityTasksView(
        entity_type=ref.type.value, entity_id=ref.id, has_running_tasks=busy, freshness=fresh, tasks=rows
    )
    if as_json:
        print_json(view)
        return
    from orchestrator.cli.render import plain, styled, table

    shown = table(
        "task", "agent task", "status", "mode", "command", "root command", title=f"tasks on {ref}", ids=["task"]
    )
    for r in rows:
        mode = "read" if r.read_only else "write"
        shown.add_row(
            plain(r.task_id), plain(r.agent_task_id or "none"), styled(r.status), mode, r.command_id, r.root_command_id
        )
    out.print(shown if rows else f"no {'running ' if running else ''}tasks on {ref}")
    sys.stdout.write(f"{ref} {'has' if busy else 'has no'} running tasks (view lag: {fresh.lag} event(s))\n")


@app.command()
def entities(
    task: Annotated[str, typer.Option("--task", help="engine task id (see 'show')")], as_json: JsonOpt = False
) -> None:
    """Which entities a task touches (from the entity -> task index, which a task leaves once cleared).

    Exit codes: 4 not a task id; 6 no such task in the index.
    """
    from uuid import UUID

    from projections.documents import TaskEntitiesView

    try:
        task_id = str(UUID(task.strip()))
    except ValueError:
        raise InputError(f"{task[:40]!r} is not a task id (a UUID, as 'show' lists them)") from None
    with open_session("write-if-possible") as session:
        fresh = session.freshness("entity_tasks")
        rows = session.read_models.queries.entities_for_task(task_id)
    if not rows:
        raise NotFoundError(f"no task {task_id} in the entity-task index (a task leaves it once cleared on the agent)")
    if as_json:
        print_json(TaskEntitiesView(task_id=task_id, freshness=fresh, entities=rows))
        return
    from orchestrator.cli.render import plain, styled, table

    shown = table("entity type", "entity id", "mode", "status", title=f"entities of task {task_id}")
    for r in rows:
        shown.add_row(plain(r.entity_type), plain(r.entity_id), "read" if r.read_only else "write", styled(r.status))
    out.print(shown)


@app.command()
def active(as_json: JsonOpt = False) -> None:
    """Every task not yet cleared on the agent (empty when the engine is idle)."""
    from projections.documents import ActiveTasksView

    with open_session("write-if-possible") as session:
        fresh = session.freshness("active_tasks")
        rows = session.read_models.queries.active_tasks()
    if as_json:
        print_json(ActiveTasksView(freshness=fresh, tasks=rows))
        return
    from orchestrator.cli.render import plain, styled, table

    shown = table("task", "agent task", "verb", "status", "root command", title="active tasks", ids=["task"])
    for r in rows:
        agent_task = plain(r.agent_task_id or "none")
        shown.add_row(plain(r.task_id), agent_task, plain(r.verb), styled(r.status), r.root_command_id)
    out.print(shown if rows else "no active tasks")


@app.command()
def locks(
    entity: Annotated[str | None, typer.Option(help="only this TYPE:ID")] = None, as_json: JsonOpt = False
) -> None:
    """Entity locks held now (durable: they are events on the entities).

    Exit codes: 4 not TYPE:ID; 6 no such entity in the inventory.
    """
    from orchestrator.documents import LockView

    with open_session("read") as session:
        if entity:
            ref = _known_entity(session, entity)
            found = session.service.entity(ref)
            items = [found] if found is not None else []
        else:
            items = session.service.inventory()
    held = LockView.all_of(items)
    if as_json:
        print_json(held)
        return
    from orchestrator.cli.render import plain, table

    shown = table("entity", "mode", "command", "command type", title="held locks", ids=["command"])
    for lock in held:
        held_entity = plain(f"{lock.entity_type}:{lock.entity_id}")
        shown.add_row(held_entity, lock.mode, lock.command_id, plain(lock.command_type))
    out.print(shown if held else "no locks held")


@app.command()
def inventory(
    all_entities: Annotated[bool, typer.Option("--all", help="include removed entities")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The engine-side inventory: storage domains, VMs, disks, templates, snapshots."""
    from orchestrator.documents import InventoryItemView

    with open_session("read") as session:
        items = [InventoryItemView.of(e) for e in session.service.inventory() if all_entities or not e.removed]
    if as_json:
        print_json(items)
        return
    from orchestrator.cli.render import plain, table

    shown = table("type", "id", "status", "details", "locks", title="inventory")
    for i in items:
        detail = ", ".join(f"{k}={v}" for k, v in i.details.items() if v)
        shown.add_row(
            plain(i.type),
            plain(i.id + (" (removed)" if i.removed else "")),
            plain(i.status or ""),
            plain(detail),
            plain(", ".join(f"{lk.mode}:{lk.command_id[:8]}" for lk in i.locks)),
        )
    out.print(shown if items else "the inventory is empty ('orchestrator seed' makes one)")
