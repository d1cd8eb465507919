"""`inspect`: the read-only crash replay, for people (tables) and programs (--json; exit 20 if in flight)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.cli.context import G, JsonOpt, out, print_json
from orchestrator.cli.render import command_detail, styled
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from orchestrator.inspection import CommandHistory, InspectionReport

app = typer.Typer()


@app.command()
def inspect(
    command: Annotated[str | None, typer.Option("--command", help="one command's history")] = None,
    at_version: Annotated[int | None, typer.Option(help="with --command: state after event N")] = None,
    with_agent: Annotated[
        bool, typer.Option("--with-agent/--no-agent", help="reconcile with the agent's tasks")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Read-only crash replay: commands in flight and what recovery would decide (exit 20 if any)."""
    from orchestrator.bootstrap import inspect as inspect_store
    from orchestrator.inspection import EXIT_CLEAN, ReadOnlyStore, command_history

    if at_version is not None and command is None:
        raise InputError("--at-version needs --command ID: it shows one command as it was after event N")
    if command is not None:
        store = ReadOnlyStore(G.store)
        try:
            history = command_history(store, command, at_version)
        finally:
            store.close()
        print_json(history) if as_json else render_history(history, out)
        raise typer.Exit(EXIT_CLEAN)
    report = inspect_store(G.store, G.agent_state, with_agent=with_agent)
    print_json(report) if as_json else render_report(report, out)
    raise typer.Exit(report.exit_code)


def render_report(report: InspectionReport, console: Console) -> None:
    console.print(f"store {report.store}: log head at event {report.log_head}")
    console.print(report.agent_note)
    if not report.commands:
        console.print("nothing in flight: recovery has nothing to do")
        return
    overview = Table("command", "flow", "status", "agent ids", "verdict", "reason", title="commands in flight")
    for c in report.commands:
        with_id = sum(1 for t in c.tasks if t.agent_task_id)
        verdict = c.verdict + (" (provisional)" if c.provisional else "")
        overview.add_row(c.command_id, c.flow, styled(c.status), f"{with_id}/{len(c.tasks)}", verdict, c.reason)
    console.print(overview)
    for c in report.commands:
        tasks = Table("task", "agent task", "status", "entities", title=f"{c.flow} {c.command_id}: {c.verdict}")
        for t in c.tasks:
            mark = ""
            if t.task_id in c.orphans:
                mark = " [orphan on agent]"
            elif t.task_id in c.vanished:
                mark = " [vanished]"
            elif t.task_id in c.finished_while_down:
                mark = " [ended while down]"
            tasks.add_row(
                t.task_id,
                t.agent_task_id or "none",
                styled(t.status + mark),
                ", ".join(f"{e.type}:{e.id}" for e in t.entities),
            )
        console.print(tasks)
    counts = ", ".join(f"{n} {v}" for v, n in sorted(report.summary.items()))
    console.print(f"summary: {len(report.commands)} command(s) in flight: {counts}")


def render_history(history: CommandHistory, console: Console) -> None:
    table = Table("#", "time", "event", "detail", title=f"history of {history.command_id}")
    for e in history.events:
        table.add_row(str(e.version), e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.event, e.detail)
    console.print(table)
    console.print(f"state after event {history.state_version}:")
    console.print(command_detail(history.state))
