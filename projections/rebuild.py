"""`orchestrator projections rebuild` and `scripts/rebuild_projections.py` (same code)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from projections.runner import RebuildResult, VerifyResult
from projections.views import Projection

if TYPE_CHECKING:
    from orchestrator.application import Orchestrator


class ProjectionRebuildView(BaseModel):
    """`projections rebuild --json`: one rebuilt and swapped-in projection."""

    name: str
    events: int
    seconds: float
    events_per_second: float


class ProjectionCheckView(BaseModel):
    """`projections rebuild --verify --json`: a fresh build compared with the live view."""

    name: str
    position: int = Field(description="the log position both were compared at")
    ok: bool
    differences: list[str]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} events"),
        TextColumn("{task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def rebuild_or_verify(
    orch: Orchestrator, projections: list[Projection], *, verify: bool, as_json: bool, console: Console
) -> bool:
    """Rebuild (or verify) each projection; False if a verification found a difference."""
    results: list[RebuildResult | VerifyResult] = []
    quiet = Console(file=sys.stderr) if as_json else console
    with _progress(quiet) as progress:
        for projection in projections:
            verb = "verifying" if verify else "rebuilding"
            task = progress.add_task(f"{verb} {projection.name}", total=orch.projections.head(), rate=0.0)

            def report(position: int, head: int, task: TaskID = task) -> None:
                elapsed = max(progress.tasks[task].elapsed or 0.0, 1e-6)
                progress.update(task, completed=position, total=head, rate=position / elapsed)

            result: RebuildResult | VerifyResult
            if verify:
                result = orch.projections.verify(projection, report)
            else:
                result = orch.projections.rebuild(projection, report)
            results.append(result)
    ok = all(r.ok for r in results if isinstance(r, VerifyResult))
    if as_json:
        doc = [
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
        sys.stdout.write(json.dumps([d.model_dump() for d in doc], indent=2) + "\n")
        return ok
    for r in results:
        if isinstance(r, VerifyResult):
            if r.ok:
                console.print(f"{r.name}: equal to a rebuild from the log (at event {r.position})")
            else:
                console.print(f"{r.name}: {len(r.differences)} difference(s) at event {r.position}:")
                for d in r.differences:
                    console.print(f"  {d}")
        else:
            console.print(
                f"{r.name}: rebuilt from {r.events:,} events in {r.seconds:.2f}s "
                f"({r.events_per_second:,.0f} events/s) and swapped in"
            )
    return ok
