"""SQL access for the read models, on SQLite or PostgreSQL.

Statements are written once with `?` placeholders and converted for psycopg.
Writers are serialised per store: SQLite by `BEGIN IMMEDIATE` (so a read never
has to upgrade to a write), PostgreSQL by a transaction-scoped advisory lock.
Every value is passed as a parameter; only fixed table names are formatted in.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import psycopg
from psycopg_pool import ConnectionPool

from orchestrator.errors import StoreError
from orchestrator.store import StoreConfig, sqlite_uri
from orchestrator.store.sqlite import FileLock, lock_file_for


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class _PgCursor:
    """A psycopg cursor that takes `?` placeholders."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        if params:
            self._cursor.executemany(sql.replace("?", "%s"), [tuple(p) for p in params])  # type: ignore[arg-type]

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def copy(self, statement: str) -> Any:
        """COPY ... FROM STDIN (bulk insert)."""
        return self._cursor.copy(statement)  # type: ignore[arg-type]


class ViewDatabase:
    """Connections to the store's database for projections and inspection."""

    def __init__(self, config: StoreConfig, *, read_only: bool = False) -> None:
        self.config = config
        self.dialect: Literal["sqlite", "postgresql"] = config.kind
        self.read_only = read_only
        self._local = threading.local()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        if self.dialect == "postgresql":
            info = {**config.pg_conninfo()}
            search_path = f"{config.schema_name},public"
            self._pool = ConnectionPool(
                kwargs={**info, "autocommit": True, "options": f"-c search_path={search_path}"},
                min_size=1,
                max_size=4,
                open=False,
                timeout=10,
            )

    # ---- connections --------------------------------------------------------------------

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self.config.path is not None
            mode = "ro" if self.read_only else "rw"
            try:
                conn = sqlite3.connect(
                    f"{sqlite_uri(self.config.path)}?mode={mode}",
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.config.redacted}: {exc}") from exc
            self._local.conn = conn
        return conn

    @contextmanager
    def _pg(self) -> Iterator[psycopg.Connection[Any]]:
        assert self._pool is not None
        try:
            self._pool.open(wait=True, timeout=10)
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreError(f"lost the connection to {self.config.redacted}: {self.config.scrub(str(exc))}") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._pool is not None:
            self._pool.close()

    # ---- transactions -------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        """A consistent snapshot for reading (no locks that block writers)."""
        if self.dialect == "sqlite":
            conn = self._sqlite()
            conn.execute("BEGIN")
            try:
                yield conn.cursor()
            finally:
                conn.execute("ROLLBACK")
        else:
            with self._pg() as pg, pg.transaction(force_rollback=True):
                pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield _PgCursor(pg.cursor())

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One SELECT, no transaction around it (a single statement is consistent by itself)."""
        if self.dialect == "sqlite":
            return self._sqlite().execute(sql, tuple(params)).fetchall()
        with self._pg() as pg:
            return pg.execute(sql.replace("?", "%s"), tuple(params)).fetchall()  # type: ignore[arg-type]

    @contextmanager
    def write(self, lock_name: str = "projections") -> Iterator[Cursor]:
        """A write transaction, serialised with every other writer of `lock_name`."""
        if self.read_only:
            raise StoreError("this connection is read-only")
        if self.dialect == "sqlite":
            conn = self._sqlite()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.cursor()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        else:
            with self._pg() as pg, pg.transaction():
                key = zlib.crc32(f"{self.config.schema_name}:{lock_name}".encode())
                pg.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                yield _PgCursor(pg.cursor())

    def tables_starting(self, cursor: Cursor, prefix: str) -> list[str]:
        """Tables whose name starts with a prefix (shadow tables a killed rebuild left behind)."""
        pattern = prefix.replace("_", "\\_") + "%"
        if self.dialect == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE ? ESCAPE '\\'", (pattern,))
        else:
            cursor.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=? AND table_name LIKE ?",
                (self.config.schema_name, pattern),
            )
        return [str(r[0]) for r in cursor.fetchall()]

    @contextmanager
    def exclusive(self, purpose: str) -> Iterator[bool]:
        """A store-wide lock for one purpose, held by this process until the block ends (or it dies).

        Yields False, at once, if another process holds it."""
        lock: Any
        if self.dialect == "sqlite":
            assert self.config.path is not None
            lock = FileLock(lock_file_for(self.config.path, purpose))
        else:
            from orchestrator.store.postgres import AdvisoryLock

            lock = AdvisoryLock(self.config, purpose)
        with lock.holding() as got:
            yield got
