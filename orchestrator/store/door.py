"""The door: check a store before the event store library touches it.

It refuses a file that is not SQLite, a database that belongs to someone else,
and a store written by a newer schema, each with one clear line, before
anything is written. It creates a new store's tables once: on PostgreSQL every
statement of the set-up (the schema, the metadata table, the library's tables
and ours) runs under one advisory lock, so processes that open a fresh store
at the same moment wait for each other and then all proceed; later opens only
read the metadata and run no DDL at all.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from orchestrator.errors import StoreError, StoreUnavailableError
from orchestrator.store.url import StoreConfig, sqlite_read_only_uri

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
# Bump when a table is added: the next open creates what is missing (4: orchestrator_in_flight;
# 5: orchestrator_leases and orchestrator_engines; 6: PostgreSQL's orchestrator_record_events).
LAYOUT_VERSION = "6"
META_TABLE = "orchestrator_meta"
# Tables of ours that may already exist in a store (so not "foreign").
OWN_TABLE_PREFIXES = ("orchestrator_", "stored_", "tracking", "proj_", "notification_tracking")


def sqlite_uri(path: Path) -> str:
    """A `file:` URI for a path, escaped (a '#' or '?' in a path is not a URI delimiter)."""
    return "file:" + quote(str(path))


def create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (stores, agent state, locks)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


@contextlib.contextmanager
def store_layout(config: StoreConfig, *, create: bool) -> Iterator[bool]:
    """Check the store, and yield whether its tables are in place.

    When they are not, the block runs under the store's set-up lock (it creates them)
    and the layout is marked ready afterwards, so later opens run no DDL at all.
    """
    if config.kind == "sqlite":
        meta = _prepare_sqlite(config, create=create)
        ready = meta.get("layout") == LAYOUT_VERSION
        yield ready
        if not ready:  # SQLite serialises DDL itself
            _write_sqlite_meta(config, "layout", LAYOUT_VERSION)
        return
    with pg_connect(config) as conn:
        meta = _read_postgres(conn, config, create=create)
    if meta.get("layout") == LAYOUT_VERSION:
        yield True
        return
    with pg_connect(config) as conn:
        key = zlib.crc32(f"orchestrator-setup:{config.schema_name}".encode())
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            meta = _prepare_postgres(conn, config, create=create)  # again: another process may have set it up
            ready = meta.get("layout") == LAYOUT_VERSION
            yield ready
            if not ready:
                _write_postgres_meta(conn, config, "layout", LAYOUT_VERSION)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def check_store(config: StoreConfig) -> dict[str, str]:
    """Check, reading only, that an existing store is ours and of a schema we can read; its metadata."""
    if config.kind == "sqlite":
        return _prepare_sqlite(config, create=False)
    with pg_connect(config) as conn:
        return _read_postgres(conn, config, create=False)


# ---- SQLite -------------------------------------------------------------------------------


def _prepare_sqlite(config: StoreConfig, *, create: bool) -> dict[str, str]:
    assert config.path is not None
    path = config.path
    if not path.exists():
        if not create:
            raise StoreError(
                f"no store at {config.redacted}; run 'orchestrator seed' or the engine "
                "to create one, or set --store / ORCHESTRATOR_STORE"
            )
        if not path.parent.exists():
            raise StoreError(f"cannot create store {config.redacted}: directory {path.parent} does not exist")
        create_private_file(path)
    try:
        uri = f"{sqlite_uri(path)}?mode=rwc" if create else sqlite_read_only_uri(path)
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            meta = _check_tables(config, tables, create=create, read_meta=lambda: _sqlite_meta(conn))
            if create:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute(
                    f"INSERT OR IGNORE INTO {META_TABLE} VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                conn.commit()
            return meta
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{config.redacted} is not a readable SQLite database ({exc}); "
            "point --store at an orchestrator store or a new file"
        ) from exc


def _sqlite_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())


def _write_sqlite_meta(config: StoreConfig, key: str, value: str) -> None:
    assert config.path is not None
    with contextlib.closing(sqlite3.connect(config.path, timeout=30)) as lite, lite:
        lite.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?)", (key, value))


# ---- PostgreSQL ---------------------------------------------------------------------------


@contextlib.contextmanager
def pg_connect(config: StoreConfig) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A plain connection for the door checks, with errors made readable."""
    import psycopg

    try:
        conn = psycopg.connect(**config.pg_conninfo(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        reason = config.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        # A server that is not there (yet) may come back; a refused login or a bad database will not.
        unreachable = "Connection refused" in reason or "timeout expired" in reason or "No such file" in reason
        raise (StoreUnavailableError if unreachable else StoreError)(
            f"cannot connect to {config.redacted}: {reason}; check --store / ORCHESTRATOR_STORE "
            "and that PostgreSQL is running"
        ) from None
    try:
        yield conn
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # the server went away meanwhile
        raise config.connection_lost(exc) from None
    finally:
        conn.close()


def _meta_table(config: StoreConfig) -> Any:
    from psycopg import sql

    return sql.SQL("{}.{}").format(sql.Identifier(config.schema_name), sql.Identifier(META_TABLE))


def _read_postgres(conn: psycopg.Connection[Any], config: StoreConfig, *, create: bool) -> dict[str, str]:
    """The checks, read-only: what the store holds (a new store reads as empty)."""
    schema = config.schema_name
    exists = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)).fetchone()
    if not exists:
        if not create:
            raise StoreError(f"no store at {config.redacted} (schema {schema!r} does not exist)")
        return {}
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    ]
    return _check_tables(config, tables, create=create, read_meta=lambda: _postgres_meta(conn, config))


def _prepare_postgres(conn: psycopg.Connection[Any], config: StoreConfig, *, create: bool) -> dict[str, str]:
    """The checks, then (with create, under the set-up lock) the schema and metadata table."""
    from psycopg import sql

    meta = _read_postgres(conn, config, create=create)
    if create:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(config.schema_name)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, value TEXT)").format(_meta_table(config))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES ('schema_version', %s) ON CONFLICT DO NOTHING").format(_meta_table(config)),
            (str(SCHEMA_VERSION),),
        )
    return meta


def _postgres_meta(conn: psycopg.Connection[Any], config: StoreConfig) -> dict[str, str]:
    from psycopg import sql

    rows = conn.execute(sql.SQL("SELECT key, value FROM {}").format(_meta_table(config))).fetchall()
    return {str(k): str(v) for k, v in rows}


def _write_postgres_meta(conn: psycopg.Connection[Any], config: StoreConfig, key: str, value: str) -> None:
    from psycopg import sql

    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value").format(
            _meta_table(config)
        ),
        (key, value),
    )


# ---- both ---------------------------------------------------------------------------------


def _check_tables(
    config: StoreConfig,
    tables: list[str],
    *,
    create: bool,
    read_meta: Callable[[], dict[str, str]],
) -> dict[str, str]:
    """The store's metadata, after checking the store is ours and readable by us."""
    if META_TABLE in tables:
        meta = read_meta()
        version = int(meta.get("schema_version", "0") or 0)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{config.redacted} was written by a newer orchestrator (store schema {version}, "
                f"this one reads {SCHEMA_VERSION}); upgrade orchestrator"
            )
        return meta
    foreign = [t for t in tables if not t.startswith(OWN_TABLE_PREFIXES)]
    if tables:
        shown = ", ".join(sorted(foreign or tables)[:5])
        raise StoreError(
            f"{config.redacted} is not an orchestrator store (it holds tables: {shown}); "
            "point --store at an orchestrator store or at a new, empty database"
        )
    if not create:
        raise StoreError(f"{config.redacted} is empty: no orchestrator store has been created there yet")
    return {}
