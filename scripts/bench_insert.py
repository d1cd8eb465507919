"""The store's raw event insert rate: rows shaped like our events, on the bare driver, 100 to a transaction.

A ceiling over any write path, beside the raw commit rate (scripts/bench_commit.py):
no orchestrator code runs. The rows have the event table's key (originator id,
version) and a state of the size of an average RemoveVm event; SQLite inserts a
transaction's rows with one `executemany`, PostgreSQL with one COPY.
"""

from __future__ import annotations

import uuid

from scripts.bench_numbers import Stopwatch, median
from scripts.bench_plan import SectionRun
from scripts.bench_stores import Scratch, Store, bare_postgres, bare_sqlite

PER_TRANSACTION = 100
STATE = b"x" * 600  # bytes: about the mean state of a RemoveVm's events
TOPIC = "orchestrator.domain.inventory:Disk.LockTaken"


def insert_rate(scratch: Scratch, backend: str, events: int) -> float:
    store = scratch.store(backend, "insert")
    try:
        return sqlite_inserts(store, events) if backend == "sqlite" else postgres_inserts(store, events)
    finally:
        scratch.drop(store)


def _batches(events: int) -> list[list[tuple[str, int, str, bytes]]]:
    rows = [(uuid.uuid4().hex, 1, TOPIC, STATE) for _ in range(events)]
    return [rows[i : i + PER_TRANSACTION] for i in range(0, events, PER_TRANSACTION)]


def sqlite_inserts(store: Store, events: int) -> float:
    with bare_sqlite(store) as conn:
        conn.execute(
            "CREATE TABLE e (originator_id TEXT, originator_version INTEGER, topic TEXT, state BLOB,"
            " PRIMARY KEY (originator_id, originator_version))"
        )
        batches = _batches(events)
        watch = Stopwatch()
        for rows in batches:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO e VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        return events / watch.seconds


def postgres_inserts(store: Store, events: int) -> float:
    with bare_postgres(store) as conn:
        table = f"{store.schema}.e"
        conn.execute(
            f"CREATE TABLE {table} (notification_id BIGSERIAL, originator_id UUID, originator_version INTEGER,"
            " topic TEXT, state BYTEA, PRIMARY KEY (originator_id, originator_version))"
        )
        batches = _batches(events)
        watch = Stopwatch()
        for rows in batches:
            with (
                conn.transaction(),
                conn.cursor().copy(
                    f"COPY {table} (originator_id, originator_version, topic, state) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        return events / watch.seconds


def run_section(run: SectionRun) -> float:
    events = run.sizes.commit_samples * 40
    rate = median([insert_rate(run.scratch, run.backend, events) for _ in range(run.runs)])
    run.say(f"raw event insert rate {rate:,.0f}/s")
    return rate
