"""Store configuration: one URL selects SQLite (embedded default) or PostgreSQL.

`sqlite:///PATH` (relative, SQLAlchemy style; `sqlite:////abs/path` for an
absolute one) or `postgresql://user[:password]@host[:port]/dbname[?schema=NAME]`.
The URL comes from `--store` or `ORCHESTRATOR_STORE`.

This module also guards the door: it refuses a file that is not SQLite, a
database that belongs to someone else, and a store written by a newer schema,
each with one clear line, before the event store library touches anything.
Passwords never leave this module except inside the eventsourcing environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import psycopg
from pydantic import BaseModel, ConfigDict, SecretStr

from orchestrator.errors import StoreError

DEFAULT_STORE_URL = "sqlite:///orchestrator.db"
STORE_ENV_VAR = "ORCHESTRATOR_STORE"
SCHEMA_VERSION = 1
LAYOUT_VERSION = "3"  # bump when a table is added: the next open creates what is missing
META_TABLE = "orchestrator_meta"
# Tables of ours that may already exist in a store (so not "foreign").
OWN_TABLE_PREFIXES = ("orchestrator_", "stored_", "tracking", "proj_", "notification_tracking")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class StoreConfig(BaseModel):
    """A parsed store URL. `redacted` is the only form fit for output."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    dbname: str = ""
    schema_name: str = "public"

    @property
    def redacted(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        auth = self.user + (":***" if self.password.get_secret_value() else "")
        url = f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"
        return url if self.schema_name == "public" else f"{url}?schema={self.schema_name}"

    def scrub(self, text: str) -> str:
        """Remove the password from any text (an error message from a driver)."""
        secret = self.password.get_secret_value()
        return text.replace(secret, "***") if secret else text

    def eventsourcing_env(self) -> dict[str, str]:
        if self.kind == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.path),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password.get_secret_value(),
            "POSTGRES_SCHEMA": self.schema_name,
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "8",
            "POSTGRES_LOCK_TIMEOUT": "30",
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "60",
        }

    def pg_conninfo(self) -> dict[str, str | int]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password.get_secret_value(),
            "dbname": self.dbname,
            "connect_timeout": 3,
            "application_name": "orchestrator",
        }


def sqlite_uri(path: Path) -> str:
    """A `file:` URI for a path, escaped (a '#' or '?' in a path is not a URI delimiter)."""
    return "file:" + quote(str(path))


def store_url_from_env(explicit: str | None) -> str:
    return explicit or os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_URL


def parse_store_url(url: str) -> StoreConfig:
    """Parse a store URL, or raise StoreError saying what a good one looks like."""
    hint = "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or len(rest) < 2:
            raise StoreError(f"store URL {url!r} has no file path; {hint}")
        path = Path(rest[1:])  # sqlite:///rel/path -> rel/path; sqlite:////abs -> /abs
        return StoreConfig(kind="sqlite", path=path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise StoreError(f"PostgreSQL store URL is malformed ({exc}); {hint}") from None
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise StoreError(f"PostgreSQL store URL has no database name; {hint}")
        query = parse_qs(parts.query)
        schema = query.get("schema", ["public"])[0]
        if not _SCHEMA_NAME.match(schema):
            raise StoreError(f"schema name {schema!r} is not a plain lower-case identifier")
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise StoreError(f"PostgreSQL store URL has a bad port; {hint}") from exc
        return StoreConfig(
            kind="postgresql",
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "postgres"),
            password=SecretStr(unquote(parts.password or "")),
            dbname=dbname,
            schema_name=schema,
        )
    scheme = url.split("://", 1)[0] if "://" in url else ""
    what = f"scheme {scheme[:20]!r}" if scheme else "form"
    raise StoreError(f"this store URL's {what} is not supported; {hint}")


def create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (stores, agent state, locks)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


# --- the door: check a store before eventsourcing opens it -------------------------------


def prepare_store(config: StoreConfig, *, create: bool) -> bool:
    """Check that the store is ours (or new, if create) and of a schema we can read.

    Returns whether every table of this layout is already in place."""
    if config.kind == "sqlite":
        meta = _prepare_sqlite(config, create=create)
    else:
        meta = _prepare_postgres(config, create=create)
    return meta.get("layout") == LAYOUT_VERSION


@contextlib.contextmanager
def store_layout(config: StoreConfig, *, create: bool) -> Iterator[bool]:
    """Check the store, and yield whether its tables are in place.

    When they are not, the block runs under a setup lock (PostgreSQL: an advisory
    lock; its DDL is not safe to run from several processes at once) and the
    layout is marked ready afterwards, so later opens run no DDL at all.
    """
    if prepare_store(config, create=create):
        yield True
        return
    if config.kind == "sqlite":  # SQLite serialises DDL itself
        yield False
        _write_meta(config, "layout", LAYOUT_VERSION)
        return
    with pg_connect(config) as conn:
        key = zlib.crc32(f"orchestrator-setup:{config.schema_name}".encode())
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            ready = prepare_store(config, create=create)
            yield ready
            if not ready:
                _write_meta(config, "layout", LAYOUT_VERSION)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _write_meta(config: StoreConfig, key: str, value: str) -> None:
    if config.kind == "sqlite":
        assert config.path is not None
        with contextlib.closing(sqlite3.connect(config.path, timeout=30)) as lite, lite:
            lite.execute(f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?)", (key, value))
        return
    with pg_connect(config) as conn:
        meta = psycopg.sql.SQL("{}.{}").format(
            psycopg.sql.Identifier(config.schema_name), psycopg.sql.Identifier(META_TABLE)
        )
        conn.execute(
            psycopg.sql.SQL(
                "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ).format(meta),
            (key, value),
        )


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
        conn = sqlite3.connect(f"{sqlite_uri(path)}?mode={'rwc' if create else 'ro'}", uri=True)
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


@contextlib.contextmanager
def pg_connect(config: StoreConfig) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain connection for the door checks, with errors made readable."""
    try:
        conn = psycopg.connect(**config.pg_conninfo(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        reason = config.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise StoreError(
            f"cannot connect to {config.redacted}: {reason}; check --store / ORCHESTRATOR_STORE "
            "and that PostgreSQL is running"
        ) from None
    try:
        yield conn
    finally:
        conn.close()


def _prepare_postgres(config: StoreConfig, *, create: bool) -> dict[str, str]:
    with pg_connect(config) as conn:
        schema = config.schema_name
        exists = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)).fetchone()
        if not exists:
            if not create:
                raise StoreError(f"no store at {config.redacted} (schema {schema!r} does not exist)")
            conn.execute(psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(schema)))
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchall()
        ]
        meta = psycopg.sql.SQL("{}.{}").format(psycopg.sql.Identifier(schema), psycopg.sql.Identifier(META_TABLE))

        def read_meta() -> dict[str, str]:
            rows = conn.execute(psycopg.sql.SQL("SELECT key, value FROM {}").format(meta)).fetchall()
            return {str(k): str(v) for k, v in rows}

        found = _check_tables(config, tables, create=create, read_meta=read_meta)
        if create:
            conn.execute(
                psycopg.sql.SQL("CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, value TEXT)").format(meta)
            )
            conn.execute(
                psycopg.sql.SQL("INSERT INTO {} VALUES ('schema_version', %s) ON CONFLICT DO NOTHING").format(meta),
                (str(SCHEMA_VERSION),),
            )
        return found


def _check_tables(
    config: StoreConfig,
    tables: list[str],
    *,
    create: bool,
    read_meta: object,
) -> dict[str, str]:
    """The store's metadata, after checking the store is ours and readable by us."""
    if META_TABLE in tables:
        assert callable(read_meta)
        meta: dict[str, str] = read_meta()
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
