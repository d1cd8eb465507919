"""`inspect`: the read-only crash replay, for people (tables) and programs (--json; exit 20 if in flight)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.context import G, JsonOpt, out, print_json
from orchestrator.cli.stores import access_for_id, diagnosed, open_session
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.inspection import CommandHistory, InspectionReport

app = typer.Typer()


@app.command()
def inspect(
    command: Annotated[str | None, typer.Option("--command", help="one command's history (id or prefix)")] = None,
    at_version: Annotated[int | None, typer.Option(help="with --command: its state after event N")] = None,
    with_agent: Annotated[
        bool, typer.Option("--with-agent/--no-agent", help="reconcile with the agents' tasks")
    ] = True,
    archive: Annotated[
        Path | None, typer.Option("--archive", help="read an archive written by prune, not the store")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read-only crash replay: every command in flight and what recovery would decide. Changes nothing.

    Exit codes: 0 nothing is in flight; 20 one or more commands are in flight (the verdicts say what
    recovery would do with each); 3 the store cannot be read; 4 a bad --at-version, or an archive that
    is not a complete, readable one; 6 no such command. With --command: 0 (the command's history is
    shown). With --archive FILE: what the archive holds, or with --command one archived command's history.
    """
    from orchestrator.documents import as_document

    if at_version is not None and command is None:
        raise InputError("--at-version needs --command ID: it shows one command as it was after event N")
    if archive is not None:
        _inspect_archive(archive, command, at_version, as_json)
        return
    if command is not None:
        history = _history(command, at_version)
        print_json(as_document(history, "command-history")) if as_json else render_history(history, out)
        return
    from orchestrator.bootstrap import inspect as inspect_store

    with diagnosed():
        report = inspect_store(G.store, G.agent_state, with_agent=with_agent)
    print_json(as_document(report, "inspection")) if as_json else render_report(report, out)
    raise typer.Exit(report.exit_code)


def _inspect_archive(archive: Path, command: str | None, at_version: int | None, as_json: bool) -> None:
    """An archive instead of the store: its listing (as `archive show`), or one command's history."""
    if command is None:
        from orchestrator.cli.prune import archive_show

        archive_show(archive, as_json)
        return
    from orchestrator.documents import as_document
    from orchestrator.errors import NotFoundError
    from orchestrator.inspection import history_of
    from orchestrator.retention import read_archive

    wanted = command.strip().lower()
    if len(wanted) < 6:
        raise InputError(f"command id prefix {command!r} is too short: give 6 or more characters")
    found = [c for c in read_archive(archive) if str(c.command_id).startswith(wanted)]
    if not found:
        raise NotFoundError(f"no command id starts with {wanted} in archive {archive}")
    if len(found) > 1:
        raise InputError(f"{wanted} names {len(found)} archived commands; give more of the id")
    archived = found[0]
    if at_version is not None and not 1 <= at_version <= len(archived.events):
        raise InputError(
            f"archived command {archived.command_id} has {len(archived.events)} event(s); "
            f"--at-version must be 1 to {len(archived.events)}"
        )
    history = history_of(f"archive {archive}", archived.events, at_version)
    print_json(as_document(history, "command-history")) if as_json else render_history(history, out)


def _history(command: str, at_version: int | None) -> CommandHistory:
    from orchestrator.cli.queries import command_at
    from orchestrator.inspection import ReadOnlyStore, command_history

    with open_session(access_for_id(command)) as session:
        ident = session.resolve_command_id(command)
        command_at(session, ident, at_version)  # an --at-version beyond its history is refused here
    with diagnosed():
        store = ReadOnlyStore(G.store)
    try:
        return command_history(store, str(ident), at_version)
    finally:
        store.close()


def render_report(report: InspectionReport, console: Console) -> None:
    from orchestrator.cli.render import plain, styled, table

    console.print(plain(f"store {report.store}: log head at event {report.log_head}"))
    console.print(plain(report.agent_note))
    if not report.commands:
        console.print("nothing in flight: recovery has nothing to do")
        return
    overview = table(
        "command", "flow", "status", "agent ids", "verdict", "reason", title="commands in flight", ids=["command"]
    )
    for c in report.commands:
        with_id = sum(1 for t in c.tasks if t.agent_task_id)
        verdict = c.verdict + (" (provisional)" if c.provisional else "")
        overview.add_row(
            c.command_id, plain(c.flow), styled(c.status), f"{with_id}/{len(c.tasks)}", plain(verdict), plain(c.reason)
        )
    console.print(overview)
    for c in report.commands:
        tasks = table("task", "agent task", "status", "entities", title=f"{c.flow} {c.command_id}: {c.verdict}")
        for t in c.tasks:
            mark = ""
            if t.task_id in c.orphans:
                mark = " [orphan on agent]"
            elif t.task_id in c.vanished:
                mark = " [vanished]"
            elif t.task_id in c.finished_while_down:
                mark = " [ended while down]"
            tasks.add_row(
                plain(t.task_id),
                plain(t.agent_task_id or "none"),
                styled(t.status + mark),
                plain(", ".join(f"{e.type}:{e.id}" for e in t.entities)),
            )
        console.print(tasks)
    counts = ", ".join(f"{n} {v}" for v, n in sorted(report.summary.items()))
    console.print(f"summary: {len(report.commands)} command(s) in flight: {counts}")


def render_history(history: CommandHistory, console: Console) -> None:
    from orchestrator.cli.render import command_detail, plain, table

    shown = table("#", "time", "event", "detail", title=f"history of {history.command_id}")
    for e in history.events:
        shown.add_row(str(e.version), e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], plain(e.event), plain(e.detail))
    console.print(shown)
    console.print(f"state after event {history.state_version}:")
    console.print(command_detail(history.state))
