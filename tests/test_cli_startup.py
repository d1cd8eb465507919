"""Issue 16: a command imports only what it uses, so it starts fast.

`orchestrator --help` loads Typer alone; the reading commands on SQLite never
load the engine, the agents, the composition root, psycopg or the HTTP stack.
Checked on the modules a real process has loaded when the command is done
(timings vary with the machine; the report gives them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from tests.conftest import REPO, cli_env

# Runs one command in a fresh interpreter, then writes the names of every module it had loaded.
PROBE = (
    "import json, sys\n"
    "from orchestrator.cli import main\n"
    "try:\n"
    "    main(sys.argv[2:])\n"
    "except SystemExit:\n"
    "    pass\n"
    "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules)))\n"
)
NEVER_FOR_READING = (
    "psycopg",
    "httpx",
    "uvicorn",
    "starlette",
    "eventsourcing.postgres",
    "orchestrator.engine",
    "orchestrator.bootstrap",
    "orchestrator.agent",
    "orchestrator.api",
    "orchestrator.testing",
    "pydantic_settings",
)
NEVER_FOR_HELP = (*NEVER_FOR_READING, "rich", "pydantic", "eventsourcing", "orchestrator.store", "sqlite3")


def loaded_by(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert out.exists(), proc.stderr[-3000:]
    return set(json.loads(out.read_text()))


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_help_loads_typer_alone(tmp_path: Path) -> None:
    for args in (["--help"], []):
        assert offending(loaded_by(tmp_path, *args), NEVER_FOR_HELP) == [], args


@pytest.fixture
def sqlite_store(tmp_path: Path) -> tuple[str, str, str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Orchestrator.open(url, agent_state=tmp_path / "agent.db", create=True) as orch:
        orch.seed(1, 2)
        command = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
        task = next(iter(orch.command(command.command_id).tasks))
    return url, str(command.command_id), task


def test_reading_commands_on_sqlite_load_neither_engine_nor_psycopg(
    sqlite_store: tuple[str, str, str], tmp_path: Path
) -> None:
    url, ident, task = sqlite_store
    for args in (
        ["show", ident],
        ["show", ident[:8], "--json"],
        ["list"],
        ["tasks", "--entity", "vm:vm-0001"],
        ["entities", "--task", task],
        ["active", "--json"],
        ["locks"],
        ["inventory", "--json"],
        ["inspect", "--command", ident],
        ["projections", "status"],
        ["wait", ident, "--timeout", "0"],
        ["cancel", ident, "--json"],
        ["schema", "show"],
    ):
        modules = loaded_by(tmp_path, *args, "--store", url)
        assert offending(modules, NEVER_FOR_READING) == [], args
        assert "orchestrator.domain.commands" in modules or args[0] == "schema", "the probe ran the command"
