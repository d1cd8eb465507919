"""Helpers shared by the tests of the command line (tests/test_cli_*.py); no tests here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, cli_env, run_cli

FAST_ENGINE = {"ORCHESTRATOR_AGENT_TASK_SECONDS": "0.2", "ORCHESTRATOR_POLL_INTERVAL": "0.05"}


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(**{**FAST_ENGINE, **extra})


def cli(store_url: str, agent_state: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`orchestrator ARGS --store URL --agent-state PATH`: the global options after the sub-command."""
    return run_cli(*args, "--store", store_url, "--agent-state", str(agent_state), **kwargs)


def cli_json(store_url: str, agent_state: Path, *args: str, code: int = 0, **kwargs: Any) -> Any:
    proc = cli(store_url, agent_state, *args, "--json", **kwargs)
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI's contract for a refusal: exit `code`, one line on stderr starting `error: `, nothing on stdout."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, f"expected one line on stderr:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def cli_stdin(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`orchestrator ARGS` reading `text` on its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=120,
        check=False,
    )


def run_engine(store_url: str, agent_state: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An engine process until nothing is in flight (fails the test if it does not get there)."""
    proc = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "60", *args, env=engine_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
