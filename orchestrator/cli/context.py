"""What every sub-command shares: the global options, the consoles, printing documents.

Only the standard library and Typer are imported here: `orchestrator --help` and
the quick commands load Rich, pydantic and the store only when they use them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.cli.logs import LogFormat

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

    from orchestrator.bootstrap import Orchestrator

log = logging.getLogger("orchestrator")
# Where stdout is not a terminal, tables are this wide, so ids are never cut (COLUMNS wins if set).
PIPE_WIDTH = 240


class Globals:
    """The options of the `orchestrator` group (given before or after the sub-command)."""

    store: str | None = None
    agent_state_option: Path | None = None  # --agent-state as given
    verbose: bool = False
    log_format: LogFormat = "text"

    @property
    def agent_state(self) -> Path:
        """--agent-state, else ORCHESTRATOR_AGENT_STATE, else the store's own (worked out only when asked)."""
        from orchestrator.cli.stores import agent_state_for

        return agent_state_for(self.store, self.agent_state_option)

    @agent_state.setter
    def agent_state(self, value: Path | None) -> None:
        self.agent_state_option = value


G = Globals()

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="store URL: sqlite:///PATH or postgresql://USER@HOST/DB (env ORCHESTRATOR_STORE)"),
]
AgentOpt = Annotated[
    Path | None,
    typer.Option("--agent-state", help="simulated agent state file (env ORCHESTRATOR_AGENT_STATE)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON document (see 'orchestrator schema')")]


def console_width() -> int | None:
    """Rich's own detection on a terminal; a wide fixed width (or COLUMNS) when piped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPE_WIDTH


@cache
def stdout_console() -> Console:
    """The console for tables: no markup or emoji codes interpreted in what it prints (user text)."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, markup=False, emoji=False, width=console_width())


@cache
def stderr_console() -> Console:
    """Progress and waiting displays: stderr, and only drawn on a terminal."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, emoji=False)


class _LazyConsole:
    """`out.print(...)`: the stdout console, made on first use (Rich is not imported before)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(stdout_console(), name)


out: Any = _LazyConsole()


def open_orchestrator(create: bool = False) -> Orchestrator:
    """The composition root's orchestrator (for commands that need the agent or the engine)."""
    from orchestrator.bootstrap import Orchestrator
    from orchestrator.cli.stores import diagnosed

    with diagnosed():
        return Orchestrator.open(G.store, agent_state=G.agent_state, create=create)


def print_json(model: BaseModel | list[Any]) -> None:
    """A document (or a list of documents) on stdout, indented."""
    from pydantic import BaseModel

    if isinstance(model, list):
        data = [m.model_dump(mode="json") if isinstance(m, BaseModel) else m for m in model]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(model.model_dump_json(indent=2) + "\n")


def print_json_line(model: BaseModel) -> None:
    """A document as one line (JSON Lines: `show --follow --json`, `submit-many --json` streams)."""
    sys.stdout.write(model.model_dump_json() + "\n")
    sys.stdout.flush()
