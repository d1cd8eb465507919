"""`pools add|list|set-agent` and `agents`: the storage pools, which agent serves each, and how they answer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel, Field

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json

if TYPE_CHECKING:
    from orchestrator.bootstrap import Orchestrator
    from orchestrator.pools import PoolView

app = typer.Typer(no_args_is_help=True, help="Storage pools and their agents.")
AgentUrlOpt = Annotated[str | None, typer.Option("--agent", help="the agent's endpoint, http://HOST:PORT/rpc")]


@app.command("add")
def pools_add(
    pool_id: Annotated[str, typer.Argument(help="pool id (letters, digits, . _ -)")],
    agent: AgentUrlOpt = None,
    name: Annotated[str | None, typer.Option(help="a name to show")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a storage pool and the agent that runs its tasks."""
    from orchestrator.pools import add_pool

    with open_orchestrator(create=True) as orch:
        view = add_pool(orch, pool_id, agent, name)
    _print(view, as_json)


@app.command("set-agent")
def pools_set_agent(
    pool_id: Annotated[str, typer.Argument(help="pool id")],
    agent: Annotated[str, typer.Argument(help="the agent's endpoint, http://HOST:PORT/rpc ('' for none)")],
    as_json: JsonOpt = False,
) -> None:
    """Point a pool at another agent (an engine running switches to it at its next look at the log)."""
    from orchestrator.pools import set_pool_agent

    with open_orchestrator(create=True) as orch:
        view = set_pool_agent(orch, pool_id, agent or None)
    _print(view, as_json)


@app.command("list")
def pools_list(as_json: JsonOpt = False) -> None:
    """Every storage pool, its agent and its storage domains."""
    from rich.table import Table

    from orchestrator.pools import list_pools

    with open_orchestrator() as orch:
        pools = list_pools(orch)
    if as_json:
        print_json(pools)
        return
    table = Table("pool", "agent", "storage domains", title="storage pools")
    for p in pools:
        table.add_row(p.pool_id, p.agent_url or "simulated, in process", ", ".join(p.storage_domains) or "none")
    out.print(table)


def _print(view: PoolView, as_json: bool) -> None:
    if as_json:
        print_json(view)
    else:
        out.print(f"pool {view.pool_id}: agent {view.agent_url or 'simulated, in process'}")


class EngineSeen(BaseModel):
    """How the agent answers the engine that runs its pool (from that engine's last heartbeat)."""

    engine_id: str
    answered_at: float | None = Field(description="epoch seconds of the agent's last answer to the engine")
    latency_ms: float = Field(description="how long that answer took")
    consecutive_errors: int
    tasks_held: int = Field(description="tasks of the engine's commands on the agent, not yet cleared")
    trouble: str = Field(description="the engine's last error from this agent, if it is in trouble")


class AgentHealthView(BaseModel):
    """`agents --json`: one pool's agent, as a call to it answered just now, and as its engine sees it."""

    pool_id: str
    url: str | None = Field(description="its endpoint; none: the simulated agent in this process")
    reachable: bool
    latency_ms: float | None = Field(description="how long a status call took")
    tasks_held: int | None
    answered_at: float | None = Field(description="epoch seconds of the answer")
    error: str = ""
    engine: EngineSeen | None = Field(None, description="none: no engine runs the pool now")


def agents(as_json: JsonOpt = False) -> None:
    """Each pool's agent: its URL, whether it answers, how fast, how many tasks it holds."""
    from rich.table import Table

    from orchestrator.pools import list_pools

    with open_orchestrator() as orch:
        seen = _engines_view(orch)
        views = [
            _probe(orch, p.pool_id, p.agent_url).model_copy(update={"engine": seen.get(p.pool_id)})
            for p in list_pools(orch)
        ]
    if as_json:
        print_json(views)
        return
    table = Table("pool", "agent", "answers", "latency", "tasks held", "engine's view", title="agents")
    for v in views:
        latency = f"{v.latency_ms:.1f} ms" if v.latency_ms is not None else "-"
        held = str(v.tasks_held) if v.tasks_held is not None else "-"
        table.add_row(
            v.pool_id,
            v.url or "simulated, in process",
            "yes" if v.reachable else f"no: {v.error}",
            latency,
            held,
            _engine_text(v.engine),
        )
    out.print(table)


def _engine_text(seen: EngineSeen | None) -> str:
    if seen is None:
        return "no engine runs it"
    ago = f"{time.time() - seen.answered_at:.1f}s ago" if seen.answered_at else "never"
    errors = f", {seen.consecutive_errors} error(s) in a row: {seen.trouble}" if seen.consecutive_errors else ""
    return f"{seen.engine_id}: answered {ago} in {seen.latency_ms:.1f} ms, {seen.tasks_held} task(s){errors}"


def _engines_view(orch: Orchestrator) -> dict[str, EngineSeen]:
    """Per pool, what the engine holding its lease last reported of its agent."""
    from orchestrator.config import load_engine_settings

    table = orch.store.dialect.leases()
    try:
        snapshot = table.snapshot()
    finally:
        table.close()
    timeout = load_engine_settings().lease_timeout
    out: dict[str, EngineSeen] = {}
    for engine in snapshot.live_engines(timeout):
        for pool, health in engine.health.items():
            if snapshot.holder(pool) != engine.engine_id or not isinstance(health, dict):
                continue
            out[pool] = EngineSeen(
                engine_id=engine.engine_id,
                answered_at=health.get("answered_at"),
                latency_ms=float(health.get("latency_ms") or 0.0),
                consecutive_errors=int(health.get("consecutive_errors") or 0),
                tasks_held=int(health.get("tasks_held") or 0),
                trouble=str(health.get("trouble") or ""),
            )
    return out


def _probe(orch: Orchestrator, pool: str, url: str | None) -> AgentHealthView:
    from orchestrator.bootstrap.agents import MissingAgent
    from orchestrator.errors import OrchestratorError

    directory = orch.agents()
    try:
        agent = directory.agent_for(pool)
        if isinstance(agent, MissingAgent):
            return AgentHealthView(
                pool_id=pool, url=url, reachable=False, latency_ms=None, tasks_held=None, answered_at=None,
                error="no agent configured",
            )  # fmt: skip
        started = time.monotonic()
        try:
            held = len(agent.task_statuses())
        except OrchestratorError as exc:
            return AgentHealthView(
                pool_id=pool, url=url, reachable=False, latency_ms=None, tasks_held=None, answered_at=None,
                error=str(exc),
            )  # fmt: skip
        return AgentHealthView(
            pool_id=pool, url=url, reachable=True, latency_ms=(time.monotonic() - started) * 1000,
            tasks_held=held, answered_at=time.time(),
        )  # fmt: skip
    finally:
        directory.close()
