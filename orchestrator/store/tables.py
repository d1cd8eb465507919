"""What each database module offers for tables beyond the event store's (the read models').

Statements are written once with `?` placeholders; PostgreSQL's connections
convert them. Writers of one purpose are serialised store-wide (SQLite by
`BEGIN IMMEDIATE`, PostgreSQL by a transaction-scoped advisory lock), so every
event is applied exactly once even with several processes writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

# The structured writes a read model batches (see projections/statements.py):
#   insert:    rows of a table (`columns` names them);  delete: rows whose key column is in a set;
#   decrement: counter columns lowered by summed amounts per key;
#   update:    text or integer columns set per key, on the rows that also match `where`
#              (the last values of a key win, except where a condition makes the order matter).
Operation = Literal["insert", "delete", "decrement", "update"]
Where = tuple[tuple[str, Any], ...]  # (column, value) pairs a row must equal; None means IS NULL


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Tables(Protocol):
    """Connections to a store's database for tables of our own (read models), one backend's way."""

    dialect: str
    # Events a live catch-up applies per transaction. A batch that spans a whole engine cycle
    # coalesces most (rows a cycle inserts and deletes are never written), but holds the
    # read models' write lock while it is built and written: on SQLite the file's only one.
    catch_up_events: int
    # Whether a catch-up reads and builds its batch before taking that lock, and only writes
    # under it: where the lock stops the engine (SQLite). Elsewhere building under the lock
    # spares processes that catch up at once from building the same batch.
    builds_catch_up_unlocked: bool

    def read(self) -> AbstractContextManager[Cursor]:
        """A consistent snapshot for reading (no lock that blocks writers)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One SELECT outside any transaction (a single statement is consistent by itself)."""

    def write(self, lock_name: str = "projections", *, flush: bool = True) -> AbstractContextManager[Cursor]:
        """A write transaction, serialised with every other writer of `lock_name`.

        `flush=False`: the commit does not wait for the disk. Only for what can be derived again
        from the log, written with its position (a crash of the machine may lose the last of it,
        and the next catch-up writes it again); never for the events or a prune."""

    def run_group(
        self,
        cursor: Cursor,
        operation: Operation,
        target: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        where: Where = (),
    ) -> None:
        """Run one group of structured writes in as few statements as this database allows."""

    def tables_starting(self, cursor: Cursor, prefix: str) -> list[str]:
        """Tables whose name starts with a prefix."""

    def exclusive(self, purpose: str) -> AbstractContextManager[bool]:
        """A store-wide lock for one purpose, held until the block ends or the process dies; False if taken."""

    def close(self) -> None: ...


def execute_rows(cursor: Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement for one row, `executemany` for more."""
    if len(rows) == 1:
        cursor.execute(sql, rows[0])
    else:
        cursor.executemany(sql, rows)


def condition_sql(where: Where, prefix: str = "") -> tuple[str, list[Any]]:
    """` AND col = ?` (or `IS NULL`) for each pair of a condition, and its parameters."""
    parts = [f" AND {prefix}{c} IS NULL" if v is None else f" AND {prefix}{c} = ?" for c, v in where]
    return "".join(parts), [v for _, v in where if v is not None]


def summed(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, int]]:
    """Decrements of one key add up."""
    totals: dict[Any, int] = {}
    for key, by in rows:
        totals[key] = totals.get(key, 0) + by
    return list(totals.items())
