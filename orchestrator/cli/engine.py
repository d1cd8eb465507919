"""`run`: the engine, recovering first, until stopped (SIGINT/SIGTERM) or idle."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from orchestrator.cli.context import open_orchestrator

app = typer.Typer()


@app.command()
def run(
    until_idle: Annotated[bool, typer.Option("--until-idle", help="stop when nothing is in flight")] = False,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between poll cycles")] = None,
    timeout: Annotated[float | None, typer.Option(help="give up (exit 9) after this many seconds")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="fail if another engine runs; do not stand by")] = False,
    no_projections: Annotated[
        bool, typer.Option("--no-projections", help="leave the read models to 'projections run' (PostgreSQL)")
    ] = False,
) -> None:
    """Recover, then execute accepted commands and poll until stopped (SIGINT/SIGTERM)."""
    from orchestrator.bootstrap import EngineOptions, run_engine
    from orchestrator.config import load_engine_settings

    settings = load_engine_settings(poll_interval=poll_interval)
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    options = EngineOptions(
        until_idle=until_idle, wait_for_lease=not no_wait, update_projections=not no_projections, timeout=timeout
    )
    with open_orchestrator(create=True) as orch:
        run_engine(orch, settings, options, stop)
