"""What the API tests share (no tests here): the service as a real process, stores that live for a module.

`running_service(...)` starts `python -m orchestrator serve --listen 127.0.0.1:0
--url-file F` in a subprocess, waits (with a deadline) for its URL file and its
announcement, and stops it with SIGTERM afterwards. `module_store(...)` makes a
SQLite file or a PostgreSQL schema for a module's tests to share (a service and a
browser are started once per module and backend, which keeps the suite fast).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import _PG_PROBLEM, PG_DSN, REPO, REQUIRE_PG, cli_env, pg_schema_url, wait_for

FAST_ENGINE = {"ORCHESTRATOR_AGENT_TASK_SECONDS": "0.5", "ORCHESTRATOR_POLL_INTERVAL": "0.1"}
PROBLEM_TYPE = "application/problem+json"


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str  # ends with "/"
    stdout: Path
    stderr: Path

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15.0, **kwargs)

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise AssertionError(f"the service did not stop within {timeout}s of signal {sig}") from None


def serve_command(store_url: str, agent_state: Path, url_file: Path, *serve_args: str) -> list[str]:
    return [
        sys.executable, "-m", "orchestrator", "--store", store_url, "--agent-state", str(agent_state),
        "serve", "--listen", "127.0.0.1:0", "--url-file", str(url_file), *serve_args,
    ]  # fmt: skip


@contextlib.contextmanager
def running_service(
    workdir: Path, store_url: str, agent_state: Path, *serve_args: str, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """A service process on a free loopback port; stopped (and checked to stop) afterwards."""
    tag = uuid.uuid4().hex[:8]
    url_file, stdout, stderr = (workdir / f"api-{tag}.{ext}" for ext in ("url", "out", "err"))
    args = serve_command(store_url, agent_state, url_file, *serve_args)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=cli_env(**(env or {})), cwd=REPO)
    try:

        def announced() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the service exited {proc.returncode}: {stderr.read_text()}")
            return url_file.exists() and "serving at" in stdout.read_text()

        wait_for(announced, timeout=30, interval=0.05, what="the service's URL file and announcement")
        service = Service(proc, url_file.read_text().strip(), stdout, stderr)
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def module_store(backend: str, workdir: Path) -> Iterator[str]:
    """A store for one module's tests: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'store.db'}"
        return
    if _PG_PROBLEM is not None:
        message = f"PostgreSQL not reachable at {PG_DSN}: {_PG_PROBLEM}"
        if REQUIRE_PG:
            pytest.fail(message + " (ORCHESTRATOR_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def assert_problem(response: httpx.Response, status: int, detail_part: str = "") -> dict[str, Any]:
    """An RFC 9457 problem document with this status (and, if given, this text in its detail)."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM_TYPE), response.headers["content-type"]
    problem: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys(), problem
    assert problem["status"] == status
    assert detail_part in problem["detail"], problem["detail"]
    return problem
