"""Recovery time: from engine start to every in-flight command decided.

The in-flight commands are real: accepted by `Orchestrator.submit` and
submitted to the simulated agent by the real engine (tasks that run for a
day), then the engine is dropped. Each measurement is a process of its own, as
an engine's start after a crash is: it opens the store, builds a new
`TaskManager` and times `recover()`, without the heap and the caches of the
process that built the store.

The ended history is written through the real aggregates, not the engine:
each history command is planned by the real RemoveVm flow (against an
in-memory copy of a 4-disk VM) and taken through the same aggregate methods
the engine calls (tasks submitted, tasks ended, end action
started, ended, tasks cleared), and saved 250 commands to a transaction.
Their inventory events (locks, removals) and their agent journal rows are not
written: recovery reads neither for ended commands.

The read models' catch-up of that history (the backlog) is timed as many
times as the recoveries, each in a process of its own: the read models'
tables are copied aside before the history is written (the commands in
flight, caught up) and put back before each run, so that each catches up the
same 600,000 events into the same tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import EntityRef, Orchestrator, PlanContext, RootCommand, TaskManager, load_engine_settings
from orchestrator.domain.inventory import Disk, InventoryEntity, Vm
from orchestrator.domain.model import CommandStatus, TaskStatus
from orchestrator.flows import get_flow
from orchestrator.testing import SimulatedAgent
from projections import READ_MODELS
from scripts.bench_numbers import Stopwatch, median
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_results import REPO
from scripts.bench_stores import Scratch, Store

TASK_SECONDS = 24 * 3600.0
HISTORY_BATCH = 250  # commands a transaction (1,500 events: psycopg can hang on one huge pipelined insert, psycopg#685)
READ_MODEL_TABLES = ("proj_tracking", *(table for model in READ_MODELS.values() for table in model.tables))
KEPT_PREFIX = "bench_kept_"  # the read models' tables as they were before the backlog


@dataclass
class RecoveryStore:
    store: Store
    agent_state: Path
    setup: dict[str, float] = field(default_factory=dict)


@dataclass
class RecoveryRun:
    recover_seconds: float
    open_seconds: float
    decided: int
    verdicts: dict[str, int]
    log_events: int


# ---- building the store ------------------------------------------------------------------------


def build_in_flight(scratch: Scratch, backend: str, commands: int) -> RecoveryStore:
    store = scratch.store(backend, "recovery")
    rs = RecoveryStore(store, scratch.agent_path("recovery"))
    orch = Orchestrator.open(store.url, agent_state=rs.agent_state, create=True)
    agent = SimulatedAgent.open(rs.agent_state, task_seconds=TASK_SECONDS)
    try:
        orch.seed(commands, DISKS_PER_VM)
        watch = Stopwatch()
        for n in range(1, commands + 1):
            orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"})
        rs.setup["accept_seconds"] = watch.seconds
        watch = Stopwatch()
        submit_everything(orch.engine(agent, load_engine_settings(submit_batch=1000)))
        rs.setup["engine_submit_seconds"] = watch.seconds
    finally:
        agent.close()
        orch.close()
    return rs


def submit_everything(engine: TaskManager) -> None:
    engine.recover()
    while not all(
        c.status is CommandStatus.RUNNING and all(t.status is TaskStatus.RUNNING for t in c.tasks.values())
        for c in engine.inflight.values()
    ):
        engine.cycle()


class MemoryInventory:
    """The inventory a flow plans against, held in memory only."""

    def __init__(self, entities: list[InventoryEntity]) -> None:
        self.entities = {e.ref: e for e in entities}

    def get(self, ref: EntityRef) -> InventoryEntity | None:
        return self.entities.get(ref)

    def add(self, entity: InventoryEntity) -> None:
        self.entities[entity.ref] = entity

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Everything is in memory already."""


def ended_command(number: int) -> RootCommand:
    """A RemoveVm command planned by the real flow and taken to its end through the real aggregate."""
    vm_id = f"hist-{number:06d}"
    disk_ids = [f"hdisk-{number:06d}-{k}" for k in range(1, DISKS_PER_VM + 1)]
    disks = [
        Disk.register(d, vm_id=vm_id, storage_domain_id="sd-1", image_id=f"himg-{d}", volumes=[f"hvol-{d}"])
        for d in disk_ids
    ]
    inventory = MemoryInventory([Vm.register(vm_id, name=vm_id, status="up", disk_ids=disk_ids), *disks])
    flow = get_flow("RemoveVm")
    params = flow.parse_params({"vm_id": vm_id})
    command_id = uuid.uuid4()
    plan = flow.plan(PlanContext(command_id, inventory, lambda _ref: []), params)
    children = [c.to_record() for c in plan.children]
    command = RootCommand.accept(
        command_id, flow.name, params.model_dump(mode="json"), plan.summary, plan.entities, children
    )
    task_ids = list(command.tasks)
    command.record_submitted([(t, str(uuid.uuid4())) for t in task_ids])
    command.record_ended(
        [{"task_id": t, "status": "succeeded", "kind": "finished", "message": "", "result": {}} for t in task_ids]
    )
    command.start_end_action()
    command.end()
    command.record_cleared(task_ids)
    return command


def add_history(rs: RecoveryStore, commands: int) -> None:
    orch = Orchestrator.open(rs.store.url, agent_state=rs.agent_state, create=False)
    try:
        orch.read_models.catch_up()  # the commands in flight, already: nothing to do
        keep_read_models(orch)
        watch = Stopwatch()
        for start in range(0, commands, HISTORY_BATCH):
            batch = [ended_command(n) for n in range(start + 1, min(commands, start + HISTORY_BATCH) + 1)]
            orch.save(*batch)
        rs.setup["history_write_seconds"] = watch.seconds
    finally:
        orch.close()


def keep_read_models(orch: Orchestrator) -> None:
    """Copy the read models' tables aside, as they are, to put them back before each timed backlog."""
    with orch.read_models.tables.write() as cur:
        for table in READ_MODEL_TABLES:
            cur.execute(f"DROP TABLE IF EXISTS {KEPT_PREFIX}{table}")
            cur.execute(f"CREATE TABLE {KEPT_PREFIX}{table} AS SELECT * FROM {table}")


def put_back_read_models(orch: Orchestrator) -> None:
    """The read models' tables as `keep_read_models` found them (emptied as a new store's are)."""
    tables = orch.read_models.tables
    empty = "TRUNCATE {}" if tables.dialect == "postgresql" else "DELETE FROM {}"
    with tables.write() as cur:
        for table in READ_MODEL_TABLES:
            cur.execute(empty.format(table))
            cur.execute(f"INSERT INTO {table} SELECT * FROM {KEPT_PREFIX}{table}")


# ---- measuring -------------------------------------------------------------------------------------


def time_recovery(rs: RecoveryStore) -> RecoveryRun:
    """Time a recovery in a fresh process (`recover_here`)."""
    return RecoveryRun(**in_a_process(rs, "recover"))


def time_backlog(rs: RecoveryStore) -> dict[str, float]:
    """Put back the read models `keep_read_models` kept (not timed), then time their catch-up of the
    history in a fresh process (`catch_up_here`)."""
    orch = Orchestrator.open(rs.store.url, agent_state=rs.agent_state, create=False)
    try:
        put_back_read_models(orch)
    finally:
        orch.close()
    return in_a_process(rs, "catch up")


def in_a_process(rs: RecoveryStore, step: str) -> dict[str, Any]:
    """Run one step in a fresh process; the store's URL goes on its standard input."""
    request = json.dumps({"url": rs.store.url, "agent_state": str(rs.agent_state), "step": step})
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench_recovery"],
        input=request, capture_output=True, text=True, cwd=REPO, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the {step} process failed:\n{done.stderr[-4000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def catch_up_here(url: str, agent_state: Path) -> dict[str, Any]:
    """Open the store cold and time the read models' catch-up of what they lack."""
    orch = Orchestrator.open(url, agent_state=agent_state, create=False)
    try:
        watch = Stopwatch()
        events = orch.read_models.runner.catch_up()
        seconds = watch.seconds
    finally:
        orch.close()
    return {"events": events, "seconds": seconds, "events_per_second": events / max(seconds, 1e-9)}


def recover_here(url: str, agent_state: Path) -> RecoveryRun:
    """Open the store cold, start an engine, and time `recover()` until every in-flight command is decided."""
    watch = Stopwatch()
    orch = Orchestrator.open(url, agent_state=agent_state, create=False)
    agent = SimulatedAgent.open(agent_state, task_seconds=TASK_SECONDS)
    try:
        opened = watch.seconds
        started = time.perf_counter()
        report = orch.engine(agent, load_engine_settings()).recover()
        seconds = time.perf_counter() - started
        head = orch.read_models.runner.head()
        orch.read_models.runner.catch_up()  # as the engine's first cycle would; not timed
    finally:
        agent.close()
        orch.close()
    verdicts = Counter(d.verdict.value for d in report.decisions.values())
    return RecoveryRun(seconds, opened, len(report.decisions), dict(verdicts), head)


def median_run(runs: list[RecoveryRun]) -> dict[str, Any]:
    return {
        "recover_seconds": median([r.recover_seconds for r in runs]),
        "open_seconds": median([r.open_seconds for r in runs]),
        "decided": min(r.decided for r in runs),
        "verdicts": runs[0].verdicts,
        "log_events": runs[0].log_events,
        "runs": [r.recover_seconds for r in runs],
    }


def run_section(run: SectionRun) -> dict[str, Any]:
    """Recovery alone, and with history, each on its own store built the same way, timed in turns.

    Every timed recovery records a `Recovered` event on each command, so runs on one store
    replay more events each time; two stores keep the two figures on equal commands. Both are
    built first and then recovered alternately, so that each pair shares the machine's state
    (its speed moves by a third within minutes); "paired_ratio" is the median of the pairs' ratios.
    """
    in_flight, history = run.sizes.recovery_in_flight, run.sizes.recovery_history
    run.say(f"recovery: two stores of {in_flight:,} commands in flight, one with {history:,} ended commands of history")
    stores: list[RecoveryStore] = []
    try:
        stores.append(build_in_flight(run.scratch, run.backend, in_flight))
        stores.append(build_in_flight(run.scratch, run.backend, in_flight))
        add_history(stores[1], history)
        backlog_runs = [time_backlog(stores[1]) for _ in range(run.runs)]
        rates = [r["events_per_second"] for r in backlog_runs]
        stores[1].setup["history_catch_up_seconds"] = median([r["seconds"] for r in backlog_runs])
        stores[1].setup["history_catch_up_events_per_second"] = median(rates)
        run.say(f"recovery: the backlog of history caught up at {', '.join(f'{r:,.0f}' for r in rates)} events/s")
        alone_runs, history_runs = [], []
        for n in range(1, run.runs + 1):
            alone_runs.append(time_recovery(stores[0]))
            history_runs.append(time_recovery(stores[1]))
            run.say(
                f"recovery, run {n}: {alone_runs[-1].recover_seconds:.2f}s alone, "
                f"{history_runs[-1].recover_seconds:.2f}s with history"
            )
    finally:
        for rs in stores:
            run.scratch.drop(rs.store)
    alone, with_history = median_run(alone_runs), median_run(history_runs)
    pairs = [h.recover_seconds / a.recover_seconds for a, h in zip(alone_runs, history_runs, strict=True)]
    return {
        "in_flight": in_flight,
        "history": history,
        "setup": stores[1].setup,
        "alone": alone,
        "with_history": with_history,
        "ratio": with_history["recover_seconds"] / alone["recover_seconds"],
        "paired_ratio": median(pairs),
        "backlog_events_per_second": rates,
    }


if __name__ == "__main__":
    asked = json.loads(sys.stdin.read())
    url, agent_path = asked["url"], Path(asked["agent_state"])
    if asked["step"] == "recover":
        print(json.dumps(asdict(recover_here(url, agent_path))))
    else:
        print(json.dumps(catch_up_here(url, agent_path)))
