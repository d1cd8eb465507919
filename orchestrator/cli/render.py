"""Rich renderings shared by the CLI, the demo and the inspection script.

Everything that came from a user, the store or an agent is put in a cell as a
`Text` of its printable form: Rich markup in it (`[red]x[/]`) shows literally,
and control characters are escaped (orchestrator/cli/terminal.py). Id columns
never wrap, so an id is never cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from orchestrator.cli.terminal import printable

if TYPE_CHECKING:
    from orchestrator.documents import CommandView
    from projections.queries import CommandRow

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "ending": "yellow",
    "accepted": "cyan",
    "planned": "cyan",
}
ID_WIDTH = 36  # a UUID


def plain(value: object) -> Text:
    """A cell showing a value exactly as it is (markup literal, control characters escaped)."""
    return Text(printable("" if value is None else str(value)))


def styled(status: str) -> Text:
    return Text(printable(status), style=STATUS_STYLE.get(status.split(" ", maxsplit=1)[0].rstrip(","), ""))


def bold(text: str, style: str = "bold") -> Text:
    return Text(printable(text), style=style)


def table(*columns: str, title: str, ids: Iterable[str] = ()) -> Table:
    """A table whose id columns (named in `ids`) never wrap or shrink below an id's width."""
    made = Table(title=printable(title))
    id_columns = set(ids)
    for name in columns:
        if name in id_columns:
            made.add_column(name, no_wrap=True, min_width=ID_WIDTH)
        else:
            made.add_column(name, overflow="fold")
    return made


def commands_table(rows: list[CommandRow], title: str = "commands") -> Table:
    shown = table(
        "command", "type", "status", "tasks", "uncleared", "accepted", "reason / summary", title=title, ids=["command"]
    )
    for r in rows:
        shown.add_row(
            plain(r.command_id),
            plain(r.command_type),
            styled(r.status),
            str(r.task_count),
            str(r.uncleared_tasks),
            r.created_at.strftime("%H:%M:%S"),
            plain(r.reason or r.summary),
        )
    return shown


def command_detail(view: CommandView) -> Panel:
    head = Table.grid(padding=(0, 2))
    head.add_row("flow", plain(view.flow))
    head.add_row("status", styled(view.status))
    head.add_row("summary", plain(view.summary))
    if view.reason:
        head.add_row("reason", plain(view.reason))
    if view.terminated:
        head.add_row("terminated", bold(f"by the operator: {view.terminate_reason}", "bold red"))
    elif view.cancel_reason:
        head.add_row("cancel", plain(f"requested: {view.cancel_reason}"))
    if view.flagged:
        head.add_row("flagged", bold("yes: look at this command (an end action gave up, or it was terminated)", "red"))
    if view.retry_of:
        head.add_row("retry of", plain(view.retry_of))
    if view.retries:
        head.add_row("retried as", plain(", ".join(view.retries)))
    head.add_row("entities", plain(", ".join(f"{e.type}:{e.id} ({e.mode})" for e in view.entities)))
    children = {c.child_id: c.command_type for c in view.children}
    tasks = table("task", "child", "verb", "agent task", "status", "entities", title="tasks", ids=["task"])
    for t in view.tasks:
        status = t.status + (f" ({t.end_kind})" if t.end_kind and t.end_kind != "finished" else "")
        if t.cleared and t.agent_task_id:
            status += ", cleared"
        tasks.add_row(
            plain(t.task_id),
            plain(children.get(t.child_id, "")),
            plain(t.verb),
            plain(t.agent_task_id or "none"),
            styled(status),
            plain(", ".join(f"{e.type}:{e.id}" for e in t.entities)),
        )
    parts: list[Table] = [head, tasks]
    if view.recoveries:
        rec = table("at", "verdict", "reason", title="recovery decisions")
        for r in view.recoveries:
            rec.add_row(r.at.strftime("%H:%M:%S"), plain(r.verdict), plain(r.reason))
        parts.append(rec)
    return Panel(Group(*parts), title=f"command {view.command_id}", expand=False)
