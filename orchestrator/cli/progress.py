"""Long commands: their progress, drawn on stderr only when it is a terminal (a pipe gets nothing), and their pace."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from orchestrator.cli.context import stderr_console

if TYPE_CHECKING:
    from orchestrator.service import CommandService


@contextmanager
def seed_progress(service: CommandService, vms: int, disks: int) -> Iterator[None]:
    """A seed's progress: planning (a spinner), then the entities recorded out of all it makes."""
    if not sys.stderr.isatty() or vms == 0:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    total = vms * (disks + 1)  # each VM and its disks (and at most two storage domains besides)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=False,
    ) as progress:
        job = progress.add_task(f"planning {vms:,} VM(s) with {disks} disk(s) each", total=total)

        def saved(count: int) -> None:
            progress.update(job, description="recording entities", advance=count)

        service.on_saved = saved
        try:
            yield
        finally:
            service.on_saved = None
        progress.update(job, description="seeded", completed=total)
