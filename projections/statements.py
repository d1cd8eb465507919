"""The writes of a batch of events, coalesced in memory and sent as few statements as possible.

A batch holds the rows its events insert until it runs. An update, delete or
decrement by one of a row's identity columns (a column whose rows of one value
are all inserted by one event: a task id, a command id, a root command id)
finds the rows this batch inserted and changes them in memory instead, so a
command whose whole life falls in one batch costs its inserts alone, and a row
deleted again is never written. Writes to rows of earlier batches are grouped
by (lifecycle rank, operation); groups run after the inserts, rank by rank, in
order of first use within a rank. Structured operations go to the database
module, which sends each group as one statement where it can (PostgreSQL) or
one `executemany` (SQLite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.store.tables import Cursor, Operation, Tables, Where, execute_rows

Row = dict[str, Any]
GroupKey = tuple[int, str, str, tuple[str, ...], Where]  # rank, operation, table or SQL, columns, condition


@dataclass
class StatementBatch:
    groups: dict[GroupKey, list[tuple[Any, ...]]] = field(default_factory=dict)  # writes to older rows
    rank: int = 0  # the lifecycle rank of the event being applied
    inserted: dict[str, list[Row]] = field(default_factory=dict)  # table -> rows this batch inserts
    fresh: dict[tuple[str, str, Any], list[Row]] = field(default_factory=dict)  # (table, identity, key) -> rows
    removed: set[int] = field(default_factory=set)  # ids of inserted rows deleted again
    # (identity column, key) of rows known to leave again within this batch (the caller says, from
    # the batch's events): they are never inserted, since no reader sees inside a transaction
    doomed: set[tuple[str, Any]] = field(default_factory=set)
    gone: set[tuple[str, str, Any]] = field(default_factory=set)  # (table, identity, key) skipped as doomed

    def add(self, sql: str, *params: Any) -> None:
        """Any statement (run with `executemany` on both stores)."""
        self.groups.setdefault((self.rank, "sql", sql, (), ()), []).append(params)

    def insert(self, table: str, identity: tuple[str, ...] = (), **row: Any) -> None:
        """A whole row (every insert into one table names the same columns, in the same order)."""
        self.inserted.setdefault(table, []).append(row)
        for column in identity:
            self.fresh.setdefault((table, column, row[column]), []).append(row)

    def skips(self, table: str, column: str, key: Any) -> bool:
        """True if the rows of this identity leave again within the batch: the caller inserts none,
        and every later write to them is dropped."""
        if (column, key) not in self.doomed:
            return False
        self.gone.add((table, column, key))
        return True

    def delete(self, table: str, column: str, key: Any) -> None:
        rows = self.fresh.pop((table, column, key), None)
        if rows is None and (table, column, key) not in self.gone:
            self.groups.setdefault((self.rank, "delete", table, (column,), ()), []).append((key,))
            return
        self.removed.update(id(row) for row in rows or ())

    def decrement(self, table: str, key_column: str, key: Any, column: str, by: int) -> None:
        """Subtract from a counter column (decrements of one key in a group add up)."""
        rows = self.fresh.get((table, key_column, key))
        if rows is None and (table, key_column, key) not in self.gone:
            self.groups.setdefault((self.rank, "decrement", table, (key_column, column), ()), []).append((key, by))
            return
        for row in rows or ():
            row[column] -= by

    def update(
        self, table: str, key_column: str, key: Any, where: Mapping[str, Any] | None = None, **values: Any
    ) -> None:
        """Set columns of the rows whose `key_column` equals `key` (and that match `where`)."""
        rows = self.fresh.get((table, key_column, key))
        if rows is None and (table, key_column, key) not in self.gone:
            condition = tuple(where.items()) if where else ()
            group = self.groups.setdefault((self.rank, "update", table, (key_column, *values), condition), [])
            group.append((key, *values.values()))
            return
        for row in rows or ():
            if not where or all(row[c] == v for c, v in where.items()):
                row.update(values)

    def __len__(self) -> int:
        return sum(len(p) for p in self.groups.values()) + sum(len(rows) for rows in self.inserted.values())

    def writes(self) -> Writes:
        """What the batch writes, in the order it runs: plain tuples, ready to send to the database
        (or to another process: nothing in it refers to the batch's own rows)."""
        inserts = []
        for table, inserted in self.inserted.items():
            kept = [tuple(row.values()) for row in inserted if id(row) not in self.removed]
            if kept:
                inserts.append((table, tuple(inserted[0]), kept))
        ordered = sorted(enumerate(self.groups), key=lambda item: (item[1][0], item[0]))
        return Writes(inserts, [(key, self.groups[key]) for _, key in ordered])

    def run(self, cursor: Cursor, tables: Tables) -> None:
        self.writes().run(cursor, tables)


@dataclass(frozen=True)
class Writes:
    """A built batch: its inserts (table, columns, rows), then its other writes in order."""

    inserts: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = field(default_factory=list)
    groups: list[tuple[GroupKey, list[tuple[Any, ...]]]] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        """The rows its statements write (inserted rows deleted again within the batch are not)."""
        return sum(len(rows) for _, _, rows in self.inserts) + sum(len(rows) for _, rows in self.groups)

    def run(self, cursor: Cursor, tables: Tables) -> None:
        for table, columns, rows in self.inserts:
            tables.run_group(cursor, "insert", table, columns, rows)
        for (_, operation, target, columns, where), rows in self.groups:
            if operation == "sql":
                execute_rows(cursor, target, rows)
            else:
                tables.run_group(cursor, _operation(operation), target, columns, rows, where)


def _operation(name: str) -> Operation:
    assert name in ("delete", "decrement", "update"), name
    return name  # type: ignore[return-value]
