"""`agent show`, `agent faults`: administering the simulated agent (the test double and demo agent)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.table import Table

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json

if TYPE_CHECKING:
    from orchestrator.testing import FaultConfig, SimulatedAgent

app = typer.Typer(no_args_is_help=True, help="The simulated host agent.")


class AgentTaskRow(BaseModel):
    agent_task_id: str
    key: str
    verb: str
    state: str
    result: str
    message: str
    cleared: bool
    vanished: bool


class SimulatedAgentView(BaseModel):
    """`agent show --json`: the simulated agent's tasks (with keys), storage and faults."""

    state_file: str
    tasks: list[AgentTaskRow]
    volumes: list[dict[str, Any]]
    faults: dict[str, Any]


def _agent() -> SimulatedAgent:
    with open_orchestrator(create=True) as orch:
        return orch.open_agent()


@app.command("show")
def agent_show(
    history: Annotated[bool, typer.Option("--history", help="include cleared tasks")] = False, as_json: JsonOpt = False
) -> None:
    """The simulated agent's tasks (with keys) and its storage (images and volumes)."""
    agent = _agent()
    try:
        rows = [
            AgentTaskRow(
                agent_task_id=r["agent_task_id"],
                key=r["key"],
                verb=r["verb"],
                state=r["state"],
                result=r["result"],
                message=r["message"],
                cleared=r["cleared_at"] is not None,
                vanished=bool(r["vanished"]),
            )
            for r in agent.backend.journal()
            if history or (r["cleared_at"] is None and not r["vanished"])
        ]
        view = SimulatedAgentView(
            state_file=str(agent.backend.path),
            tasks=rows,
            volumes=agent.backend.storage_snapshot()["volumes"],
            faults=agent.backend.faults().model_dump(),
        )
    finally:
        agent.close()
    if as_json:
        print_json(view)
        return
    table = Table("agent task", "key", "verb", "state", "result", "cleared", title=f"agent tasks ({view.state_file})")
    for t in view.tasks:
        table.add_row(t.agent_task_id, t.key, t.verb, t.state, t.result, "yes" if t.cleared else "no")
    out.print(table if view.tasks else "the agent holds no tasks")
    vols = Table("storage domain", "image", "volume", "parent", title="agent storage")
    for v in view.volumes:
        vols.add_row(v["storage_domain_id"], v["image_id"], v["volume_id"], v["parent_id"] or "")
    out.print(vols)


@app.command("faults")
def agent_faults(
    fail_verb: Annotated[list[str] | None, typer.Option(help="tasks of this verb fail (repeatable)")] = None,
    fail_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of tasks that fail")] = None,
    refuse_verb: Annotated[list[str] | None, typer.Option(help="creation of this verb is refused")] = None,
    vanish_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of tasks that vanish")] = None,
    unreachable_for: Annotated[float | None, typer.Option(min=0, help="seconds the agent is unreachable")] = None,
    malformed_for: Annotated[float | None, typer.Option(min=0, help="seconds the agent answers garbage")] = None,
    malformed_share: Annotated[float | None, typer.Option(min=0, max=1, help="share of garbage answers")] = None,
    phantoms: Annotated[int | None, typer.Option(min=0, max=100, help="tasks reported but never given")] = None,
    extra_seconds: Annotated[float | None, typer.Option(min=0, help="added to every task's duration")] = None,
    latency: Annotated[float | None, typer.Option(min=0, help="seconds each call takes")] = None,
    create_answer_latency: Annotated[
        float | None, typer.Option(min=0, help="seconds a create call's answer is held after the tasks were made")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="switch every fault off first")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the simulated agent's faults (kept in its state file)."""
    now = time.time()
    changes: dict[str, Any] = {
        "fail_verbs": fail_verb,
        "fail_share": fail_share,
        "refuse_verbs": refuse_verb,
        "vanish_share": vanish_share,
        "malformed_share": malformed_share,
        "phantom_tasks": phantoms,
        "extra_task_seconds": extra_seconds,
        "call_latency": latency,
        "create_answer_latency": create_answer_latency,
        "unreachable_until": now + unreachable_for if unreachable_for is not None else None,
        "malformed_until": now + malformed_for if malformed_for is not None else None,
    }
    config = _set_faults({k: v for k, v in changes.items() if v is not None}, clear=clear)
    if as_json:
        print_json(config)
    else:
        out.print(config.model_dump())


def _set_faults(changes: dict[str, Any], *, clear: bool) -> FaultConfig:
    from orchestrator.testing import FaultConfig

    agent = _agent()
    try:
        config = FaultConfig() if clear else agent.backend.faults()
        config = FaultConfig.model_validate({**config.model_dump(), **changes})
        agent.backend.set_faults(config)
        return config
    finally:
        agent.close()


@app.command("serve")
def agent_serve(
    state: Annotated[Path, typer.Option("--state", help="the simulated agent's state file (created if missing)")],
    pool: Annotated[str, typer.Option("--pool", help="the storage pool it serves")] = "default",
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT (port 0: a free one, printed)")] = "127.0.0.1:0",
    url_file: Annotated[Path | None, typer.Option("--url-file", help="also write the URL served here")] = None,
    task_seconds: Annotated[float | None, typer.Option("--task-seconds", min=0, help="how long a task takes")] = None,
) -> None:
    """Serve the simulated agent over the network (JSON-RPC, docs/agent-protocol.md) until SIGTERM/SIGINT.

    Its tasks go on while no engine is connected: they live in the state file."""
    from orchestrator.testing import serve

    serve(state, pool, listen=listen, url_file=url_file, task_seconds=task_seconds)
