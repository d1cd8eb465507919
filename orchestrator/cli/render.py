"""Rich renderings shared by the CLI, the demo and the inspection script."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

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


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def commands_table(rows: list[CommandRow], title: str = "commands") -> Table:
    table = Table("command", "type", "status", "tasks", "uncleared", "accepted", "reason / summary", title=title)
    for r in rows:
        table.add_row(
            r.command_id,
            r.command_type,
            styled(r.status),
            str(r.task_count),
            str(r.uncleared_tasks),
            r.created_at.strftime("%H:%M:%S"),
            r.reason or r.summary,
        )
    return table


def command_detail(view: CommandView) -> Panel:
    head = Table.grid(padding=(0, 2))
    head.add_row("flow", view.flow)
    head.add_row("status", styled(view.status))
    head.add_row("summary", view.summary)
    if view.reason:
        head.add_row("reason", view.reason)
    if view.flagged:
        head.add_row("flagged", Text("yes: an end action gave up", style="bold red"))
    head.add_row("entities", ", ".join(f"{e.type}:{e.id} ({e.mode})" for e in view.entities))
    children = {c.child_id: c.command_type for c in view.children}
    tasks = Table("task", "child", "verb", "agent task", "status", "entities", title="tasks")
    for t in view.tasks:
        status = t.status + (f" ({t.end_kind})" if t.end_kind and t.end_kind != "finished" else "")
        if t.cleared and t.agent_task_id:
            status += ", cleared"
        tasks.add_row(
            t.task_id[:8],
            children.get(t.child_id, ""),
            t.verb,
            t.agent_task_id or "none",
            styled(status),
            ", ".join(f"{e.type}:{e.id}" for e in t.entities),
        )
    parts: list[Table] = [head, tasks]
    if view.recoveries:
        rec = Table("at", "verdict", "reason", title="recovery decisions")
        for r in view.recoveries:
            rec.add_row(r.at.strftime("%H:%M:%S"), r.verdict, r.reason)
        parts.append(rec)
    return Panel(Group(*parts), title=f"command {view.command_id}")
