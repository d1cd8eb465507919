"""Entity queries at 1,000,000 index rows: "does entity X have running tasks".

The index rows are synthetic, inserted in bulk (COPY on PostgreSQL, one
executemany on SQLite) into the real `proj_entity_tasks` of a fresh store:
250,000 tasks, each touching a VM, a disk, an image (written) and a storage
domain (read). 50,000 VMs with 5 disks each; 20 storage domains, skewed (the
first holds about a third of all tasks). 85% of tasks running, 10% planned,
5% ended but not yet cleared. One more storage domain, `sd-cold`, holds 5,000
rows of ended tasks only: the worst case for "has running tasks", reported
apart.

"does entity X have running tasks" is timed through the real API,
`ReadModelQueries.has_running_tasks` (a read transaction each), and, for
comparison, as the bare SELECT on one open connection.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from orchestrator import EntityRef, EntityType, Orchestrator
from scripts.bench_numbers import Stopwatch, median, percentile
from scripts.bench_plan import SectionRun
from scripts.bench_stores import PG_DSN, Scratch, Store

ROWS_PER_TASK = 4
DISKS_PER_QUERY_VM = 5
DOMAINS = 20
COLD_ROWS = 5000
COLUMNS = (
    "entity_type",
    "entity_id",
    "task_id",
    "command_id",
    "root_command_id",
    "status",
    "read_only",
    "agent_task_id",
)
HAS_RUNNING_SQL = (
    "SELECT 1 FROM proj_entity_tasks WHERE entity_type = ? AND entity_id = ?"
    " AND status IN ('planned', 'running') LIMIT 1"
)
Row = tuple[str, str, str, str, str, str, int, str | None]


def _domain(rng: random.Random) -> str:
    return "sd-1" if rng.random() < 0.33 else f"sd-{rng.randint(2, DOMAINS)}"


def _status(rng: random.Random) -> str:
    roll = rng.random()
    return "running" if roll < 0.85 else "planned" if roll < 0.95 else rng.choice(("succeeded", "failed"))


def index_rows(total_rows: int, seed: int = 7) -> Iterator[Row]:
    rng = random.Random(seed)
    tasks = (total_rows - COLD_ROWS) // ROWS_PER_TASK
    for t in range(tasks):
        vm = t // DISKS_PER_QUERY_VM
        task_id, root = f"task-{t:07d}", f"cmd-{vm:06d}"
        status = _status(rng)
        agent = None if status == "planned" else f"agent-{t:07d}"
        yield ("vm", f"qvm-{vm:06d}", task_id, f"child-{t:07d}", root, status, 0, agent)
        yield ("disk", f"qdisk-{t:07d}", task_id, f"child-{t:07d}", root, status, 0, agent)
        yield ("image", f"qimg-{t:07d}", task_id, f"child-{t:07d}", root, status, 0, agent)
        yield ("storage_domain", _domain(rng), task_id, f"child-{t:07d}", root, status, 1, agent)
    for c in range(COLD_ROWS):
        yield ("storage_domain", "sd-cold", f"cold-{c:06d}", f"cchild-{c:06d}", f"ccmd-{c:06d}", "succeeded", 1, "x")


def query_targets(total_rows: int, samples: int, seed: int = 11) -> list[tuple[str, EntityRef]]:
    """(kind, entity) to ask about: a mix of hot domains, VMs, disks, images and absent entities."""
    rng = random.Random(seed)
    tasks = (total_rows - COLD_ROWS) // ROWS_PER_TASK
    vms = max(1, tasks // DISKS_PER_QUERY_VM)
    makers: list[tuple[str, Callable[[], EntityRef]]] = [
        ("storage domain", lambda: EntityRef(EntityType.STORAGE_DOMAIN, f"sd-{rng.randint(1, DOMAINS)}")),
        ("vm", lambda: EntityRef(EntityType.VM, f"qvm-{rng.randrange(vms):06d}")),
        ("disk", lambda: EntityRef(EntityType.DISK, f"qdisk-{rng.randrange(tasks):07d}")),
        ("image", lambda: EntityRef(EntityType.IMAGE, f"qimg-{rng.randrange(tasks):07d}")),
        ("absent", lambda: EntityRef(EntityType.VM, f"nope-{rng.randrange(10**6):06d}")),
    ]
    out = []
    for i in range(samples):
        kind, make = makers[i % len(makers)]
        out.append((kind, make()))
    return out


# ---- loading -------------------------------------------------------------------------------------


def load_index(store: Store, rows: int) -> float:
    watch = Stopwatch()
    if store.backend == "sqlite":
        _load_sqlite(store, rows)
    else:
        _load_postgres(store, rows)
    return watch.seconds


def _load_sqlite(store: Store, rows: int) -> None:
    assert store.path is not None
    lite = sqlite3.connect(store.path)
    with lite:
        lite.executemany(f"INSERT INTO proj_entity_tasks VALUES ({', '.join('?' * len(COLUMNS))})", index_rows(rows))
    lite.execute("ANALYZE")
    lite.close()


def _load_postgres(store: Store, rows: int) -> None:
    with psycopg.connect(PG_DSN, autocommit=True, options=f"-c search_path={store.schema}") as pg:
        with pg.cursor() as cur, cur.copy(f"COPY proj_entity_tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in index_rows(rows):
                copy.write_row(row)
        pg.execute("ANALYZE proj_entity_tasks")


# ---- timing ---------------------------------------------------------------------------------------


@dataclass
class Latencies:
    p50_ms: float
    p99_ms: float
    max_ms: float
    by_kind_p99_ms: dict[str, float]
    cold_p50_ms: float
    answers_true: float  # share of queries answered "yes"


def _time_each(targets: list[tuple[str, EntityRef]], ask: Callable[[EntityRef], bool]) -> tuple[list[float], int]:
    seconds, yes = [], 0
    for _, ref in targets:
        started = time.perf_counter()
        yes += ask(ref)
        seconds.append(time.perf_counter() - started)
    return seconds, yes


def _latencies(
    targets: list[tuple[str, EntityRef]], ask: Callable[[EntityRef], bool], cold: Callable[[], bool]
) -> Latencies:
    _time_each(targets[: max(50, len(targets) // 10)], ask)  # warm up
    seconds, yes = _time_each(targets, ask)
    ordered = sorted(seconds)
    kinds: dict[str, list[float]] = {}
    for (kind, _), s in zip(targets, seconds, strict=True):
        kinds.setdefault(kind, []).append(s)
    cold_times = sorted(
        _time_each([("cold", EntityRef(EntityType.STORAGE_DOMAIN, "sd-cold"))] * 50, lambda _: cold())[0]
    )
    return Latencies(
        p50_ms=percentile(ordered, 0.50) * 1000,
        p99_ms=percentile(ordered, 0.99) * 1000,
        max_ms=ordered[-1] * 1000,
        by_kind_p99_ms={k: percentile(sorted(v), 0.99) * 1000 for k, v in kinds.items()},
        cold_p50_ms=percentile(cold_times, 0.50) * 1000,
        answers_true=yes / len(targets),
    )


def _bare_asker(store: Store) -> tuple[Callable[[EntityRef], bool], Callable[[], None]]:
    """The same SELECT on one open autocommit connection, no read transaction around it."""
    if store.backend == "sqlite":
        assert store.path is not None
        lite = sqlite3.connect(store.path, isolation_level=None)

        def ask_lite(ref: EntityRef) -> bool:
            return lite.execute(HAS_RUNNING_SQL, (ref.type.value, ref.id)).fetchone() is not None

        return ask_lite, lite.close
    pg = psycopg.connect(PG_DSN, autocommit=True, options=f"-c search_path={store.schema}")
    sql = HAS_RUNNING_SQL.replace("?", "%s")

    def ask_pg(ref: EntityRef) -> bool:
        return pg.execute(sql, (ref.type.value, ref.id), prepare=True).fetchone() is not None

    return ask_pg, pg.close


def _median_latencies(runs: list[Latencies]) -> dict[str, object]:
    kinds = runs[0].by_kind_p99_ms
    return {
        "p50_ms": median([r.p50_ms for r in runs]),
        "p99_ms": median([r.p99_ms for r in runs]),
        "max_ms": median([r.max_ms for r in runs]),
        "by_kind_p99_ms": {k: median([r.by_kind_p99_ms[k] for r in runs]) for k in kinds},
        "cold_p50_ms": median([r.cold_p50_ms for r in runs]),
        "answers_true": runs[0].answers_true,
        "runs_p99_ms": [r.p99_ms for r in runs],
    }


def run_queries(scratch: Scratch, backend: str, rows: int, samples: int, runs: int) -> dict[str, object]:
    """Load the index once, then time the query `runs` times (fresh random targets each time)."""
    store = scratch.store(backend, "queries")
    orch = Orchestrator.open(store.url, agent_state=scratch.agent_path("queries"), create=True)
    cold = EntityRef(EntityType.STORAGE_DOMAIN, "sd-cold")
    try:
        load_seconds = load_index(store, rows)
        api, bare = [], []
        ask, close = _bare_asker(store)
        try:
            for run in range(runs):
                targets = query_targets(rows, samples, seed=11 + run)
                api.append(
                    _latencies(
                        targets,
                        orch.read_models.queries.has_running_tasks,
                        lambda: orch.read_models.queries.has_running_tasks(cold),
                    )
                )
                bare.append(_latencies(targets, ask, lambda: ask(cold)))
        finally:
            close()
        return {
            "rows": rows,
            "samples": samples,
            "load_seconds": load_seconds,
            "api": _median_latencies(api),
            "bare": _median_latencies(bare),
        }
    finally:
        orch.close()
        scratch.drop(store)


def run_section(run: SectionRun) -> dict[str, object]:
    result = run_queries(run.scratch, run.backend, run.sizes.query_rows, run.sizes.query_samples, run.runs)
    run.say("entity queries timed")
    return result
