"""`projections status|rebuild|run`: the read models' lag, rebuilding and verifying them, following the log."""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json

if TYPE_CHECKING:
    from projections import ReadModel, ReadModelRunner
    from projections.runner import RebuildResult, VerifyResult

app = typer.Typer(no_args_is_help=True, help="Read models: status, rebuild, verify, follow.")
EXIT_DIFFERENCE = 10


@app.command("status")
def projections_status(as_json: JsonOpt = False) -> None:
    """Each projection's position, the log's head, and the lag."""
    from projections.documents import ProjectionStatusView

    with open_orchestrator() as orch:
        rows = [
            ProjectionStatusView(name=s.name, position=s.position, head=s.head, lag=s.lag)
            for s in orch.read_models.runner.status()
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("projection", "position", "head", "lag", title="projections")
    for r in rows:
        table.add_row(r.name, str(r.position), str(r.head), str(r.lag))
    out.print(table)


@app.command("rebuild")
def projections_rebuild(
    names: Annotated[list[str] | None, typer.Argument(help="projections (default: all)")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="compare a fresh build with the live view")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild read models from the whole log and swap them in (or --verify them; exit 10 on a difference)."""
    from projections import select_read_models

    with open_orchestrator() as orch:
        runner = orch.read_models.runner
        chosen = select_read_models(names or [])
        results = _with_progress(runner, chosen, verify, Console(file=sys.stderr) if as_json else out)
    ok = _report(results, as_json)
    if not ok:
        raise typer.Exit(EXIT_DIFFERENCE)


@app.command("run")
def projections_run(interval: Annotated[float, typer.Option(min=0.01, max=3600)] = 0.2) -> None:
    """Follow the log and keep every projection current (PostgreSQL: a process of its own)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with open_orchestrator() as orch:
        orch.read_models.runner.follow(stop.is_set, interval)


def _with_progress(
    runner: ReadModelRunner, chosen: list[ReadModel], verify: bool, console: Console
) -> list[RebuildResult | VerifyResult]:
    """Rebuild (or verify) each read model with a progress bar."""
    results: list[RebuildResult | VerifyResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for model in chosen:
            verb = "verifying" if verify else "rebuilding"
            task = progress.add_task(f"{verb} {model.name}", total=runner.head(), rate=0.0)

            def report(position: int, head: int, task: TaskID = task) -> None:
                elapsed = max(progress.tasks[task].elapsed or 0.0, 1e-6)
                progress.update(task, completed=position, total=head, rate=position / elapsed)

            results.append(runner.verify(model, report) if verify else runner.rebuild(model, report))
    return results


def _report(results: list[RebuildResult | VerifyResult], as_json: bool) -> bool:
    """Print what each rebuild or verification found; False if a verification found a difference."""
    from projections.documents import ProjectionCheckView, ProjectionRebuildView
    from projections.runner import VerifyResult

    ok = all(r.ok for r in results if isinstance(r, VerifyResult))
    if as_json:
        print_json(
            [
                ProjectionCheckView(name=r.name, position=r.position, ok=r.ok, differences=r.differences)
                if isinstance(r, VerifyResult)
                else ProjectionRebuildView(
                    name=r.name,
                    events=r.events,
                    seconds=round(r.seconds, 3),
                    events_per_second=round(r.events_per_second, 1),
                )
                for r in results
            ]
        )
        return ok
    for r in results:
        if isinstance(r, VerifyResult):
            if r.ok:
                out.print(f"{r.name}: equal to a rebuild from the log (at event {r.position})")
            else:
                out.print(f"{r.name}: {len(r.differences)} difference(s) at event {r.position}:")
                for d in r.differences:
                    out.print(f"  {d}")
        else:
            out.print(
                f"{r.name}: rebuilt from {r.events:,} events in {r.seconds:.2f}s "
                f"({r.events_per_second:,.0f} events/s) and swapped in"
            )
    return ok
