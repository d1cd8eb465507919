"""Counting SQL statements and transactions as the database drivers send them.

SQLite: every connection opened to a counted file while counting is on gets a
`sqlite3.Connection.set_trace_callback`, which SQLite calls once per statement
execution (each row of an `executemany` too). `sqlite3.connect` is wrapped for
the duration, so connections opened by eventsourcing's pool, by the read
models and by DBOS (SQLAlchemy's pysqlite) are all seen. The simulated
agent's own SQLite file is not counted.

PostgreSQL: the server has no `pg_stat_statements` loaded (it is not in
`shared_preload_libraries`, and the shared server is not restarted for a
benchmark), and `pg_stat_database` counts every client of the shared test
database. So statements are counted on the client: `psycopg.Cursor.execute`
counts 1, `executemany` counts one per parameter set (psycopg pipelines them,
the server executes each). Transactions are counted where they end:
`psycopg.Transaction.__exit__` (eventsourcing, the read models) and
`psycopg.Connection.commit` (SQLAlchemy, so DBOS); a statement run in
autocommit mode outside any transaction is a transaction of its own.

Both: BEGIN/COMMIT/ROLLBACK are not counted as statements (psycopg sends them
outside cursors); a *write* is INSERT/UPDATE/DELETE/MERGE/REPLACE or a call of
eventsourcing's `es_insert_events_*` function; a *write transaction* is a
committed transaction that ran at least one write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

WRITE_WORDS = ("INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE")
CONTROL_WORDS = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE")


@dataclass
class SqlTally:
    statements: int = 0  # every statement executed, transaction control excepted
    writes: int = 0
    transactions: int = 0  # committed (read-only ones included)
    write_transactions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "statements": float(self.statements),
            "writes": float(self.writes),
            "transactions": float(self.transactions),
            "write_transactions": float(self.write_transactions),
        }

    def count_statements(self, n: int, *, write: bool) -> None:
        with self._lock:
            self.statements += n
            if write:
                self.writes += n

    def count_commit(self, *, wrote: bool) -> None:
        with self._lock:
            self.transactions += 1
            if wrote:
                self.write_transactions += 1


def statement_kind(sql: str) -> str:
    head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    if head in CONTROL_WORDS:
        return "control"
    if head in WRITE_WORDS or "es_insert_events" in sql:
        return "write"
    return "read"


# ---- SQLite ----------------------------------------------------------------------------


def _sqlite_file(database: object) -> Path | None:
    text = str(database)
    if text.startswith("file:"):
        text = text[len("file:") :].split("?", 1)[0]
    if not text or text == ":memory:":
        return None
    return Path(text).resolve()


class _SqliteTracer:
    """The trace callback of one connection: tracks its transaction state."""

    def __init__(self, tally: SqlTally, active: Callable[[], bool]) -> None:
        self.tally = tally
        self.active = active
        self.in_transaction = False
        self.dirty = False

    def __call__(self, sql: str) -> None:
        if not self.active():
            return
        kind = statement_kind(sql)
        if kind == "control":
            self._control(sql.lstrip().split(None, 1)[0].upper())
        elif kind == "write":
            self.tally.count_statements(1, write=True)
            if self.in_transaction:
                self.dirty = True
            else:
                self.tally.count_commit(wrote=True)
        else:
            self.tally.count_statements(1, write=False)

    def _control(self, word: str) -> None:
        if word == "BEGIN":
            self.in_transaction, self.dirty = True, False
        elif word in ("COMMIT", "END"):
            self.tally.count_commit(wrote=self.dirty)
            self.in_transaction, self.dirty = False, False
        elif word == "ROLLBACK":
            self.in_transaction, self.dirty = False, False


# ---- PostgreSQL ------------------------------------------------------------------------


class _PsycopgHooks:
    """Class-level wrappers of psycopg's cursor and transaction methods, installed while counting."""

    def __init__(self, tally: SqlTally) -> None:
        self.tally = tally
        self.dirty: set[int] = set()
        self.saved: dict[str, Any] = {}

    def install(self) -> None:
        self.saved = {
            "execute": psycopg.Cursor.execute,
            "executemany": psycopg.Cursor.executemany,
            "commit": psycopg.Connection.commit,
            "exit": psycopg.Transaction.__exit__,
        }
        hooks = self
        execute, executemany = self.saved["execute"], self.saved["executemany"]
        commit, tx_exit = self.saved["commit"], self.saved["exit"]

        def counted_execute(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            result = execute(cursor, query, *args, **kwargs)
            hooks.after_statements(cursor, query, 1)
            return result

        def counted_executemany(cursor: psycopg.Cursor[Any], query: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
            params = list(params)
            result = executemany(cursor, query, params, *args, **kwargs)
            hooks.after_statements(cursor, query, len(params))
            return result

        def counted_commit(conn: psycopg.Connection[Any]) -> None:
            commit(conn)
            hooks.tally.count_commit(wrote=id(conn) in hooks.dirty)
            hooks.dirty.discard(id(conn))

        def counted_exit(tx: psycopg.Transaction, *exc: Any) -> Any:
            result = tx_exit(tx, *exc)
            if tx.savepoint_name is None and tx.status is psycopg.Transaction.Status.COMMITTED:
                hooks.tally.count_commit(wrote=id(tx.connection) in hooks.dirty)
            if tx.savepoint_name is None:
                hooks.dirty.discard(id(tx.connection))
            return result

        setattr(psycopg.Cursor, "execute", counted_execute)  # noqa: B010
        setattr(psycopg.Cursor, "executemany", counted_executemany)  # noqa: B010
        setattr(psycopg.Connection, "commit", counted_commit)  # noqa: B010
        setattr(psycopg.Transaction, "__exit__", counted_exit)  # noqa: B010

    def uninstall(self) -> None:
        setattr(psycopg.Cursor, "execute", self.saved["execute"])  # noqa: B010
        setattr(psycopg.Cursor, "executemany", self.saved["executemany"])  # noqa: B010
        setattr(psycopg.Connection, "commit", self.saved["commit"])  # noqa: B010
        setattr(psycopg.Transaction, "__exit__", self.saved["exit"])  # noqa: B010

    def after_statements(self, cursor: psycopg.Cursor[Any], query: Any, n: int) -> None:
        text = query if isinstance(query, str) else _query_text(query, cursor)
        kind = statement_kind(text)
        if kind == "control":
            return
        write = kind == "write"
        self.tally.count_statements(n, write=write)
        if not write:
            return
        conn = cursor.connection
        if conn.info.transaction_status is pq.TransactionStatus.IDLE:
            self.tally.count_commit(wrote=True)  # autocommit: the statement was its own transaction
        else:
            self.dirty.add(id(conn))


def _query_text(query: Any, cursor: psycopg.Cursor[Any]) -> str:
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    try:
        return str(query.as_string(cursor.connection))
    except (AttributeError, psycopg.Error):
        return str(query)


# ---- the counting context ----------------------------------------------------------------


@contextmanager
def sql_counting(sqlite_files: Sequence[Path] = ()) -> Iterator[SqlTally]:
    """Count SQL sent to the given SQLite files (opened from now on) and to PostgreSQL."""
    tally = SqlTally()
    files = {p.resolve() for p in sqlite_files}
    state = {"on": True}
    original_connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = original_connect(*args, **kwargs)
        database = kwargs.get("database", args[0] if args else None)
        if _sqlite_file(database) in files:
            conn.set_trace_callback(_SqliteTracer(tally, lambda: state["on"]))
        return conn

    hooks = _PsycopgHooks(tally)
    hooks.install()
    setattr(sqlite3, "connect", traced_connect)  # noqa: B010
    setattr(sqlite3.dbapi2, "connect", traced_connect)  # noqa: B010
    try:
        yield tally
    finally:
        state["on"] = False
        setattr(sqlite3, "connect", original_connect)  # noqa: B010
        setattr(sqlite3.dbapi2, "connect", original_connect)  # noqa: B010
        hooks.uninstall()


@dataclass
class TallyWindow:
    """The difference of a running tally between two moments."""

    tally: SqlTally
    start: dict[str, float] = field(default_factory=dict)

    def open(self) -> None:
        self.start = self.tally.as_dict()

    def delta(self) -> dict[str, float]:
        now = self.tally.as_dict()
        return {k: now[k] - self.start.get(k, 0.0) for k in now}
