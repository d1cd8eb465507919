"""A poll cycle's cost: agent calls, engine transactions, events and SQL of one `cycle()`, idle and busy.

Idle: every task is running on the agent and nothing changed (three such
cycles are counted). Busy: the one cycle in which every task of `commands`
commands ends, with their end actions and clears.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.domain.model import TaskStatus
from scripts.bench_harness import Harness, harness
from scripts.bench_numbers import Stopwatch
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_sql import SqlTally, TallyWindow, sql_counting
from scripts.bench_stores import Scratch


@dataclass
class CycleCost:
    tasks_changed: int
    agent_calls: int
    engine_transactions: int
    events: int
    sql_statements: float
    sql_writes: float
    sql_write_transactions: float
    seconds: float


def counted_cycle(h: Harness, tally: SqlTally, changed: int) -> CycleCost:
    window = TallyWindow(tally)
    window.open()
    watch = Stopwatch()
    report = h.engine.cycle()
    seconds = watch.seconds
    sql = window.delta()
    return CycleCost(
        tasks_changed=changed,
        agent_calls=report.agent_calls,
        engine_transactions=report.store_transactions,
        events=report.events,
        sql_statements=sql["statements"],
        sql_writes=sql["writes"],
        sql_write_transactions=sql["write_transactions"],
        seconds=seconds,
    )


def run_cycle_cost(scratch: Scratch, backend: str, commands: int, task_seconds: float) -> list[CycleCost]:
    """Three idle cycles (tasks running, nothing changed), then the cycle in which all tasks end."""
    store = scratch.store(backend, "cycle")
    with (
        sql_counting(store.sqlite_files) as tally,
        harness(scratch, store, commands, task_seconds=task_seconds, warm=False, submit_batch=1000) as h,
    ):
        for n in range(1, commands + 1):
            h.orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"})
        while not (h.engine.inflight and all_running(h)):
            h.engine.cycle()
        all_created = time.monotonic()
        out = [counted_cycle(h, tally, 0) for _ in range(3)]
        if time.monotonic() > all_created + task_seconds:
            raise RuntimeError("tasks ended during the idle cycles; make task_seconds longer")
        time.sleep(max(0.0, all_created + task_seconds + 0.05 - time.monotonic()))
        out.append(counted_cycle(h, tally, commands * DISKS_PER_VM))
        if not h.engine.idle:
            raise RuntimeError(f"{len(h.engine.inflight)} command(s) still in flight after the busy cycle")
        return out


def all_running(h: Harness) -> bool:
    return all(t.status is TaskStatus.RUNNING for c in h.engine.inflight.values() for t in c.tasks.values())


def run_section(run: SectionRun) -> list[dict[str, Any]]:
    out = []
    for commands in run.sizes.cycle_commands:
        costs = run_cycle_cost(run.scratch, run.backend, commands, task_seconds=1.0 + commands / 100)
        out.append({"commands": commands, "idle": asdict(costs[1]), "busy": asdict(costs[-1])})
    run.say("poll cycle cost counted")
    return out
