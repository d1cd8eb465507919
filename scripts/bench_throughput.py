"""Lifecycle throughput at each level of commands in flight: ours (one `submit` each, and `submit_many`) beside DBOS.

Our runs and DBOS's are interleaved run by run, so a pair shares the machine's
load; every run of ours ends with the invariants checked on its store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.domain.model import CommandStatus
from orchestrator.testing import check_invariants
from scripts.bench_dbos import run_dbos
from scripts.bench_harness import Harness, harness, run_closed_loop
from scripts.bench_numbers import LifecycleRun, median
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_stores import Scratch


@dataclass
class ThroughputRun(LifecycleRun):
    accept_seconds: float
    catch_up_seconds: float
    catch_up_events: int  # events the engine's catch-ups applied (its live catch-up, as it keeps up)
    cycles: int
    max_lag: int
    violations: list[str]
    succeeded: int
    events_per_command: float = 0.0  # events the run recorded (commands and inventory)
    transactions_per_command: float = 0.0  # accepts, engine saves and read-model catch-ups that wrote


def run_throughput(
    scratch: Scratch, backend: str, in_flight: int, commands: int, *, batched: bool = False
) -> ThroughputRun:
    with harness(scratch, scratch.store(backend, f"tp{in_flight}"), commands) as h:
        head, catch_ups = h.orch.read_models.runner.head(), h.lag.writes
        loop = run_closed_loop(h, in_flight, commands, batched=batched)
        accepts = -(-commands // in_flight) if batched else commands
        transactions = accepts + loop.engine_transactions + h.lag.writes - catch_ups
        succeeded = sum(1 for i in loop.accepted_ids if h.orch.command(i).status is CommandStatus.SUCCEEDED)
        return ThroughputRun(
            seconds=loop.seconds,
            tasks=loop.tasks,
            agent_seconds=h.timed.busy_seconds,
            accept_seconds=loop.accept_seconds,
            catch_up_seconds=h.lag.catch_up_seconds,
            catch_up_events=h.lag.events,
            cycles=loop.cycles,
            max_lag=h.lag.max_lag,
            violations=invariant_violations(h, loop.accepted_ids),
            succeeded=succeeded,
            events_per_command=(h.orch.read_models.runner.head() - head) / commands,
            transactions_per_command=transactions / commands,
        )


def invariant_violations(h: Harness, expected: list[Any]) -> list[str]:
    results = check_invariants(h.orch, h.agent, expected_commands=expected)
    return [f"{r.number}. {r.name}: {r.detail}" for r in results if not r.ok]


def throughput_level(run: SectionRun, in_flight: int, commands: int) -> dict[str, Any]:
    """Ours and DBOS, interleaved run by run, `in_flight` commands at a time."""
    scratch, backend = run.scratch, run.backend
    ours, batched, dbos = [], [], []
    for n in range(1, run.runs + 1):
        ours.append(run_throughput(scratch, backend, in_flight, commands))
        batched.append(run_throughput(scratch, backend, in_flight, commands, batched=True))
        dbos.append(run_dbos(scratch, scratch.store(backend, "dbos"), in_flight, commands))
        run.say(
            f"{in_flight:>5} in flight, run {n}: ours {ours[-1].tasks_per_second:,.0f} tasks/s "
            f"(batched accepts {batched[-1].tasks_per_second:,.0f}), "
            f"DBOS {dbos[-1].tasks_per_second:,.0f} tasks/s ({dbos[-1].mode})"
        )
    ours_rate = median([r.tasks_per_second for r in ours])
    dbos_rate = median([r.tasks_per_second for r in dbos])
    return {
        "in_flight": in_flight,
        "commands": commands,
        "tasks": commands * DISKS_PER_VM,
        "ours_tasks_per_second": ours_rate,
        "dbos_tasks_per_second": dbos_rate,
        "ratio": ours_rate / dbos_rate,
        "ours_batched_tasks_per_second": median([r.tasks_per_second for r in batched]),
        "batched_ratio": median([r.tasks_per_second for r in batched]) / dbos_rate,
        "ours_agent_share": median([r.agent_share for r in ours]),
        "dbos_agent_share": median([r.agent_share for r in dbos]),
        "ours_accept_share": median([r.accept_seconds / r.seconds for r in ours]),
        "ours_catch_up_share": median([r.catch_up_seconds / r.seconds for r in ours]),
        "live_catch_up_events_per_second": median([r.catch_up_events / max(r.catch_up_seconds, 1e-9) for r in ours]),
        "ours_tasks_per_second_without_agent": median([r.tasks_per_second_without_agent for r in ours]),
        "dbos_tasks_per_second_without_agent": median([r.tasks_per_second_without_agent for r in dbos]),
        "ours_cycles": median([r.cycles for r in ours]),
        "events_per_command": median([r.events_per_command for r in ours]),
        "transactions_per_command": median([r.transactions_per_command for r in ours]),
        "max_projection_lag_events": max(r.max_lag for r in ours),
        "dbos_mode": dbos[0].mode,
        "ours_succeeded": min(r.succeeded for r in ours),
        "dbos_succeeded": min(r.succeeded for r in dbos),
        "violations": sorted({v for r in [*ours, *batched] for v in r.violations}),
        "runs": {
            "ours_tasks_per_second": [r.tasks_per_second for r in ours],
            "ours_batched_tasks_per_second": [r.tasks_per_second for r in batched],
            "dbos_tasks_per_second": [r.tasks_per_second for r in dbos],
        },
    }


def run_section(run: SectionRun) -> list[dict[str, Any]]:
    return [throughput_level(run, n, run.sizes.commands[n]) for n in run.sizes.levels]
