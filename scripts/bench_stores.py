"""The stores a benchmark opens: each one new, and gone when the benchmark ends (even when it fails).

A SQLite file in a scratch directory, or a PostgreSQL schema named
`bench_<random>_<label>` in the test database at ORCHESTRATOR_BENCH_PG.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

PG_DSN = os.environ.get("ORCHESTRATOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Store:
    backend: str  # "sqlite" | "postgres"
    url: str
    label: str
    path: Path | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema

    @property
    def sqlite_files(self) -> list[Path]:
        """The files whose SQL `sql_counting` should count (none on PostgreSQL: it counts all of that)."""
        return [self.path] if self.path else []


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
def bare_sqlite(store: Store) -> Iterator[sqlite3.Connection]:
    """The bare driver on the store's file, in autocommit and WAL mode (as eventsourcing sets it)."""
    assert store.path is not None
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        yield conn
    finally:
        conn.close()


@contextmanager
def bare_postgres(store: Store) -> Iterator[psycopg.Connection[Any]]:
    """The bare driver in autocommit, with the store's schema created (empty)."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {store.schema}")
        yield conn


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
