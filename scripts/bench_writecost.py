"""Write cost: events, transactions and SQL statements per task and per command, ours beside DBOS's per step.

Ours: `commands` RemoveVm commands through the whole lifecycle, `in_flight` at
a time; the events are the notifications added to the log, split into the root
commands' and the inventory's; the transactions split into accepts (one per
command), the engine's (its cycles' store transactions) and the projections'
(the rest). SQL is counted at the driver (scripts/bench_sql.py).
"""

from __future__ import annotations

from typing import Any

from orchestrator import Orchestrator, RootCommand
from scripts.bench_dbos import STEPS_PER_WORKFLOW, RunHooks, run_dbos
from scripts.bench_harness import harness, run_closed_loop
from scripts.bench_numbers import median_of_fields
from scripts.bench_plan import DISKS_PER_VM, SectionRun
from scripts.bench_sql import TallyWindow, sql_counting
from scripts.bench_stores import Scratch

ROOT_COMMAND_TOPIC = RootCommand.Accepted.__module__ + ":RootCommand."


def events_by_kind(orch: Orchestrator, after: int) -> tuple[int, int]:
    """(root command events, inventory events) recorded after notification `after`."""
    commands = inventory = 0
    for page in orch.store.notifications(after=after):
        for n in page:
            if n.topic.startswith(ROOT_COMMAND_TOPIC):
                commands += 1
            else:
                inventory += 1
    return commands, inventory


def ours(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, float]:
    """Events, transactions and SQL statements of `commands` RemoveVm commands through the whole lifecycle."""
    store = scratch.store(backend, "wc")
    with sql_counting(store.sqlite_files) as tally, harness(scratch, store, commands) as h:
        head = h.orch.store.head()
        window = TallyWindow(tally)
        window.open()
        loop = run_closed_loop(h, in_flight, commands)
        sql = window.delta()
        command_events, inventory_events = events_by_kind(h.orch, head)
    per = {
        "events": float(command_events + inventory_events),
        "command_events": float(command_events),
        "inventory_events": float(inventory_events),
        "accept_transactions": float(commands),
        "engine_transactions": float(loop.engine_transactions),
        "projection_transactions": sql["write_transactions"] - commands - loop.engine_transactions,
        **sql,
    }
    out = {f"{k}_per_command": v / commands for k, v in per.items()}
    out |= {f"{k}_per_task": v / loop.tasks for k, v in per.items()}
    return out


def dbos(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, float]:
    store = scratch.store(backend, "dbos-wc")
    counted: dict[str, float] = {}
    with sql_counting(store.sqlite_files) as tally:
        window = TallyWindow(tally)
        run_dbos(scratch, store, in_flight, commands, RunHooks(window.open, lambda: counted.update(window.delta())))
    steps = commands * STEPS_PER_WORKFLOW
    out = {f"{k}_per_step": v / steps for k, v in counted.items()}
    out |= {f"{k}_per_workflow": v / commands for k, v in counted.items()}
    out |= {f"{k}_per_task": v / (commands * DISKS_PER_VM) for k, v in counted.items()}
    return out


def run_section(run: SectionRun) -> dict[str, Any]:
    commands = run.sizes.write_cost_commands
    in_flight = min(commands, 50)
    result = {
        "commands": commands,
        "in_flight": in_flight,
        "ours": median_of_fields([ours(run.scratch, run.backend, in_flight, commands) for _ in range(run.runs)]),
        "dbos": median_of_fields([dbos(run.scratch, run.backend, in_flight, commands) for _ in range(run.runs)]),
    }
    run.say("write cost counted")
    return result
