"""`run`: the engine, recovering first, until stopped (SIGINT/SIGTERM) or idle."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Annotated

import typer

from orchestrator.cli.context import JsonOpt, open_orchestrator, print_json

app = typer.Typer()
log = logging.getLogger("orchestrator")


class StopSignals:
    """SIGINT and SIGTERM set `stop`, and each is logged once (the process then ends gracefully)."""

    def __init__(self, what: str) -> None:
        self.stop = threading.Event()
        self.received: str | None = None
        self.what = what
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            log.info("%s: stopping (%s)", name, self.what, extra={"event": "signal", "signal": name})
        self.received = self.received or name
        self.stop.set()


@app.command()
def run(
    until_idle: Annotated[bool, typer.Option("--until-idle", help="stop when nothing is in flight")] = False,
    poll_interval: Annotated[float | None, typer.Option(help="seconds between poll cycles")] = None,
    timeout: Annotated[float | None, typer.Option(min=0, help="give up (exit 9) after this many seconds")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="fail if another engine runs; do not stand by")] = False,
    no_projections: Annotated[
        bool, typer.Option("--no-projections", help="leave the read models to 'projections run' (PostgreSQL)")
    ] = False,
    pools: Annotated[
        str | None, typer.Option("--pools", help="run only these pools (comma-separated); default: a fair share")
    ] = None,
    exit_on_lease_loss: Annotated[
        bool, typer.Option("--exit-on-lease-loss", help="exit (code 12) when a pool's lease is lost; default: stand by")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recover, then execute accepted commands and poll until stopped (SIGINT/SIGTERM: graceful).

    On PostgreSQL several engines share the storage pools, each under a fenced lease (a fair share,
    or --pools); on SQLite one engine runs at a time. An engine stands by for pools held by others
    and takes them over when their engine dies or freezes. It logs what it does (--log-format json
    for one object a line). Exit codes: 7 the agent could not be used before --timeout; 8 another
    engine holds everything (--no-wait); 9 --timeout expired with commands in flight; 12 a lease
    was lost (--exit-on-lease-loss).
    """
    from orchestrator.bootstrap import EngineOptions, run_engine
    from orchestrator.config import load_engine_settings

    settings = load_engine_settings(poll_interval=poll_interval)
    logging.getLogger("orchestrator").setLevel(logging.INFO)
    signals = StopSignals("the engine finishes its cycle and releases its lease")
    from orchestrator.errors import InputError

    pinned = tuple(sorted({p.strip() for p in pools.split(",") if p.strip()})) if pools is not None else None
    if pinned is not None and not pinned:
        raise InputError("--pools needs at least one pool id (e.g. --pools p1,p2)")
    options = EngineOptions(
        until_idle=until_idle,
        wait_for_lease=not no_wait,
        update_projections=not no_projections,
        timeout=timeout,
        pools=pinned,
        exit_on_lease_loss=exit_on_lease_loss,
    )
    started = time.monotonic()
    # A store that cannot be reached at the start is an error (exit 3, for a supervisor to retry);
    # once running, the engine rides through store outages.
    with open_orchestrator(create=True) as orch:
        log.info("engine starting on %s", orch.config.redacted, extra={"event": "starting"})
        run_engine(orch, settings, options, signals.stop)
    if as_json:
        from orchestrator.documents import RunReport

        print_json(
            RunReport(
                stopped_by="signal" if signals.received else "idle",
                signal=signals.received,
                seconds=round(time.monotonic() - started, 3),
            )
        )
