"""Several engine processes on one PostgreSQL database: lifecycle throughput, and what the leases cost.

PostgreSQL only (SQLite runs one engine at a time).

Throughput: 1, 2 and 3 engine processes (`orchestrator run`, poll interval 0.05 s, other settings
the defaults) share five pools: four with an agent server each (tasks finish at once) and the
default pool (no commands). Once each engine holds its fair share of the pools, and a warm-up
command per pool has ended, N RemoveVm commands of 4 disks, spread evenly over the four pools, are
accepted (`submit_many`); the clock runs from the first accept to the moment no command is in flight
(the in-flight index read every 20 ms). Every run ends with the invariants checked.

Lease cost: on a PostgreSQL server of this section's own (`initdb`, logging every statement with its
client's application name), 1, 2 and 3 idle engines with default settings hold the same five pools;
over a window, the statements and transactions of their lease connections (application name
`orchestrator-lease`: the heartbeat, which renews the engine row and each lease it holds, every
third of the lease timeout; and the rebalance, a snapshot of the lease tables plus, when other
engines hold pools, a check of their liveness locks, about every poll interval) are counted from the
server's log, per engine and per cycle. The event store's own connections (application name
`orchestrator`) are counted beside them, for scale. Every write transaction of an engine carries one
statement more, its fence check (not counted here: it is part of the write).
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from orchestrator import DEFAULT_POOL, SubmitResult
from orchestrator.testing import check_invariants
from orchestrator.testing.postgres_server import PostgresServer, postgres_bin_dir
from scripts.bench_numbers import median
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_stores import Scratch, Store
from scripts.bench_takeover import POSTGRES_ONLY, EngineProcess, Rig, holder_pids, rig, wait_until

POOLS = ("p1", "p2", "p3", "p4")
POLL_INTERVAL = "0.05"
LEASE_APP = "orchestrator-lease"
STORE_APP = "orchestrator"


def fair_split(pools: int, engines: int) -> list[int]:
    """How many pools each engine holds once they have shared them out (sorted)."""
    low, extra = divmod(pools, engines)
    return sorted([low + 1] * extra + [low] * (engines - extra))


def split_now(r: Rig, engines: list[EngineProcess]) -> list[int]:
    held = holder_pids(r.orch)
    pids = {e.pid for e in engines}
    counts = Counter(pid for pid in held.values() if pid in pids)
    return sorted(counts.get(e.pid, 0) for e in engines) if len(held) == len(POOLS) + 1 else []


def start_engines(r: Rig, count: int, **settings: str) -> list[EngineProcess]:
    """`count` engines, started together, once they hold every pool in a fair split."""
    engines = [r.engine(f"engine-{n}", **settings).start() for n in range(1, count + 1)]
    want = fair_split(len(POOLS) + 1, count)
    try:
        wait_until(lambda: split_now(r, engines) == want, 90, f"{count} engine(s) to share the pools", 0.05)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: {[e.last_lines(3) for e in engines]}") from None
    return engines


def in_flight(r: Rig) -> int:
    return len(r.orch.store.in_flight_ids())


# ---- throughput -------------------------------------------------------------------------------------------


@dataclass
class EnginesRun:
    engines: int
    seconds: float
    commands: int
    violations: list[str]
    exits: list[int | None]

    @property
    def tasks_per_second(self) -> float:
        return self.commands * DISKS_PER_VM / self.seconds


def throughput_run(scratch: Scratch, engines: int, commands: int) -> EnginesRun:
    per_pool = commands // len(POOLS)
    with rig(scratch, f"engines{engines}", {p: per_pool + 1 for p in POOLS}, 0.0) as r:
        running = start_engines(r, engines, poll_interval=POLL_INTERVAL)
        warm = [r.orch.submit("RemoveVm", {"vm_id": r.vms[p].pop()}).command_id for p in POOLS]
        wait_until(lambda: in_flight(r) == 0, 60, "the warm-up commands to end", 0.02)
        requests = [("RemoveVm", {"vm_id": vm}) for n in range(per_pool) for vm in (r.vms[p][n] for p in POOLS)]
        started = time.perf_counter()
        accepted: list[UUID] = []
        for result in r.orch.submit_many(requests):
            assert isinstance(result, SubmitResult), result
            accepted.append(result.command_id)
        wait_until(lambda: in_flight(r) == 0, 600, "every command to end", 0.02)
        seconds = time.perf_counter() - started
        exits = [e.stop() for e in running]
        controls = r.orch.simulators()
        try:
            results = check_invariants(r.orch, controls, expected_commands=[*warm, *accepted])
        finally:
            for control in controls.values():
                control.close()
        violations = [f"{x.number}. {x.name}: {x.detail}" for x in results if not x.ok]
        return EnginesRun(engines, seconds, len(accepted), violations, exits)


def throughput_level(run: SectionRun, engines: int) -> dict[str, Any]:
    runs = []
    for n in range(1, run.runs + 1):
        runs.append(throughput_run(run.scratch, engines, run.sizes.engines_commands))
        run.say(
            f"engines: {engines} engine(s), run {n}: {runs[-1].tasks_per_second:,.0f} tasks/s "
            f"({runs[-1].commands} commands in {runs[-1].seconds:.2f}s)"
        )
    return {
        "engines": engines,
        "commands": runs[0].commands,
        "tasks": runs[0].commands * DISKS_PER_VM,
        "seconds": median([r.seconds for r in runs]),
        "tasks_per_second": median([r.tasks_per_second for r in runs]),
        "commands_per_second": median([r.commands / r.seconds for r in runs]),
        "violations": sorted({v for r in runs for v in r.violations}),
        "engine_exits": sorted({str(c) for r in runs for c in r.exits}),
        "runs": [r.tasks_per_second for r in runs],
    }


# ---- the leases' own cost ------------------------------------------------------------------------------------

LOG_LINE = re.compile(r"\[\d+\] (?P<app>\S*) ?LOG:  (?:statement|execute [^:]*): (?P<sql>.*)$")


@dataclass
class StatementTally:
    statements: Counter[str]  # by kind, transaction control apart
    transactions: int  # COMMITs and ROLLBACKs
    store_statements: int  # of the event store's connections
    store_transactions: int


def statement_kind(sql: str) -> str:
    text = sql.strip()
    head = text.split(None, 1)[0].upper() if text else ""
    if head in ("BEGIN", "COMMIT", "ROLLBACK"):
        return head.lower()
    if head == "INSERT" and "orchestrator_engines" in text:
        return "beat: engine row"
    if head == "UPDATE" and "orchestrator_leases" in text and "engine_id = NULL" not in text:
        return "beat: lease renewal"
    if "pg_try_advisory_xact_lock" in text:
        return "rebalance: liveness check"
    if head == "SELECT" and ("FROM" in text and ("orchestrator_leases" in text or "orchestrator_engines" in text)):
        return "rebalance: snapshot"
    if head == "SELECT" and "clock_timestamp" in text:
        return "rebalance: snapshot"
    if head == "INSERT" and "orchestrator_leases" in text:
        return "acquire"
    return "other"


def count_log(text: str) -> StatementTally:
    tally = StatementTally(Counter(), 0, 0, 0)
    for line in text.splitlines():
        match = LOG_LINE.search(line)
        if match is None:
            continue
        kind = statement_kind(match["sql"])
        if match["app"] == LEASE_APP:
            if kind in ("commit", "rollback"):
                tally.transactions += 1
            elif kind != "begin":
                tally.statements[kind] += 1
        elif match["app"] == STORE_APP:
            if kind in ("commit", "rollback"):
                tally.store_transactions += 1
            elif kind != "begin":
                tally.store_statements += 1
    return tally


@contextmanager
def logging_server() -> Iterator[tuple[PostgresServer, Path]]:
    """A PostgreSQL server of this section's own, logging every statement with its client's name."""
    with PostgresServer() as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '")
            conn.execute("SELECT pg_reload_conf()")
        yield server, server.root / "server.log"


def lease_cost_level(
    scratch: Scratch, server: PostgresServer, log: Path, engines: int, window: float
) -> dict[str, Any]:
    """Idle engines holding the pools: what their lease connections send per second and per cycle."""
    name = f"lease{engines}-{uuid.uuid4().hex[:6]}"
    store = Store("postgres", f"{server.url}?schema={name.replace('-', '_')}", name)  # gone with the server
    with rig(scratch, name, {p: 1 for p in POOLS}, 0.0, store) as r:
        running = start_engines(r, engines)
        time.sleep(2.0)  # past the first rebalances after the split (a measurement window follows)
        begin = log.stat().st_size
        time.sleep(window)  # the window counted: the engines idle, holding their pools
        end = log.stat().st_size
        with log.open("rb") as f:
            f.seek(begin)
            text = f.read(end - begin).decode(errors="replace")
        exits = [e.stop() for e in running]
    tally = count_log(text)
    kinds = tally.statements
    beats = kinds["beat: engine row"]
    rebalances = sum(1 for line in text.splitlines() if LEASE_APP in line and "SELECT pool_id, engine_id" in line)
    beat_statements = kinds["beat: engine row"] + kinds["beat: lease renewal"]
    rebalance_statements = kinds["rebalance: snapshot"] + kinds["rebalance: liveness check"]
    per_engine_second = window * engines
    return {
        "engines": engines,
        "pools": len(POOLS) + 1,
        "window_seconds": window,
        "statements_per_engine_second": sum(kinds.values()) / per_engine_second,
        "transactions_per_engine_second": tally.transactions / per_engine_second,
        "beats_per_engine_second": beats / per_engine_second,
        "rebalances_per_engine_second": rebalances / per_engine_second,
        "statements_per_beat": beat_statements / beats if beats else float("nan"),
        "statements_per_rebalance": rebalance_statements / rebalances if rebalances else float("nan"),
        "transactions_per_rebalance": (tally.transactions - beats) / rebalances if rebalances else float("nan"),
        "store_statements_per_engine_second": tally.store_statements / per_engine_second,
        "store_transactions_per_engine_second": tally.store_transactions / per_engine_second,
        "by_kind": dict(kinds),
        "engine_exits": exits,
    }


def run_section(run: SectionRun) -> dict[str, Any]:
    if run.backend != "postgres":
        run.say(f"engines: skipped ({POSTGRES_ONLY})")
        return {"skipped": POSTGRES_ONLY}
    throughput = [throughput_level(run, n) for n in run.sizes.engine_counts]
    base = throughput[0]["tasks_per_second"]
    for level in throughput:
        level["speedup"] = level["tasks_per_second"] / base
    lease_cost: list[dict[str, Any]] = []
    if postgres_bin_dir() is None:
        run.say("engines: lease cost skipped (no PostgreSQL server binaries to start a server of its own)")
    else:
        with logging_server() as (server, log):
            for n in run.sizes.engine_counts:
                lease_cost.append(lease_cost_level(run.scratch, server, log, n, run.sizes.lease_cost_seconds))
                x = lease_cost[-1]
                run.say(
                    f"engines: lease cost with {n} idle engine(s): {x['statements_per_engine_second']:.2f} "
                    f"statements/s, {x['transactions_per_engine_second']:.2f} tx/s per engine"
                )
    return {
        "pools": [*POOLS, DEFAULT_POOL],
        "poll_interval": float(POLL_INTERVAL),
        "throughput": throughput,
        "lease_cost": lease_cost,
    }
