"""The store's raw commit rate: single-row write transactions per second on the bare driver.

The floor under any write path: no orchestrator code runs here.
"""

from __future__ import annotations

from scripts.bench_numbers import Stopwatch, median
from scripts.bench_plan import SectionRun
from scripts.bench_stores import Scratch, Store, bare_postgres, bare_sqlite


def commit_rate(scratch: Scratch, backend: str, samples: int) -> float:
    store = scratch.store(backend, "commit")
    try:
        if backend == "sqlite":
            return sqlite_commits(store, samples)
        return postgres_commits(store, samples)
    finally:
        scratch.drop(store)


def sqlite_commits(store: Store, samples: int) -> float:
    with bare_sqlite(store) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        watch = Stopwatch()
        for i in range(samples):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?, 'x')", (i,))
            conn.execute("COMMIT")
        return samples / watch.seconds


def postgres_commits(store: Store, samples: int) -> float:
    with bare_postgres(store) as conn:
        conn.execute(f"CREATE TABLE {store.schema}.t (id BIGINT PRIMARY KEY, v TEXT)")
        watch = Stopwatch()
        for i in range(samples):
            with conn.transaction():
                conn.execute(f"INSERT INTO {store.schema}.t VALUES (%s, 'x')", (i,), prepare=True)  # type: ignore[arg-type]
        return samples / watch.seconds


def run_section(run: SectionRun) -> float:
    rate = median([commit_rate(run.scratch, run.backend, run.sizes.commit_samples) for _ in range(run.runs)])
    run.say(f"raw commit rate {rate:,.0f}/s")
    return rate
