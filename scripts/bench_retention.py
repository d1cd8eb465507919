"""Retention: what a large history costs the engine, before and after pruning 90% of it.

One store holds `retention_history_events` events of ended history (RemoveVm
commands of 4 disks, 6 events each, written through the real aggregates as in
scripts/bench_recovery.py: planned by the real flow, taken through the same
aggregate methods the engine calls, 1,000 commands a transaction) and, beside
it, `retention_in_flight` real commands in flight (accepted by
`Orchestrator.submit`, submitted to the simulated agent by the real engine,
tasks that run for a day). 90% of the history is written, the cut-off is
taken, then the last 10% and the commands in flight: the prune takes exactly
the first 90%, and is not refused (nothing accepted before the cut-off is in
flight).

Measured before and after `orchestrator.retention.prune` (with an archive; its
time and the archive's size are reported), each the median of `runs`:
recovery (`TaskManager.recover()` on a store opened cold, as in
bench_recovery), "does entity X have running tasks"
(`ReadModelQueries.has_running_tasks`, on VMs with tasks in flight and on
absent ones), and an idle poll cycle (`TaskManager.cycle()`, every task running
on the agent, nothing changed). The store's size: the SQLite file after a WAL
checkpoint, and after VACUUM; on PostgreSQL `pg_total_relation_size` of the
events table and the sum over every table of the schema, before, after, and
after VACUUM FULL.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

from orchestrator import EntityRef, EntityType, Orchestrator, load_engine_settings
from orchestrator.retention import PruneRequest, prune
from orchestrator.testing import SimulatedAgent
from scripts.bench_numbers import Stopwatch, median, percentile
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_recovery import (
    HISTORY_BATCH,
    TASK_SECONDS,
    RecoveryStore,
    ended_command,
    submit_everything,
    time_recovery,
)
from scripts.bench_stores import PG_DSN, Store

EVENTS_PER_COMMAND = 6  # Accepted, TasksSubmitted, TasksEnded, EndActionStarted, Ended, TasksCleared
PRUNED_SHARE = 0.9
QUERY_SAMPLES = 2000
IDLE_CYCLES = 5


# ---- building the store ------------------------------------------------------------------------


def write_history(orch: Orchestrator, first: int, last: int) -> None:
    for start in range(first, last, HISTORY_BATCH):
        orch.save(*[ended_command(n) for n in range(start, min(last, start + HISTORY_BATCH))])


def build(run: SectionRun) -> tuple[RecoveryStore, datetime, int]:
    """The store: 90% of the history, the cut-off, the last 10%, then the commands in flight."""
    store = run.scratch.store(run.backend, "retention")
    rs = RecoveryStore(store, run.scratch.agent_path("retention"))
    commands = max(10, run.sizes.retention_history_events // EVENTS_PER_COMMAND)
    pruned = int(commands * PRUNED_SHARE)
    in_flight = run.sizes.retention_in_flight
    orch = Orchestrator.open(store.url, agent_state=rs.agent_state, create=True)
    agent = SimulatedAgent.open(rs.agent_state, task_seconds=TASK_SECONDS)
    try:
        orch.seed(in_flight, DISKS_PER_VM)
        watch = Stopwatch()
        write_history(orch, 1, pruned + 1)
        time.sleep(0.01)
        cutoff = datetime.now(UTC)
        time.sleep(0.01)
        write_history(orch, pruned + 1, commands + 1)
        rs.setup["history_write_seconds"] = watch.seconds
        watch = Stopwatch()
        orch.read_models.runner.catch_up()
        rs.setup["history_catch_up_seconds"] = watch.seconds
        for n in range(1, in_flight + 1):
            orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"})
        submit_everything(orch.engine(agent, load_engine_settings(submit_batch=1000)))
    finally:
        agent.close()
        orch.close()
    return rs, cutoff, pruned


# ---- measuring -------------------------------------------------------------------------------------


def time_queries(rs: RecoveryStore, in_flight: int) -> dict[str, float]:
    """p50 and p99 of "does entity X have running tasks": VMs with tasks in flight, and absent VMs."""
    orch = Orchestrator.open(rs.store.url, agent_state=rs.agent_state, create=False)
    try:
        refs = [
            EntityRef(EntityType.VM, f"vm-{1 + i % in_flight:04d}" if i % 2 else f"absent-{i:06d}")
            for i in range(QUERY_SAMPLES)
        ]
        for ref in refs[:200]:  # warm up
            orch.read_models.queries.has_running_tasks(ref)
        seconds = []
        for ref in refs:
            started = time.perf_counter()
            orch.read_models.queries.has_running_tasks(ref)
            seconds.append(time.perf_counter() - started)
    finally:
        orch.close()
    ordered = sorted(seconds)
    return {"p50_ms": percentile(ordered, 0.5) * 1000, "p99_ms": percentile(ordered, 0.99) * 1000}


def time_idle_cycle(rs: RecoveryStore) -> float:
    """The median of a few idle cycles of an engine that has recovered (every task running)."""
    orch = Orchestrator.open(rs.store.url, agent_state=rs.agent_state, create=False)
    agent = SimulatedAgent.open(rs.agent_state, task_seconds=TASK_SECONDS)
    try:
        engine = orch.engine(agent, load_engine_settings())
        engine.recover()
        engine.cycle()  # the first cycle after recovery may still catch up
        seconds = []
        for _ in range(IDLE_CYCLES):
            watch = Stopwatch()
            report = engine.cycle()
            seconds.append(watch.seconds)
            if report.events:
                raise RuntimeError(f"an idle cycle wrote {report.events} event(s)")
        return median(seconds)
    finally:
        agent.close()
        orch.close()


def measure(rs: RecoveryStore, run: SectionRun) -> dict[str, Any]:
    recoveries = [time_recovery(rs) for _ in range(run.runs)]
    queries = [time_queries(rs, run.sizes.retention_in_flight) for _ in range(run.runs)]
    return {
        "recover_seconds": median([r.recover_seconds for r in recoveries]),
        "decided": min(r.decided for r in recoveries),
        "log_events": recoveries[-1].log_events,
        "query_p50_ms": median([q["p50_ms"] for q in queries]),
        "query_p99_ms": median([q["p99_ms"] for q in queries]),
        "idle_cycle_seconds": median([time_idle_cycle(rs) for _ in range(run.runs)]),
        "size": store_size(rs.store),
    }


def store_size(store: Store, *, vacuum: bool = False) -> dict[str, int]:
    """Bytes the store takes: the SQLite file (checkpointed), or PostgreSQL's relation sizes."""
    if store.backend == "sqlite":
        assert store.path is not None
        lite = sqlite3.connect(store.path, isolation_level=None)
        try:
            if vacuum:
                lite.execute("VACUUM")
            lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            lite.close()
        return {"store_bytes": store.path.stat().st_size}
    with psycopg.connect(PG_DSN, autocommit=True) as pg:
        names = [
            str(r[0])
            for r in pg.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = %s AND table_type = 'BASE TABLE'",
                (store.schema,),
            ).fetchall()
        ]
        sizes = {}
        for name in names:
            table = psycopg.sql.Identifier(str(store.schema), name)
            if vacuum:
                pg.execute(psycopg.sql.SQL("VACUUM FULL {}").format(table))
            row = pg.execute(
                psycopg.sql.SQL("SELECT pg_total_relation_size({})").format(psycopg.sql.Literal(table.as_string(pg)))
            ).fetchone()
            sizes[name] = int(row[0]) if row else 0
    events = sizes.get("orchestrator_events", 0)
    return {"store_bytes": sum(sizes.values()), "events_table_bytes": events}


def run_section(run: SectionRun) -> dict[str, Any]:
    history = run.sizes.retention_history_events
    run.say(f"retention: writing {history:,} events of history, {run.sizes.retention_in_flight:,} commands in flight")
    rs, cutoff, pruned = build(run)
    archive = Path(run.scratch.root) / f"{rs.store.label}-archive.jsonl"
    try:
        before = measure(rs, run)
        run.say(f"retention before: recovery {before['recover_seconds']:.2f}s, {before['size']['store_bytes']:,} B")
        orch = Orchestrator.open(rs.store.url, agent_state=rs.agent_state, create=False)
        try:
            watch = Stopwatch()
            report = prune(orch.store, orch.read_models, PruneRequest(cutoff, archive))
            prune_seconds = watch.seconds
        finally:
            orch.close()
        if report.deleted_commands != pruned:
            raise RuntimeError(f"the prune took {report.deleted_commands:,} commands, expected {pruned:,}")
        run.say(f"retention: pruned {report.deleted_events:,} events in {prune_seconds:.1f}s")
        after = measure(rs, run)
        vacuumed = store_size(rs.store, vacuum=True)
    finally:
        archive.unlink(missing_ok=True)
        run.scratch.drop(rs.store)
    return {
        "history_events": history,
        "in_flight": run.sizes.retention_in_flight,
        "setup": rs.setup,
        "before": before,
        "after": after,
        "after_vacuum_size": vacuumed,
        "prune": {
            "seconds": prune_seconds,
            "commands": report.deleted_commands,
            "events": report.deleted_events,
            "events_per_second": report.deleted_events / max(prune_seconds, 1e-9),
            "archive_bytes": report.archive_bytes,
            "stored_bytes": report.stored_bytes,
            "batches": report.batches,
        },
    }
