"""The store layer: store URLs, the door checks, the event store, and one module per database.

A database is chosen once, by the URL's scheme (`dialect_for`); everything that
differs between SQLite and PostgreSQL lives in `sqlite.py` or `postgres.py`.
"""

from __future__ import annotations

from orchestrator.store.door import (
    LAYOUT_VERSION,
    META_TABLE,
    check_store,
    create_private_file,
    sqlite_uri,
    store_layout,
)
from orchestrator.store.event_store import Dialect, EventStore, writer_of
from orchestrator.store.url import STORE_ENV_VAR, StoreConfig, parse_store_url, store_url_from_env


def dialect_for(config: StoreConfig) -> Dialect:
    """The database module for a store, imported only when used (SQLite never loads psycopg)."""
    if config.kind == "sqlite":
        from orchestrator.store.sqlite import SQLiteDialect

        return SQLiteDialect(config)
    from orchestrator.store.postgres import PostgresDialect

    return PostgresDialect(config)


__all__ = [
    "LAYOUT_VERSION",
    "META_TABLE",
    "STORE_ENV_VAR",
    "Dialect",
    "EventStore",
    "StoreConfig",
    "check_store",
    "create_private_file",
    "dialect_for",
    "parse_store_url",
    "sqlite_uri",
    "store_layout",
    "store_url_from_env",
    "writer_of",
]
