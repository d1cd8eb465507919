"""Everything SQLite-specific: the recorder, bulk loads, the in-flight index, the read models' tables
and the locks.

The recorder is the library's, extended to keep `orchestrator_in_flight` (the
root commands in flight) in the same transaction as the events that change it,
so that table is as true as the log itself and no rebuild can touch it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InterfaceError, Notification, StoredEvent
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
)
from eventsourcing.utils import get_topic

from orchestrator.errors import StoreError
from orchestrator.store.door import create_private_file, sqlite_uri
from orchestrator.store.event_store import IN_FLIGHT_TABLE, LogEntry
from orchestrator.store.leases import (
    ENGINES_TABLE,
    LEASES_TABLE,
    LeaseTable,
    WriteFence,
    lease_lost,
    lease_table_statements,
)
from orchestrator.store.tables import Cursor, Operation, Where, condition_sql, execute_rows, summed
from orchestrator.store.url import StoreConfig, sqlite_read_only_uri

EVENTS_TABLE = "stored_events"
SNAPSHOTS_TABLE = "stored_snapshots"


class InFlightRecorder(SQLiteApplicationRecorder):
    """The library's recorder, keeping the in-flight index in the same transaction as the events."""

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = EVENTS_TABLE) -> None:
        super().__init__(datastore, events_table_name)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {IN_FLIGHT_TABLE} (command_id TEXT PRIMARY KEY)",
            *lease_table_statements(LEASES_TABLE, ENGINES_TABLE, "REAL"),
        ]

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's insert, with the durability asked for: without `flush`, the commit does not
        sync the WAL file (the next commit that does syncs it too; a crash of the process loses
        nothing either way, only one of the machine may)."""
        with self.datastore.get_connection(commit=True) as conn:
            synchronous = "FULL" if kwargs.get("flush", True) else "NORMAL"
            if getattr(conn, "synchronous", None) != synchronous:  # a PRAGMA outside the transaction
                conn.cursor().execute(f"PRAGMA synchronous = {synchronous}")
                conn.synchronous = synchronous  # type: ignore[attr-defined]
            with conn.transaction(commit=True) as c:
                return self._insert_events(c, stored_events, **kwargs)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # One statement for all the events (the library runs one each, to read every rowid back;
        # nothing here reads them, and the library's put skips them when there are none).
        c.executemany(
            self.insert_events_statement,
            [(_hex(e.originator_id), e.originator_version, e.topic, e.state) for e in stored_events],
        )
        added: Sequence[UUID] = kwargs.get("in_flight_added", ())
        removed: Sequence[UUID] = kwargs.get("in_flight_removed", ())
        for ident in added:
            c.execute(f"INSERT OR IGNORE INTO {IN_FLIGHT_TABLE} VALUES (?)", (ident.hex,))
        for ident in removed:
            c.execute(f"DELETE FROM {IN_FLIGHT_TABLE} WHERE command_id = ?", (ident.hex,))
        # After the inserts, which hold the file's write lock: nothing changes until this commits.
        fence: WriteFence | None = kwargs.get("fence")
        if fence is not None:
            c.execute(
                f"SELECT 1 FROM {LEASES_TABLE} WHERE pool_id = ? AND engine_id = ? AND epoch = ?",
                (fence.pool, fence.engine_id, fence.epoch),
            )
            if c.fetchone() is None:
                raise lease_lost(fence)
        reads: Mapping[UUID, int] = kwargs.get("read_versions") or {}
        if reads:
            self._check_reads(c, reads)
        return None

    def _check_reads(self, c: SQLiteCursor, reads: Mapping[UUID, int]) -> None:
        """The aggregates the writer read without asking the store are still at the versions it read."""
        marks = ",".join("?" * len(reads))
        c.execute(
            f"SELECT originator_id, MAX(originator_version) FROM {self.events_table_name}"
            f" WHERE originator_id IN ({marks}) GROUP BY originator_id",
            [i.hex for i in reads],
        )
        now = {UUID(str(r[0])): int(r[1]) for r in c.fetchall()}
        if any(now.get(ident) != version for ident, version in reads.items()):
            raise IntegrityError("an aggregate this write read has changed since")


def _hex(ident: UUID | str) -> str:
    """An originator id as the library stores it in SQLite (a UUID's hex)."""
    return ident.hex if isinstance(ident, UUID) else ident


STATEMENT_CACHE = 128  # prepared statements kept per connection (sqlite3's default)


class StatementCachingPool(SQLiteConnectionPool):
    """The library's pool, but each connection keeps its prepared statements.

    The library opens its connections with `cached_statements=True`, a cache of one statement:
    every `BEGIN` pushes the last query out, so each query is compiled again (on a one-entity
    load, 120 of its 145 microseconds). The connection is otherwise opened as the library does.
    """

    def _create_connection(self) -> SQLiteConnection:
        try:
            c = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # autocommit: the library's transactions issue BEGIN themselves
                cached_statements=STATEMENT_CACHE,
                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e  # as the library's pool raises it
        if not self.is_journal_mode_wal:
            c.execute("PRAGMA journal_mode=WAL")
            self.is_journal_mode_wal = True
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)


class Factory(SQLiteFactory):
    """The library's SQLite factory with our recorder and our connection pool."""

    application_recorder_class = InFlightRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        self.datastore.pool = StatementCachingPool(
            db_name=pool.db_name,
            lock_timeout=pool.lock_timeout,
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.pool_timeout,
            max_age=pool.max_age,
            pre_ping=pool.pre_ping,
        )
        pool.close()


FACTORY_TOPIC = get_topic(Factory)


def rows_as_stored(rows: Sequence[Any]) -> list[StoredEvent]:
    return [StoredEvent(UUID(r["originator_id"]), r["originator_version"], r["topic"], r["state"]) for r in rows]


class SQLiteDialect:
    """The SQL of bulk loads and of the in-flight index, for the event store."""

    kind = "sqlite"
    factory_topic = FACTORY_TOPIC
    events_table = EVENTS_TABLE
    snapshots_table = SNAPSHOTS_TABLE

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    def select_stored(self, recorder: Any, sql: str, params: Sequence[Any]) -> list[StoredEvent]:
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, params)
            return rows_as_stored(cursor.fetchall())

    def events_after(self, recorder: Any, versions: Sequence[tuple[UUID, int]]) -> list[StoredEvent]:
        values = ",".join("(?, ?)" for _ in versions)
        sql = (
            f"SELECT e.originator_id, e.originator_version, e.topic, e.state FROM {recorder.events_table_name} e"
            f" JOIN (VALUES {values}) v ON e.originator_id = v.column1 AND e.originator_version > v.column2"
            " ORDER BY e.originator_id, e.originator_version"
        )
        return self.select_stored(recorder, sql, [x for i, v in versions for x in (i.hex, v)])

    def snapshots_and_events(
        self, recorder: Any, snapshots: bool, known: Sequence[tuple[UUID, int | None]]
    ) -> tuple[list[StoredEvent], list[StoredEvent]]:
        """One statement in one read transaction: the latest snapshot of each aggregate whose version
        is unknown (-1 below), and every event after the known version or that snapshot."""
        newest = f"SELECT MAX(y.originator_version) FROM {SNAPSHOTS_TABLE} y WHERE y.originator_id = x.originator_id"
        latest = (
            f"SELECT x.originator_id, x.originator_version, x.topic, x.state FROM {SNAPSHOTS_TABLE} x"
            f" JOIN v ON x.originator_id = v.id AND v.known < 0 WHERE x.originator_version = ({newest})"
            if snapshots
            else "SELECT NULL AS originator_id, 0 AS originator_version, '' AS topic, x'' AS state WHERE 0"
        )
        values = ",".join("(?, ?)" for _ in known)
        sql = (
            f"WITH v(id, known) AS (VALUES {values}), s AS ({latest})"
            " SELECT 1 AS part, originator_id, originator_version, topic, state FROM s"
            " UNION ALL"
            " SELECT 2, e.originator_id, e.originator_version, e.topic, e.state"
            f" FROM v LEFT JOIN s ON s.originator_id = v.id JOIN {recorder.events_table_name} e"
            " ON e.originator_id = v.id AND e.originator_version > max(v.known, coalesce(s.originator_version, 0))"
            " ORDER BY 1, 2, 3"
        )
        params = [x for i, version in known for x in (i.hex, -1 if version is None else version)]
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return rows_as_stored([r for r in rows if r["part"] == 1]), rows_as_stored([r for r in rows if r["part"] == 2])

    def in_flight_ids(self, recorder: Any) -> list[UUID]:
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(f"SELECT command_id FROM {IN_FLIGHT_TABLE}")
            return [UUID(r[0]) for r in cursor.fetchall()]

    def fill_in_flight(self, recorder: Any, ids: Sequence[UUID]) -> None:
        with recorder.datastore.transaction(commit=True) as cursor:
            for ident in ids:
                cursor.execute(f"INSERT OR IGNORE INTO {IN_FLIGHT_TABLE} VALUES (?)", (ident.hex,))

    def head_and_news(
        self, recorder: Any, after: int, topics: Sequence[str], limit: int
    ) -> tuple[int, list[Notification]]:
        marks = ",".join("?" * len(topics))
        with recorder.datastore.transaction(commit=False) as cursor:  # one snapshot for both
            cursor.execute(f"SELECT MAX(rowid) FROM {EVENTS_TABLE}")
            head = int(cursor.fetchone()[0] or 0)
            if head <= after:
                return head, []
            cursor.execute(
                f"SELECT rowid, originator_id, originator_version, topic, state FROM {EVENTS_TABLE}"
                f" WHERE rowid > ? AND rowid <= ? AND topic IN ({marks}) ORDER BY rowid LIMIT ?",
                [after, head, *topics, limit],
            )
            rows = cursor.fetchall()
        return head, [
            Notification(id=int(r[0]), originator_id=UUID(r[1]), originator_version=int(r[2]), topic=r[3], state=r[4])
            for r in rows
        ]

    def log_after(self, cursor: Cursor, after: int, limit: int, stop: int | None) -> list[LogEntry]:
        bound, params = (" AND rowid <= ?", [after, stop, limit]) if stop is not None else ("", [after, limit])
        cursor.execute(
            f"SELECT rowid, originator_id, originator_version, topic, state FROM {EVENTS_TABLE} WHERE rowid > ?{bound}"
            " ORDER BY rowid LIMIT ?",
            params,
        )
        return [(int(r[0]), _dashed(str(r[1])), int(r[2]), str(r[3]), bytes(r[4])) for r in cursor.fetchall()]

    # ---- retention: an operator's prune (orchestrator/retention/) -------------------------------

    def lock_versions(self, cursor: Cursor, ids: Sequence[UUID]) -> dict[UUID, int]:
        """The last version of each of these aggregates that has events; no event can be added until
        the transaction ends (a write transaction of the store's tables, `BEGIN IMMEDIATE`, holds the
        file's write lock already)."""
        found: dict[UUID, int] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            cursor.execute(
                f"SELECT originator_id, MAX(originator_version) FROM {EVENTS_TABLE}"
                f" WHERE originator_id IN ({marks}) GROUP BY originator_id",
                [i.hex for i in chunk],
            )
            found.update({UUID(str(r[0])): int(r[1]) for r in cursor.fetchall()})
        return found

    def delete_aggregates(self, cursor: Cursor, ids: Sequence[UUID]) -> int:
        """Delete every event and snapshot of these aggregates in the cursor's transaction; the number
        of events deleted. Rowids are not reused: the prune records itself first (a newer row)."""
        deleted = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            hexes = [i.hex for i in chunk]
            done = cursor.execute(f"DELETE FROM {EVENTS_TABLE} WHERE originator_id IN ({marks})", hexes)
            deleted += int(done.rowcount)
            cursor.execute(f"DELETE FROM {SNAPSHOTS_TABLE} WHERE originator_id IN ({marks})", hexes)
        return deleted

    def tables(self, *, read_only: bool = False) -> SQLiteTables:
        return SQLiteTables(self.config, read_only=read_only)

    def lock(self, purpose: str) -> FileLock:
        """A store-wide lock held until released or until this process dies (the engine lease)."""
        assert self.config.path is not None
        return FileLock(lock_file_for(self.config.path, purpose))

    def has_table(self, recorder: Any, table: str) -> bool:
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,))
            return cursor.fetchone() is not None

    def leases(self) -> LeaseTable:
        assert self.config.path is not None
        return LeaseTable(SQLiteLeaseConnection(self.config.path))


class SQLiteLeaseConnection:
    """The lease tables over a connection of their own; every transaction BEGIN IMMEDIATE."""

    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    leases = LEASES_TABLE
    engines = ENGINES_TABLE
    generation = 0  # the engine lock, not a connection, says an engine lives

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self, write: bool) -> sqlite3.Connection:
        """Read-write; a reader falls back to read-only (a backup copy of a store)."""
        for mode in ("rw", "ro") if not write else ("rw",):
            try:
                return sqlite3.connect(
                    f"{sqlite_uri(self.path)}?mode={mode}",
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.OperationalError:
                if mode == "ro" or write:
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect(write)
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read or write the leases of sqlite:///{self.path}: {exc}") from None
            try:
                yield conn.cursor()
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def claim_liveness(self, engine_id: str) -> None:
        """Nothing to hold: on SQLite an engine runs only under the engine lock (a flock) of the file."""

    def dead_among(self, engine_ids: Iterable[str], me: str) -> set[str]:
        """Every other engine: an engine acts on a SQLite store only while it holds the file's engine
        lock, which goes with its process, so any other engine that left leases behind is gone."""
        return set(engine_ids) - {me}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def lock_file_for(database: Path, purpose: str) -> Path:
    """A lock file keyed by the database file itself, whatever path (or symlink) it was opened by.

    It sits beside the real file, named after its device and inode, so two paths to one
    database (a symlink, a relative and an absolute path) find the same lock.
    """
    real = Path(os.path.realpath(database))
    try:
        st = real.stat()
    except OSError:
        return real.with_name(f"{real.name}.{purpose}.lock")
    return real.with_name(f".{real.name}.{st.st_dev:x}-{st.st_ino:x}.{purpose}.lock")


class FileLock:
    """An exclusive `flock` on a lock file: held until released or until the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        create_private_file(self.path)
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def holding(self) -> Iterator[bool]:
        got = self.try_acquire()
        try:
            yield got
        finally:
            if got:
                self.release()


class SQLiteTables:
    """The read models' tables in a SQLite store: one connection per thread, writers by BEGIN IMMEDIATE."""

    dialect = "sqlite"
    catch_up_events = 20_000
    builds_catch_up_unlocked = True  # the file's write lock stops the engine and clients: held to write only

    def __init__(self, config: StoreConfig, *, read_only: bool = False) -> None:
        assert config.path is not None
        self.config = config
        self.path = config.path
        self.read_only = read_only
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            uri = sqlite_read_only_uri(self.path) if self.read_only else f"{sqlite_uri(self.path)}?mode=rw"
            try:
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=30,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open {self.config.redacted}: {exc}") from exc
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def read(self) -> Iterator[Cursor]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn.cursor()
        finally:
            conn.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(sql, tuple(params)).fetchall()

    @contextlib.contextmanager
    def write(self, lock_name: str = "projections", *, flush: bool = True) -> Iterator[Cursor]:
        # BEGIN IMMEDIATE serialises every writer of the file, whatever the lock name: a read
        # never has to upgrade to a write (which could deadlock) inside these transactions.
        if self.read_only:
            raise StoreError("this connection is read-only")
        conn = self._conn()
        # In WAL mode NORMAL commits without syncing the log; a later FULL commit syncs it all.
        conn.execute(f"PRAGMA synchronous = {'FULL' if flush else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def run_group(
        self,
        cursor: Cursor,
        operation: Operation,
        target: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        where: Where = (),
    ) -> None:
        if operation == "decrement":
            key, column = columns
            sql = f"UPDATE {target} SET {column} = {column} - ? WHERE {key} = ?"
            execute_rows(cursor, sql, [(by, k) for k, by in summed(rows)])
        elif operation == "insert":
            names, marks = ", ".join(columns), ", ".join("?" * len(columns))
            execute_rows(cursor, f"INSERT INTO {target} ({names}) VALUES ({marks})", rows)
        elif operation == "delete":
            execute_rows(cursor, f"DELETE FROM {target} WHERE {columns[0]} = ?", rows)
        else:
            key, *assigned = columns
            sets = ", ".join(f"{c} = ?" for c in assigned)
            condition, params = condition_sql(where)
            sql = f"UPDATE {target} SET {sets} WHERE {key} = ?{condition}"
            execute_rows(cursor, sql, [(*r[1:], r[0], *params) for r in rows])

    def tables_starting(self, cursor: Cursor, prefix: str) -> list[str]:
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND substr(name, 1, ?) = ?", (len(prefix), prefix)
        )
        return [str(r[0]) for r in cursor.fetchall()]

    @contextlib.contextmanager
    def exclusive(self, purpose: str) -> Iterator[bool]:
        with FileLock(lock_file_for(self.path, purpose)).holding() as got:
            yield got


def _dashed(originator_id: str) -> str:
    """The text form of a UUID from the 32 hex digits the library stores (other ids pass as they are)."""
    h = originator_id
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if len(h) == 32 else h


def _chunks(ids: Sequence[UUID], size: int = 500) -> Iterator[Sequence[UUID]]:
    """Ids in groups small enough for one statement's parameters."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
