"""The writes of a batch of events, grouped to be sent as few statements as possible.

Writes are grouped by (lifecycle rank, operation); groups run rank by rank, in
order of first use within a rank. Structured operations (insert, update by key,
delete by key, decrements) go to the database module, which sends each group as
one statement where it can (PostgreSQL) or one `executemany` (SQLite).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.store.tables import Cursor, Operation, Tables, execute_rows

GroupKey = tuple[int, str, str, tuple[str, ...]]  # rank, operation ("sql" or an Operation), table or SQL, columns


@dataclass
class StatementBatch:
    groups: dict[GroupKey, list[tuple[Any, ...]]] = field(default_factory=dict)
    rank: int = 0

    def add(self, sql: str, *params: Any) -> None:
        """Any statement (run with `executemany` on both stores)."""
        self.groups.setdefault((self.rank, "sql", sql, ()), []).append(params)

    def insert(self, table: str, *row: Any) -> None:
        self.groups.setdefault((self.rank, "insert", table, ()), []).append(row)

    def delete(self, table: str, column: str, key: Any) -> None:
        self.groups.setdefault((self.rank, "delete", table, (column,)), []).append((key,))

    def keyed(self, template: str, key: Any) -> None:
        """A statement that only varies by one key, written with `{match}` where `= key` goes."""
        self.groups.setdefault((self.rank, "keyed", template, ()), []).append((key,))

    def decrement(self, table: str, key_column: str, key: Any, column: str, by: int) -> None:
        """Subtract from a counter column (decrements of one key in a group add up)."""
        self.groups.setdefault((self.rank, "decrement", table, (key_column, column)), []).append((key, by))

    def update(self, table: str, key_column: str, key: Any, **values: str | None) -> None:
        """Set text columns of the rows whose `key_column` equals `key`."""
        columns = (key_column, *values)
        self.groups.setdefault((self.rank, "update", table, columns), []).append((key, *values.values()))

    def __len__(self) -> int:
        return sum(len(p) for p in self.groups.values())

    def run(self, cursor: Cursor, tables: Tables) -> None:
        ordered = sorted(enumerate(self.groups), key=lambda item: (item[1][0], item[0]))
        for _, key in ordered:
            _, operation, target, columns = key
            rows = self.groups[key]
            if operation == "sql":
                execute_rows(cursor, target, rows)
            else:
                tables.run_group(cursor, _operation(operation), target, columns, rows)


def _operation(name: str) -> Operation:
    assert name in ("insert", "delete", "keyed", "decrement", "update"), name
    return name  # type: ignore[return-value]
