"""What every sub-command shares: the global options, opening the orchestrator, printing.

Heavy modules (the store, the engine, the read models) are imported inside the
commands that use them, so `orchestrator --help` and quick commands start fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

if TYPE_CHECKING:
    from orchestrator.bootstrap import Orchestrator

out = Console(highlight=False, soft_wrap=False, width=160)
log = logging.getLogger("orchestrator")


class Globals:
    """The options of the `orchestrator` group (they go before the sub-command)."""

    store: str | None = None
    agent_state: Path | None = None


G = Globals()

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="store URL: sqlite:///PATH or postgresql://USER@HOST/DB (env ORCHESTRATOR_STORE)"),
]
AgentOpt = Annotated[
    Path | None,
    typer.Option("--agent-state", help="simulated agent state file (env ORCHESTRATOR_AGENT_STATE)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON document instead of tables")]


def open_orchestrator(create: bool = False) -> Orchestrator:
    from orchestrator.bootstrap import Orchestrator

    return Orchestrator.open(G.store, agent_state=G.agent_state, create=create)


def print_json(model: BaseModel | list[Any]) -> None:
    if isinstance(model, list):
        data = [m.model_dump(mode="json") if isinstance(m, BaseModel) else m for m in model]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(model.model_dump_json(indent=2) + "\n")
