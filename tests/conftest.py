"""Shared fixtures: real SQLite files, a real PostgreSQL schema per test, engine helpers.

Every storage test runs on both backends through the `store_url` fixture. If
PostgreSQL cannot be reached, those cases are skipped with the reason, unless
`ORCHESTRATOR_REQUIRE_POSTGRES=1` (set by CI), which turns the skip into a
failure.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.config import EngineSettings, load_engine_settings
from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.engine.task_manager import TaskManager
from orchestrator.store import parse_store_url
from orchestrator.testing import (
    AgentProcess,
    InvariantResult,
    SimulatedAgent,
    SimulatedAgentBackend,
    check_invariants,
)
from orchestrator.testing.simulator_control import InProcessControl

PG_DSN = os.environ.get("ORCHESTRATOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("ORCHESTRATOR_REQUIRE_POSTGRES") == "1"
REPO = Path(__file__).resolve().parent.parent


# One task per agent create call, so a crash point can fall between two submissions.
ONE_PER_CALL = {"ORCHESTRATOR_SUBMIT_BATCH": "1"}


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


_PG_PROBLEM: str | None = _pg_reachable()


def pg_schema_url(schema: str) -> str:
    return f"{PG_DSN}?schema={schema}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards."""
    if _PG_PROBLEM is not None:
        message = f"PostgreSQL not reachable at {PG_DSN}: {_PG_PROBLEM}"
        if REQUIRE_PG:
            pytest.fail(message + " (ORCHESTRATOR_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    schema: str = request.getfixturevalue("pg_schema")
    return pg_schema_url(schema)


@pytest.fixture
def agent_state(tmp_path: Path) -> Path:
    return tmp_path / "agent.db"


@pytest.fixture
def orch(store_url: str, agent_state: Path) -> Iterator[Orchestrator]:
    o = Orchestrator.open(store_url, agent_state=agent_state, create=True)
    yield o
    o.close()


@pytest.fixture
def agent(agent_state: Path) -> Iterator[SimulatedAgent]:
    a = SimulatedAgent.open(agent_state, task_seconds=0.2)
    yield a
    a.close()


def fast_settings(**overrides: Any) -> EngineSettings:
    return load_engine_settings(**{"poll_interval": 0.02, **overrides})


def run_until_idle(
    orch: Orchestrator, agent: SimulatedAgent, *, timeout: float = 30.0, settings: EngineSettings | None = None
) -> TaskManager:
    """Recover and run an in-process engine until nothing is in flight (fails on timeout)."""
    engine = build_engine(orch, agent, settings or fast_settings())
    engine.recover()
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        engine.run(stop, until_idle=True)
    finally:
        timer.cancel()
    assert engine.idle, f"engine not idle after {timeout}s: {len(engine.inflight)} command(s) in flight"
    return engine


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02, what: str = "") -> None:
    """Wait on a condition with a deadline (never sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `python -m orchestrator ARGS` as a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return proc


def engine_args(store_url: str, agent_state: Path, *run_args: str) -> list[str]:
    return ["--store", store_url, "--agent-state", str(agent_state), "run", *run_args]


def assert_invariants(results: list[InvariantResult]) -> None:
    broken = [f"{r.number}. {r.name}: {r.detail}" for r in results if not r.ok]
    assert not broken, "invariants broken:\n" + "\n".join(broken)


def invariants_hold(orch: Orchestrator, agent_state: Path, **kwargs: Any) -> None:
    """Every invariant, against every pool's simulated agent (the default pool's at `agent_state`)."""
    controls = orch.simulators()
    if DEFAULT_POOL in controls and orch.pool_agent_url(DEFAULT_POOL) is None:
        controls[DEFAULT_POOL].close()
        controls[DEFAULT_POOL] = InProcessControl(SimulatedAgentBackend(agent_state), owned=True)
    try:
        assert_invariants(check_invariants(orch, controls, **kwargs))
    finally:
        for control in controls.values():
            control.close()


def events_table(store_url: str) -> str:
    """The name of the events table behind a store URL (the library's defaults)."""
    return "stored_events" if parse_store_url(store_url).kind == "sqlite" else "orchestrator_events"


def store_sql(store_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement straight on the store's database (what an operator does with psql or sqlite3)."""
    config = parse_store_url(store_url)
    if config.kind == "sqlite":
        conn = sqlite3.connect(str(config.path), timeout=30)
        try:
            with conn:
                return list(conn.execute(statement, params).fetchall())
        finally:
            conn.close()
    with psycopg.connect(
        host=config.host,
        port=config.port,
        user=config.user,
        password=config.password.get_secret_value(),
        dbname=config.dbname,
        autocommit=True,
        options=f"-c search_path={config.schema_name}",
    ) as pg:
        cur = pg.execute(statement.replace("?", "%s").encode(), params or None)
        return list(cur.fetchall()) if cur.description else []


# A CLI process that imports everything first, says so, then waits on a barrier file: several of
# them released together race for real, without their start-up times deciding the order.
_AT_BARRIER = (
    "import os, sys, time\n"
    "from orchestrator.cli import main\n"
    "ready, barrier, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])\n"
    "open(ready, 'w').close()\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(barrier) and time.monotonic() < deadline:\n"
    "    time.sleep(0.001)\n"
    "time.sleep(delay)\n"
    "main(sys.argv[4:])\n"
)


def start_together(
    commands: list[list[str]], tmp_path: Path, *, delays: list[float] | None = None, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """Start CLI commands in processes released together on a barrier (each after its delay)."""
    tag = uuid.uuid4().hex[:8]
    barrier = tmp_path / f"barrier-{tag}"
    ready = [tmp_path / f"ready-{tag}-{i}" for i in range(len(commands))]
    waits = delays or [0.0] * len(commands)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_BARRIER, str(flag), str(barrier), str(delay), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or cli_env(),
            cwd=REPO,
        )
        for args, delay, flag in zip(commands, waits, ready, strict=True)
    ]
    wait_for(lambda: all(f.exists() for f in ready), timeout=60, what="every process to finish its imports")
    barrier.touch()
    return procs


def run_together(
    commands: list[list[str]], tmp_path: Path, *, delays: list[float] | None = None, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI commands released together on a barrier; their results, in order."""
    procs = start_together(commands, tmp_path, delays=delays, env=env)
    out = []
    for args, p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess([*args], p.returncode, stdout, stderr))
    return out


# A simulated agent served over HTTP by a process of its own (`orchestrator agent serve`).
ServedAgent = AgentProcess


def serve_agent(state: Path, pool: str, tmp_path: Path, task_seconds: float = 0.3) -> AgentProcess:
    url_file = tmp_path / f"{pool}-{uuid.uuid4().hex[:6]}.url"
    return AgentProcess(state, pool, task_seconds=task_seconds, url_file=url_file).start()


def use_agent(store_url: str, agent_state: Path, pool: str, url: str) -> None:
    """Point a pool of the store at an agent URL (the default pool: its tasks then go over HTTP)."""
    from orchestrator.pools import set_pool_agent

    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        set_pool_agent(orch, pool, url)


@pytest.fixture
def http_agent(store_url: str, agent_state: Path, tmp_path: Path) -> Iterator[ServedAgent]:
    """The default pool's agent served over HTTP, and the store pointed at it."""
    served = serve_agent(agent_state, DEFAULT_POOL, tmp_path)
    use_agent(store_url, agent_state, DEFAULT_POOL, served.url)
    yield served
    served.kill()
