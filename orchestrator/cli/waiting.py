"""Waiting for commands: `wait`, `submit --wait`, `show --follow`.

Commands are read from the store (their own histories, not the read models) a
few times a second until they end or the time is up. On a terminal a Rich
display on stderr shows each command's tasks ending; without one nothing is
drawn, so a script's output stays clean. The exit code says how they ended:
0 every one succeeded, 11 one or more failed, 9 the timeout expired first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer

from orchestrator.cli.context import JsonOpt, print_json, stderr_console
from orchestrator.cli.stores import Session, open_session

if TYPE_CHECKING:
    from orchestrator.documents import WaitedCommand, WaitReport
    from orchestrator.domain.commands import RootCommand

EXIT_FAILED = 11
EXIT_TIMEOUT = 9
POLL_SECONDS = 0.2
TimeoutOpt = Annotated[float | None, typer.Option(min=0, help="give up after this many seconds (exit 9)")]

app = typer.Typer()


@app.command()
def wait(
    command_ids: Annotated[list[str], typer.Argument(help="command ids (or unique prefixes of 6+ characters)")],
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until commands end.

    Shows their tasks ending on a terminal (quiet otherwise). Exit codes: 0 every
    command succeeded; 11 one or more failed; 9 --timeout expired with one or more
    still in flight (and none failed); 6 no such command.
    """
    with open_session("write-if-possible") as session:
        ids = list(dict.fromkeys(session.resolve_command_id(c) for c in command_ids))
        report = wait_for(session, ids, timeout)
    if as_json:
        print_json(report)
    else:
        print_report(report)
    raise typer.Exit(exit_code(report))


def wait_for(session: Session, ids: list[UUID], timeout: float | None) -> WaitReport:
    """Poll the commands until every one has ended, or `timeout` seconds have passed."""
    from orchestrator.documents import WaitReport

    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    with _progress_display() as show:
        while True:
            commands = [session.command(i) for i in ids]
            show(commands)
            if all(c.ended for c in commands) or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(POLL_SECONDS)
    waited = [_waited(c) for c in commands]
    if any(w.ended and w.status == "failed" for w in waited):
        outcome = "failed"
    elif all(w.ended for w in waited):
        outcome = "succeeded"
    else:
        outcome = "timeout"
    return WaitReport(outcome=outcome, seconds=round(time.monotonic() - started, 3), commands=waited)


def exit_code(report: WaitReport) -> int:
    return {"succeeded": 0, "failed": EXIT_FAILED, "timeout": EXIT_TIMEOUT}[report.outcome]


def print_report(report: WaitReport) -> None:
    from orchestrator.cli.terminal import printable

    for w in report.commands:
        state = w.status if w.ended else f"still {w.status} ({w.tasks_ended}/{w.tasks} tasks ended)"
        reason = f": {printable(w.reason)}" if w.ended and w.reason else ""
        sys.stdout.write(f"{w.command_id} {w.flow} {state}{reason}\n")
    if report.outcome == "timeout":
        sys.stdout.write(f"timed out after {report.seconds:g}s\n")


def _waited(command: RootCommand) -> WaitedCommand:
    from orchestrator.documents import WaitedCommand

    reason = command.outcome_reason or (command.failure_summary() if command.failure_reason else "")
    return WaitedCommand(
        command_id=str(command.id),
        flow=command.flow,
        status=command.status.value,
        ended=command.ended,
        reason=reason,
        flagged=command.flagged,
        tasks=len(command.tasks),
        tasks_ended=sum(1 for t in command.tasks.values() if t.ended),
    )


@contextmanager
def _progress_display() -> Iterator[Callable[[list[RootCommand]], None]]:
    """A function to show commands' progress: a Rich display on a terminal's stderr, nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda commands: None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    bars: dict[UUID, TaskID] = {}
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tasks ended"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as progress:

        def show(commands: list[RootCommand]) -> None:
            for c in commands:
                ended = sum(1 for t in c.tasks.values() if t.ended)
                described = f"{c.flow} {str(c.id)[:8]} {c.status.value}"
                if c.id not in bars:
                    bars[c.id] = progress.add_task(described, total=max(len(c.tasks), 1), completed=ended)
                else:
                    progress.update(bars[c.id], description=described, completed=ended)

        yield show


def follow(session: Session, ident: UUID, render: Callable[[RootCommand], None]) -> RootCommand:
    """Call `render` with the command each time it changes, until it has ended."""
    shown = -1
    while True:
        command = session.command(ident)
        if command.version != shown:
            render(command)
            shown = command.version
        if command.ended:
            return command
        time.sleep(POLL_SECONDS)
