"""The comparative sections: throughput and write cost beside DBOS, and recovery, as medians."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scripts.bench_dbos import STEPS_PER_WORKFLOW, RunHooks, run_dbos
from scripts.bench_engine import run_throughput, run_write_cost
from scripts.bench_recovery import RecoveryRun, add_history, build_in_flight, time_recovery
from scripts.bench_sql import TallyWindow, sql_counting
from scripts.bench_support import DISKS_PER_VM, Scratch, Sizes, median

Say = Callable[[str], None]


def throughput_level(
    scratch: Scratch, backend: str, in_flight: int, commands: int, runs: int, say: Say
) -> dict[str, Any]:
    """Ours and DBOS, interleaved run by run, `in_flight` commands at a time."""
    ours, batched, dbos = [], [], []
    for run in range(1, runs + 1):
        ours.append(run_throughput(scratch, backend, in_flight, commands))
        batched.append(run_throughput(scratch, backend, in_flight, commands, batched=True))
        store = scratch.store(backend, "dbos")
        dbos.append(run_dbos(scratch, store, in_flight, commands))
        say(
            f"{in_flight:>5} in flight, run {run}: ours {ours[-1].tasks_per_second:,.0f} tasks/s "
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
        "ours_agent_share": median([r.agent_seconds / r.seconds for r in ours]),
        "dbos_agent_share": median([r.agent_seconds / r.seconds for r in dbos]),
        "ours_accept_share": median([r.accept_seconds / r.seconds for r in ours]),
        "ours_catch_up_share": median([r.catch_up_seconds / r.seconds for r in ours]),
        "ours_tasks_per_second_without_agent": median([r.tasks / (r.seconds - r.agent_seconds) for r in ours]),
        "dbos_tasks_per_second_without_agent": median([r.tasks / (r.seconds - r.agent_seconds) for r in dbos]),
        "ours_cycles": median([r.cycles for r in ours]),
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


def dbos_write_cost(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, float]:
    store = scratch.store(backend, "dbos-wc")
    counted: dict[str, float] = {}
    with sql_counting([store.path] if store.path else []) as tally:
        window = TallyWindow(tally)
        run_dbos(scratch, store, in_flight, commands, RunHooks(window.open, lambda: counted.update(window.delta())))
    steps = commands * STEPS_PER_WORKFLOW
    out = {f"{k}_per_step": v / steps for k, v in counted.items()}
    out |= {f"{k}_per_workflow": v / commands for k, v in counted.items()}
    out |= {f"{k}_per_task": v / (commands * DISKS_PER_VM) for k, v in counted.items()}
    return out


def write_cost(scratch: Scratch, backend: str, commands: int, runs: int) -> dict[str, Any]:
    in_flight = min(commands, 50)
    ours = [run_write_cost(scratch, backend, in_flight, commands) for _ in range(runs)]
    dbos = [dbos_write_cost(scratch, backend, in_flight, commands) for _ in range(runs)]
    return {
        "commands": commands,
        "in_flight": in_flight,
        "ours": {k: median([r[k] for r in ours]) for k in ours[0]},
        "dbos": {k: median([r[k] for r in dbos]) for k in dbos[0]},
    }


def _recovery_median(runs: list[RecoveryRun]) -> dict[str, Any]:
    return {
        "recover_seconds": median([r.recover_seconds for r in runs]),
        "open_seconds": median([r.open_seconds for r in runs]),
        "decided": min(r.decided for r in runs),
        "verdicts": runs[0].verdicts,
        "log_events": runs[0].log_events,
        "runs": [r.recover_seconds for r in runs],
    }


def recovery(scratch: Scratch, backend: str, sizes: Sizes, runs: int, say: Say) -> dict[str, Any]:
    """Recovery alone, and with history, each on its own store built the same way.

    Every timed recovery records a `Recovered` event on each command, so runs on one store
    replay more events each time; two stores keep the two figures on equal commands.
    """
    say(f"recovery: accepting and submitting {sizes.recovery_in_flight:,} commands")
    rs = build_in_flight(scratch, backend, sizes.recovery_in_flight)
    try:
        alone = _recovery_median([time_recovery(rs) for _ in range(runs)])
    finally:
        scratch.drop(rs.store)
    say(f"recovery of {sizes.recovery_in_flight:,} in flight: {alone['recover_seconds']:.2f}s")
    say(f"recovery: a second store, with {sizes.recovery_history:,} ended commands of history")
    rs = build_in_flight(scratch, backend, sizes.recovery_in_flight)
    try:
        add_history(rs, sizes.recovery_history)
        with_history = _recovery_median([time_recovery(rs) for _ in range(runs)])
        say(f"recovery with history: {with_history['recover_seconds']:.2f}s")
    finally:
        scratch.drop(rs.store)
    return {
        "in_flight": sizes.recovery_in_flight,
        "history": sizes.recovery_history,
        "setup": rs.setup,
        "alone": alone,
        "with_history": with_history,
        "ratio": with_history["recover_seconds"] / alone["recover_seconds"],
    }
