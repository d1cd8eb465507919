"""`engines`: every engine on the store, the pools it runs under which epoch, and its last heartbeat."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel, Field

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json

if TYPE_CHECKING:
    from orchestrator.store.leases import LeaseSnapshot


class EngineLeaseView(BaseModel):
    pool_id: str
    epoch: int
    expires_in_seconds: float = Field(description="until the lease lapses unless renewed (database clock)")


class EngineView(BaseModel):
    """`engines --json`: one engine that runs, or ran, on the store."""

    engine_id: str
    host: str
    pid: int
    state: str = Field(description="running | silent (no heartbeat for a lease timeout) | stopped")
    started_at: float = Field(description="epoch seconds, database clock")
    heartbeat_age_seconds: float = Field(description="since its last heartbeat")
    pinned_pools: list[str] | None = Field(description="the pools it was told to run (run --pools); none: a share")
    pools: list[EngineLeaseView]


class EnginesView(BaseModel):
    engines: list[EngineView]
    unheld_pools: list[str] = Field(description="pools leased before whose lease nobody holds now")


def engine_views(snapshot: LeaseSnapshot, timeout: float, *, include_stopped: bool) -> EnginesView:
    views = []
    for engine in snapshot.engines:
        if engine.stopped_at is not None:
            state = "stopped"
        elif snapshot.now - engine.heartbeat_at < timeout:
            state = "running"
        else:
            state = "silent"
        if state == "stopped" and not include_stopped:
            continue
        leases = [
            EngineLeaseView(pool_id=r.pool, epoch=r.epoch, expires_in_seconds=round(r.expires_at - snapshot.now, 2))
            for r in snapshot.leases
            if r.engine_id == engine.engine_id and r.expires_at > snapshot.now
        ]
        views.append(
            EngineView(
                engine_id=engine.engine_id,
                host=engine.host,
                pid=engine.pid,
                state=state,
                started_at=engine.started_at,
                heartbeat_age_seconds=round(snapshot.now - engine.heartbeat_at, 2),
                pinned_pools=list(engine.pinned) if engine.pinned is not None else None,
                pools=leases,
            )
        )
    unheld = [r.pool for r in snapshot.leases if snapshot.holder(r.pool) is None]
    return EnginesView(engines=views, unheld_pools=unheld)


def engines(
    include_stopped: Annotated[bool, typer.Option("--all", help="also the engines that stopped")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Every engine on the store: its pools and their epochs, its last heartbeat (from the lease tables)."""
    from rich.table import Table

    from orchestrator.config import load_engine_settings

    timeout = load_engine_settings().lease_timeout
    with open_orchestrator() as orch:
        table = orch.store.dialect.leases()
        try:
            snapshot = table.snapshot()
        finally:
            table.close()
    view = engine_views(snapshot, timeout, include_stopped=include_stopped)
    if as_json:
        print_json(view)
        return
    shown = Table("engine", "host", "pid", "state", "heartbeat", "pools (epoch)", title="engines")
    for e in view.engines:
        pools = ", ".join(f"{p.pool_id} ({p.epoch})" for p in e.pools) or "none: standing by"
        if e.pinned_pools is not None:
            pools += f"; pinned to {', '.join(e.pinned_pools)}"
        shown.add_row(e.engine_id, e.host, str(e.pid), e.state, f"{e.heartbeat_age_seconds:.1f}s ago", pools)
    out.print(shown)
    if not view.engines:
        out.print("no engine is running" + (" (none ever ran here)" if not snapshot.engines else ""))
    if view.unheld_pools:
        out.print(f"pools no engine holds now: {', '.join(view.unheld_pools)}")
