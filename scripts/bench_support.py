"""Shared plumbing of the benchmark: sizes, stores, the timed agent, medians.

Every store the benchmark opens is new: a SQLite file in a scratch directory,
or a PostgreSQL schema named `bench_<random>_<label>` in the test database,
dropped when the benchmark ends (even when it fails).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg

from orchestrator.agent.port import AgentTaskStatus, CreateResult, StorageView, TaskSpec
from orchestrator.testing import SimulatedAgent

PG_DSN = os.environ.get("ORCHESTRATOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
DISKS_PER_VM = 4
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; `QUICK` is the development smoke mode."""

    levels: tuple[int, ...]  # commands in flight
    commands: dict[int, int]  # commands run per level
    write_cost_commands: int
    cycle_commands: tuple[int, ...]  # commands whose tasks all end in one measured cycle
    recovery_in_flight: int
    recovery_history: int
    query_rows: int
    query_samples: int
    profile_commands: int
    commit_samples: int


FULL = Sizes(
    levels=(1, 100, 1000),
    commands={1: 30, 100: 400, 1000: 2000},
    write_cost_commands=100,
    cycle_commands=(1, 25, 250),
    recovery_in_flight=10_000,
    recovery_history=100_000,
    query_rows=1_000_000,
    query_samples=5000,
    profile_commands=400,
    commit_samples=500,
)
QUICK = Sizes(
    levels=(1, 100),
    commands={1: 5, 100: 100},
    write_cost_commands=20,
    cycle_commands=(1, 10),
    recovery_in_flight=200,
    recovery_history=2000,
    query_rows=50_000,
    query_samples=500,
    profile_commands=100,
    commit_samples=100,
)


# ---- stores ----------------------------------------------------------------------------


@dataclass
class Store:
    backend: str  # "sqlite" | "postgres"
    url: str
    label: str
    path: Path | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema


@dataclass
class Scratch:
    """A scratch directory and every PostgreSQL schema made during the run."""

    root: Path
    token: str
    schemas: list[str] = field(default_factory=list)

    def store(self, backend: str, label: str) -> Store:
        name = f"{label}-{uuid.uuid4().hex[:6]}"
        if backend == "sqlite":
            path = self.root / f"{name}.db"
            return Store(backend, f"sqlite:///{path}", name, path=path)
        schema = f"bench_{self.token}_{name.replace('-', '_')}"
        self.schemas.append(schema)
        return Store(backend, f"{PG_DSN}?schema={schema}", name, schema=schema)

    def agent_path(self, label: str) -> Path:
        return self.root / f"{label}-{uuid.uuid4().hex[:6]}.agent"

    def drop(self, store: Store) -> None:
        if store.schema is not None:
            drop_schema(store.schema)
            self.schemas.remove(store.schema)
        elif store.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{store.path}{suffix}").unlink(missing_ok=True)


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema)))


@contextmanager
def scratch_space() -> Iterator[Scratch]:
    root = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    scratch = Scratch(root, uuid.uuid4().hex[:8])
    try:
        yield scratch
    finally:
        for schema in list(scratch.schemas):
            drop_schema(schema)
        shutil.rmtree(root, ignore_errors=True)


def postgres_problem() -> str | None:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---- the agent, timed ------------------------------------------------------------------


class TimedAgent:
    """The simulated agent with every call timed (calls are serialised, as the agent's own lock does)."""

    def __init__(self, agent: SimulatedAgent) -> None:
        self.inner = agent
        self.name = agent.name
        self.busy_seconds = 0.0
        self._lock = threading.Lock()

    def _timed(self, call: Callable[[], T]) -> T:
        with self._lock:
            started = time.perf_counter()
            try:
                return call()
            finally:
                self.busy_seconds += time.perf_counter() - started

    @property
    def calls(self) -> dict[str, int]:
        return dict(self.inner.calls)

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        return self._timed(lambda: self.inner.create_tasks(specs))

    def task_statuses(self) -> list[AgentTaskStatus]:
        return self._timed(self.inner.task_statuses)

    def stop_task(self, agent_task_id: str) -> None:
        self._timed(lambda: self.inner.stop_task(agent_task_id))

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        self._timed(lambda: self.inner.clear_tasks(agent_task_ids))

    def revert_task(self, agent_task_id: str) -> bool:
        return self._timed(lambda: self.inner.revert_task(agent_task_id))

    def storage(self) -> StorageView:
        return self._timed(self.inner.storage)


def seed_agent_images(agent: SimulatedAgent, commands: int) -> None:
    """Give a bare agent the images the RemoveVm-like work of `commands` commands deletes."""
    volumes = [
        ("sd-1", f"img-{n:04d}-{k}", f"vol-{n:04d}-{k}-base")
        for n in range(1, commands + 1)
        for k in range(1, DISKS_PER_VM + 1)
    ]
    agent.backend.seed_storage(["sd-1", "sd-2"], volumes)


# ---- numbers ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(share * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median_of_fields(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Field by field median of several runs' numeric results."""
    keys = rows[0].keys() if rows else []
    return {k: median([r[k] for r in rows]) for k in keys}


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
