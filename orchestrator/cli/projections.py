"""`projections status|rebuild|run`: the read models' lag, rebuilding and verifying them, following the log."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.cli.context import JsonOpt, out, print_json, stderr_console
from orchestrator.cli.stores import open_session
from orchestrator.cli.terminal import printable

if TYPE_CHECKING:
    from rich.console import Console

    from projections import ReadModel, ReadModelRunner
    from projections.runner import RebuildResult, VerifyResult

app = typer.Typer(no_args_is_help=True, help="Read models: status, rebuild, verify, follow.")
log = logging.getLogger("orchestrator")
EXIT_DIFFERENCE = 10


@app.command("status")
def projections_status(as_json: JsonOpt = False) -> None:
    """Each projection's position, the log's head, and the lag."""
    from projections.documents import ProjectionStatusView

    with open_session("read") as session:
        rows = [
            ProjectionStatusView(name=s.name, position=s.position, head=s.head, lag=s.lag)
            for s in session.read_models.runner.status()
        ]
    if as_json:
        print_json(rows)
        return
    from orchestrator.cli.render import table

    shown = table("projection", "position", "head", "lag", title="projections")
    for r in rows:
        shown.add_row(r.name, str(r.position), str(r.head), str(r.lag))
    out.print(shown)


@app.command("rebuild")
def projections_rebuild(
    names: Annotated[list[str] | None, typer.Argument(help="projections (default: all)")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="compare a fresh build with the live view")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild read models from the whole log and swap them in, or --verify them against a fresh build.

    Shows its progress on a terminal. Exit codes: 4 an unknown read model; 10 --verify found a
    difference; 13 another rebuild, verification or prune is running.
    """
    from projections import select_read_models

    chosen = select_read_models(names or [])
    with open_session("write") as session:
        results = _with_progress(session.read_models.runner, chosen, verify, stderr_console())
    ok = _report(results, as_json)
    if not ok:
        raise typer.Exit(EXIT_DIFFERENCE)


@app.command("run")
def projections_run(
    interval: Annotated[
        float, typer.Option(min=0.01, max=3600, help="seconds between looks at the log when it is idle")
    ] = 0.2,
    batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1_000_000,
            help="events a transaction (default 2,000 on SQLite, whose writers wait for each; 20,000 on PostgreSQL)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow the log and keep every projection current until SIGINT/SIGTERM (PostgreSQL: a process of its own)."""
    from orchestrator.cli.engine import StopSignals
    from projections.documents import ProjectionsRunReport, ProjectionStatusView

    logging.getLogger("orchestrator").setLevel(logging.INFO)
    signals = StopSignals("the read models are left current up to the last batch")
    started = time.monotonic()
    with open_session("write") as session:
        log.info("following the log of %s", session.config.redacted, extra={"event": "starting"})
        session.read_models.runner.follow(signals.stop.is_set, interval, batch_size=batch)
        status = session.read_models.runner.status()
    if as_json:
        views = [ProjectionStatusView(name=s.name, position=s.position, head=s.head, lag=s.lag) for s in status]
        seconds = round(time.monotonic() - started, 3)
        print_json(ProjectionsRunReport(signal=signals.received, seconds=seconds, projections=views))


def _with_progress(
    runner: ReadModelRunner, chosen: list[ReadModel], verify: bool, console: Console
) -> list[RebuildResult | VerifyResult]:
    """Rebuild (or verify) each read model with a progress bar."""
    results: list[RebuildResult | VerifyResult] = []
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not sys.stderr.isatty(),
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
                    out.print(f"  {printable(d)}")
        else:
            out.print(
                f"{r.name}: rebuilt from {r.events:,} events in {r.seconds:.2f}s "
                f"({r.events_per_second:,.0f} events/s) and swapped in"
            )
    return ok
