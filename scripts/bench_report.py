"""The benchmark's tables, its verdict on each issue-6 target, and how each number was counted."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

HOW_COUNTED = """\
[b]Throughput[/]: RemoveVm commands of 4 disks; the clock runs from the first accept to the last clear. Ours: one
process, closed loop (accept up to N commands, run one engine cycle, repeat); the projections are advanced by the
engine after each cycle that wrote. DBOS: one workflow per command (4 submission steps, 1 wait step polling the
agent's task_statuses, 1 end step clear_tasks), same simulated agent (tasks finish at once). "agent share" is the
part of the wall time spent inside agent calls (calls serialised, as the agent's own lock does); "w/o agent" divides
by wall time minus that. ours/DBOS = ratio of the medians; "paired" = median of the run-by-run ratios (each of
our runs is followed at once by a DBOS run, so a pair shares the machine's load; the target is judged on the lower).
[b]Write cost[/]: events = notifications added to the log (root command and inventory events). SQL statements and
transactions are counted at the driver (see scripts/bench_sql.py): SQLite through set_trace_callback on every
connection to the store file (eventsourcing's pool, the read models, DBOS's SQLAlchemy); PostgreSQL by wrapping
psycopg's Cursor.execute/executemany (one per parameter set) and the ends of transactions (pg_stat_statements is
not loaded on the shared server). BEGIN/COMMIT/ROLLBACK are not statements; a write transaction is a committed one
that ran an INSERT/UPDATE/DELETE (or eventsourcing's insert function). Our transactions split into accepts (1 per
command), engine saves (TaskManager.store_transactions) and projection catch-ups (the rest). DBOS's figures include
its background threads over the run.
[b]Poll cycle[/]: one TaskManager.cycle(), counted the same way; idle = tasks running on the agent, nothing changed.
[b]Recovery[/]: see scripts/bench_recovery.py: real in-flight commands, history written through the real aggregates.
[b]Queries[/]: synthetic rows bulk-loaded into proj_entity_tasks (scripts/bench_queries.py); "api" is
ReadModelQueries.has_running_tasks (a read transaction per question), "bare" the same SELECT on one open connection.
"""


def paired_ratio(level: dict[str, Any]) -> float:
    """Median of run-by-run ratios (each run of ours beside the DBOS run right after it)."""
    pairs = zip(level["runs"]["ours_tasks_per_second"], level["runs"]["dbos_tasks_per_second"], strict=True)
    return float(statistics.median(float(o) / float(d) for o, d in pairs))


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _yes(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


# ---- targets -------------------------------------------------------------------------------------------


def targets(backends: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for backend, r in backends.items():
        for level in r.get("throughput", []):
            out.append(
                {
                    "target": f"lifecycle throughput >= 10x DBOS, {level['in_flight']} in flight",
                    "backend": backend,
                    "figure": f"paired {paired_ratio(level):.2f}x, medians {level['ratio']:.2f}x "
                    f"({_f(level['ours_tasks_per_second'])} vs {_f(level['dbos_tasks_per_second'])} tasks/s)",
                    "met": min(paired_ratio(level), level["ratio"]) >= 10,
                }
            )
        for c in r.get("cycle", [])[:1]:
            idle = c["idle"]
            out.append(
                {
                    "target": "idle poll cycle: 1 agent call, 0 store writes",
                    "backend": backend,
                    "figure": f"{idle['agent_calls']} agent call(s), {idle['sql_writes']:.0f} SQL writes, "
                    f"{idle['engine_transactions']} engine transactions",
                    "met": idle["agent_calls"] == 1 and idle["sql_writes"] == 0 and idle["engine_transactions"] == 0,
                }
            )
        if rec := r.get("recovery"):
            alone, hist = rec["alone"]["recover_seconds"], rec["with_history"]["recover_seconds"]
            out.append(
                {
                    "target": f"recovery of {rec['in_flight']:,} in flight < 5 s"
                    + (" (target set for PostgreSQL)" if backend != "postgres" else ""),
                    "backend": backend,
                    "figure": f"{alone:.2f} s",
                    "met": alone < 5,
                }
            )
            out.append(
                {
                    "target": f"... with {rec['history']:,} ended in history <= 1.2x",
                    "backend": backend,
                    "figure": f"{hist:.2f} s ({rec['ratio']:.2f}x)",
                    "met": rec["ratio"] <= 1.2,
                }
            )
        if q := r.get("queries"):
            out.append(
                {
                    "target": f"'has running tasks' p99 < 1 ms at {q['rows']:,} rows",
                    "backend": backend,
                    "figure": f"p99 {q['api']['p99_ms']:.3f} ms (p50 {q['api']['p50_ms']:.3f} ms)",
                    "met": q["api"]["p99_ms"] < 1,
                }
            )
    return out


# ---- tables ----------------------------------------------------------------------------------------------


def _throughput_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Lifecycle throughput, tasks/s (medians)", show_lines=False)
    for col in ("store", "in flight", "cmds", "ours", "DBOS", "ours/DBOS", "paired", "batched accepts", "DBOS mode"):
        t.add_column(col, justify="right" if col not in ("store", "DBOS mode") else "left")
    for col in ("ours w/o agent", "DBOS w/o agent", "accept share", "max proj. lag (events)", "invariants"):
        t.add_column(col, justify="right")
    for backend, r in backends.items():
        for lv in r.get("throughput", []):
            t.add_row(
                backend,
                _f(lv["in_flight"]),
                _f(lv["commands"]),
                _f(lv["ours_tasks_per_second"]),
                _f(lv["dbos_tasks_per_second"]),
                f"{lv['ratio']:.2f}x",
                f"{paired_ratio(lv):.2f}x",
                f"{_f(lv['ours_batched_tasks_per_second'])} ({lv['batched_ratio']:.2f}x)"
                if "batched_ratio" in lv
                else "-",
                lv["dbos_mode"],
                _f(lv["ours_tasks_per_second_without_agent"]),
                _f(lv["dbos_tasks_per_second_without_agent"]),
                f"{lv['ours_accept_share']:.0%}",
                _f(lv["max_projection_lag_events"]),
                "[green]all 7 hold[/]" if not lv["violations"] else f"[red]{len(lv['violations'])} broken[/]",
            )
    return t


def _write_cost_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Write cost (medians)")
    for col in ("store", "system", "unit", "events", "write tx", "SQL statements", "SQL writes", "all tx"):
        t.add_column(col, justify="left" if col in ("store", "system", "unit") else "right")
    for backend, r in backends.items():
        wc = r.get("write_cost")
        if not wc:
            continue
        ours, dbos = wc["ours"], wc["dbos"]
        for unit in ("task", "command"):
            t.add_row(
                backend,
                "ours",
                f"per {unit}",
                f"{ours[f'events_per_{unit}']:.2f}",
                f"{ours[f'write_transactions_per_{unit}']:.2f}",
                f"{ours[f'statements_per_{unit}']:.1f}",
                f"{ours[f'writes_per_{unit}']:.1f}",
                f"{ours[f'transactions_per_{unit}']:.2f}",
            )
        for unit, key in (("task", "task"), ("step", "step"), ("workflow (command)", "workflow")):
            t.add_row(
                backend,
                "DBOS",
                f"per {unit}",
                "-",
                f"{dbos[f'write_transactions_per_{key}']:.2f}",
                f"{dbos[f'statements_per_{key}']:.1f}",
                f"{dbos[f'writes_per_{key}']:.1f}",
                f"{dbos[f'transactions_per_{key}']:.2f}",
            )
    return t


def _write_split_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Our writes per command, by origin (medians)")
    for col in ("store", "root-command events", "inventory events", "accept tx", "engine tx", "projection tx"):
        t.add_column(col, justify="right" if col != "store" else "left")
    for backend, r in backends.items():
        if wc := r.get("write_cost"):
            o = wc["ours"]
            t.add_row(
                backend,
                f"{o['command_events_per_command']:.2f}",
                f"{o['inventory_events_per_command']:.2f}",
                f"{o['accept_transactions_per_command']:.2f}",
                f"{o['engine_transactions_per_command']:.2f}",
                f"{o['projection_transactions_per_command']:.2f}",
            )
    return t


def _cycle_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Poll cycle cost (one TaskManager.cycle())")
    cols = ("store", "cycle", "tasks changed", "agent calls", "engine tx", "SQL write tx", "SQL writes", "SQL stmts")
    for col in (*cols, "events", "ms"):
        t.add_column(col, justify="left" if col in ("store", "cycle") else "right")
    for backend, r in backends.items():
        for c in r.get("cycle", []):
            for name in ("idle", "busy"):
                x = c[name]
                t.add_row(
                    backend,
                    f"{name} ({c['commands']} cmds held)",
                    _f(x["tasks_changed"]),
                    _f(x["agent_calls"]),
                    _f(x["engine_transactions"]),
                    _f(x["sql_write_transactions"]),
                    _f(x["sql_writes"]),
                    _f(x["sql_statements"]),
                    _f(x["events"]),
                    f"{x['seconds'] * 1000:.1f}",
                )
    return t


def _recovery_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Recovery: engine start (TaskManager(...).recover()) to every in-flight command decided")
    for col in ("store", "in flight", "ended history", "events in log", "recover() s", "store open s", "decided"):
        t.add_column(col, justify="left" if col == "store" else "right")
    t.add_column("verdicts")
    for backend, r in backends.items():
        if rec := r.get("recovery"):
            for label, history in (("alone", 0), ("with_history", rec["history"])):
                x = rec[label]
                t.add_row(
                    backend,
                    _f(rec["in_flight"]),
                    _f(history),
                    _f(x["log_events"]),
                    f"{x['recover_seconds']:.2f}",
                    f"{x['open_seconds']:.2f}",
                    _f(x["decided"]),
                    ", ".join(f"{n} {v}" for v, n in x["verdicts"].items()),
                )
    return t


def _setup_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Recovery set-up (not part of the recovery time)")
    t.add_column("store")
    t.add_column("what")
    t.add_column("value", justify="right")
    for backend, r in backends.items():
        for key, value in (r.get("recovery") or {}).get("setup", {}).items():
            t.add_row(backend, key.replace("_", " "), _f(value, 1))
    return t


def _query_table(backends: dict[str, Any]) -> Table:
    t = Table(title="'Does entity X have running tasks?' (medians of the runs' percentiles)")
    for col in ("store", "rows", "path", "p50 ms", "p99 ms", "max ms", "p99 by kind (ms)", "sd-cold p50 ms"):
        t.add_column(col, justify="left" if col in ("store", "path", "p99 by kind (ms)") else "right")
    for backend, r in backends.items():
        if q := r.get("queries"):
            for path in ("api", "bare"):
                x = q[path]
                kinds = ", ".join(f"{k} {v:.3f}" for k, v in x["by_kind_p99_ms"].items())
                t.add_row(
                    backend,
                    _f(q["rows"]),
                    path,
                    f"{x['p50_ms']:.3f}",
                    f"{x['p99_ms']:.3f}",
                    f"{x['max_ms']:.2f}",
                    kinds,
                    f"{x['cold_p50_ms']:.2f}",
                )
    return t


def _rebuild_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Projection rebuild (orch.read_models.runner.rebuild) and catch-up speed")
    for col in ("store", "projection", "events", "seconds", "events/s"):
        t.add_column(col, justify="left" if col in ("store", "projection") else "right")
    for backend, r in backends.items():
        for name, x in r.get("rebuild", {}).items():
            t.add_row(backend, name, _f(x["events"]), f"{x['seconds']:.2f}", _f(x["events_per_second"]))
        setup = (r.get("recovery") or {}).get("setup", {})
        if "history_catch_up_events_per_second" in setup:
            t.add_row(
                backend,
                "all three, live catch-up of the history",
                "-",
                f"{setup['history_catch_up_seconds']:.1f}",
                _f(setup["history_catch_up_events_per_second"]),
            )
        if "commit_rate" in r:
            t.add_row(backend, "raw driver: 1-row write transactions", "-", "-", _f(r["commit_rate"]) + " tx/s")
    return t


def _profile_tables(backends: dict[str, Any]) -> list[Table]:
    out = []
    for backend, r in backends.items():
        if not (p := r.get("profile")):
            continue
        for key, title in (("by_own_time", "own time"), ("repo_by_total_time", "total time, project code")):
            t = Table(
                title=f"Profile {backend}: top by {title} ({p['commands']} cmds, {p['seconds']:.1f}s under cProfile)"
            )
            for col in ("function", "calls", "own s", "total s"):
                t.add_column(col, justify="left" if col == "function" else "right")
            for h in p[key][:12]:
                t.add_row(h["function"], _f(h["calls"]), f"{h['own_seconds']:.2f}", f"{h['total_seconds']:.2f}")
            out.append(t)
    return out


def _targets_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Issue 6 targets")
    for col in ("target", "store", "figure", "verdict"):
        t.add_column(col)
    for row in rows:
        t.add_row(row["target"], row["backend"], row["figure"], _yes(row["met"]))
    return t


def print_report(console: Console, doc: dict[str, Any]) -> None:
    backends = doc["backends"]
    tables = [
        _throughput_table(backends),
        _write_cost_table(backends),
        _write_split_table(backends),
        _cycle_table(backends),
        _recovery_table(backends),
        _setup_table(backends),
        _query_table(backends),
        _rebuild_table(backends),
        *_profile_tables(backends),
        _targets_table(doc["targets"]),
    ]
    for table in tables:
        if table.row_count:
            console.print(table)
    for backend, r in backends.items():
        for level in r.get("throughput", []):
            for v in level["violations"]:
                console.print(f"[red]{backend}, {level['in_flight']} in flight: invariant broken: {v}[/]")
    console.print(
        Panel(" ".join(HOW_COUNTED.split("\n")).replace(" [b]", "\n[b]"), title="how each number was counted")
    )
    console.print(
        f"command: {doc['command']}  (runs per figure: {doc['runs']}, quick: {doc['quick']}, "
        f"engine commit: {doc.get('commit', '?')})"
    )
