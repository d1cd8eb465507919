"""The benchmark's tables, and how each number was counted."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from scripts.bench_numbers import figure
from scripts.bench_numbers import median as median_of
from scripts.bench_targets import paired_ratio

HOW_COUNTED = """\
[b]Throughput[/]: RemoveVm commands of 4 disks; the clock runs from the first accept to the last clear. Ours: one
process, closed loop (accept up to N commands, run one engine cycle, repeat); the projections are advanced by the
engine after each cycle that wrote. DBOS: one workflow per command (4 submission steps, 1 wait step polling the
agent's task_statuses, 1 end step clear_tasks), same simulated agent (tasks finish at once). "agent share" is the
part of the wall time spent inside agent calls (calls serialised, as the agent's own lock does); "w/o agent" divides
by wall time minus that. ours/DBOS = ratio of the medians; "paired" = median of the run-by-run ratios (each of
our runs is followed at once by a DBOS run, so a pair shares the machine's load; the target is judged on the lower).
"live catch-up" = the events the engine's read-model catch-ups read during the run (every event of the log,
inventory events included) over the time they took; the catch-up of a backlog is the recovery section's.
[b]Write cost[/]: events = notifications added to the log (root command and inventory events). SQL statements and
transactions are counted at the driver (see scripts/bench_sql.py): SQLite through set_trace_callback on every
connection to the store file (eventsourcing's pool, the read models, DBOS's SQLAlchemy); PostgreSQL by wrapping
psycopg's Cursor.execute/executemany (one per parameter set) and the ends of transactions (pg_stat_statements is
not loaded on the shared server). BEGIN/COMMIT/ROLLBACK are not statements; a write transaction is a committed one
that ran an INSERT/UPDATE/DELETE (or eventsourcing's insert function). Our transactions split into accepts (1 per
command), engine saves (the store transactions of its cycles) and projection catch-ups (the rest). DBOS's figures
include its background threads over the run.
[b]Poll cycle[/]: one TaskManager.cycle(), counted the same way; idle = tasks running on the agent, nothing changed.
[b]HTTP agent[/]: the throughput loop with the agent served by `orchestrator agent serve` on loopback (JSON-RPC, every
answer validated) instead of called in this process; pairs run back to back.
[b]Fleet[/]: N agents in one server process (own paths), every task running; an idle cycle polls all at once and
writes nothing; the busy cycle follows 10% of the tasks ending; RSS is the engine's process (it did nothing else).
[b]Recovery[/]: see scripts/bench_recovery.py: real in-flight commands, history written through the real aggregates;
each recovery is timed in a process of its own, as an engine's start is; so is each catch-up of the history's backlog,
from the same read models (the commands in flight) put back before each.
[b]Queries[/]: synthetic rows bulk-loaded into proj_entity_tasks (scripts/bench_queries.py); "api" is
ReadModelQueries.has_running_tasks (a read transaction per question), "bare" the same SELECT on one open connection.
[b]Retention[/]: a history of ended RemoveVm commands (6 events each, written through the real aggregates) beside
real commands in flight; orchestrator.retention.prune (with an archive) takes the oldest 90%; recovery, "has running
tasks" (in-flight and absent VMs) and an idle cycle, before and after; the store's bytes: the SQLite file after a WAL
checkpoint (and VACUUM), PostgreSQL's pg_total_relation_size over the schema (and after VACUUM FULL).
[b]Takeover[/] (PostgreSQL): two engine processes, defaults but the lease timeout; one pinned to a pool with one
RemoveVm in flight is SIGKILLed or SIGSTOPped; from the signal to the standby's first Recovered event of that command
(its timestamp; same host clock), and to its acquired_at of the lease (scripts/bench_takeover.py).
[b]Engines[/] (PostgreSQL): N engine processes share 4 pools with an agent server each, plus the default pool (poll
interval 0.05 s); RemoveVm commands of 4 disks spread over the pools, from the first accept to none in flight. Lease
cost: idle engines with default settings on a server of our own logging every statement; the statements and commits
of the lease connections (application name orchestrator-lease: heartbeat and rebalance) over a window, per engine;
the event store's connections beside them (scripts/bench_engines.py).
"""


# ---- tables ----------------------------------------------------------------------------------------------


def _throughput_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Lifecycle throughput, tasks/s (medians)", show_lines=False)
    for col in ("store", "in flight", "cmds", "ours", "DBOS", "ours/DBOS", "paired", "batched accepts", "DBOS mode"):
        t.add_column(col, justify="right" if col not in ("store", "DBOS mode") else "left")
    for col in (
        "ours w/o agent",
        "DBOS w/o agent",
        "accept share",
        "max proj. lag (events)",
        "live catch-up ev/s",
        "invariants",
    ):
        t.add_column(col, justify="right")
    for backend, r in backends.items():
        for lv in r.get("throughput", []):
            t.add_row(
                backend,
                figure(lv["in_flight"]),
                figure(lv["commands"]),
                figure(lv["ours_tasks_per_second"]),
                figure(lv["dbos_tasks_per_second"]),
                f"{lv['ratio']:.2f}x",
                f"{paired_ratio(lv):.2f}x",
                f"{figure(lv['ours_batched_tasks_per_second'])} ({lv['batched_ratio']:.2f}x)"
                if "batched_ratio" in lv
                else "-",
                lv["dbos_mode"],
                figure(lv["ours_tasks_per_second_without_agent"]),
                figure(lv["dbos_tasks_per_second_without_agent"]),
                f"{lv['ours_accept_share']:.0%}",
                figure(lv["max_projection_lag_events"]),
                figure(lv["live_catch_up_events_per_second"]) if "live_catch_up_events_per_second" in lv else "-",
                "[green]all hold[/]" if not lv["violations"] else f"[red]{len(lv['violations'])} broken[/]",
            )
    return t


def _network_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Lifecycle throughput, agent over HTTP vs in this process, tasks/s (medians)")
    for col in ("store", "in flight", "cmds", "in-process", "HTTP", "HTTP/in-process", "paired", "agent share (HTTP)"):
        t.add_column(col, justify="left" if col == "store" else "right")
    t.add_column("invariants")
    for backend, r in backends.items():
        for lv in r.get("network", []):
            t.add_row(
                backend,
                figure(lv["in_flight"]),
                figure(lv["commands"]),
                figure(lv["in_process_tasks_per_second"]),
                figure(lv["http_tasks_per_second"]),
                f"{lv['ratio']:.0%}",
                f"{lv['paired_ratio']:.0%}",
                f"{lv['http_agent_share']:.0%}",
                "[green]all hold[/]" if not lv["violations"] else f"[red]{len(lv['violations'])} broken[/]",
            )
    return t


def _fleet_table(backends: dict[str, Any]) -> Table:
    t = Table(title="One poll cycle at scale: every agent polled at once (medians)")
    for col in ("store", "agents", "tasks in flight", "idle cycle s", "agent calls", "store tx"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for col in ("cycle with 10% ended s", "tasks ended", "RSS MiB", "peak RSS MiB"):
        t.add_column(col, justify="right")
    for backend, r in backends.items():
        if f := r.get("fleet"):
            t.add_row(
                backend,
                figure(f["agents"]),
                figure(f["tasks_in_flight"]),
                f"{f['idle_seconds']:.3f}",
                figure(f["idle"][0]["agent_calls"]),
                figure(f["idle"][0]["store_transactions"]),
                f"{f['busy_seconds']:.3f}",
                figure(median_of([b["tasks_ended"] for b in f["busy"]])),
                figure(f["rss_in_flight_mib"]),
                figure(f["peak_rss_mib"]),
            )
    return t


def _write_cost_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Write cost (medians)")
    for col in ("store", "system", "unit", "events", "write tx", "SQL statements", "SQL writes", "all tx"):
        t.add_column(col, justify="left" if col in ("store", "system", "unit") else "right")
    units = [("ours", "task", "task"), ("ours", "command", "command")]
    units += [("DBOS", "task", "task"), ("DBOS", "step", "step"), ("DBOS", "workflow (command)", "workflow")]
    for backend, r in backends.items():
        if not (wc := r.get("write_cost")):
            continue
        for system, unit, key in units:
            x = wc["ours" if system == "ours" else "dbos"]
            t.add_row(
                backend,
                system,
                f"per {unit}",
                f"{x[f'events_per_{key}']:.2f}" if system == "ours" else "-",
                f"{x[f'write_transactions_per_{key}']:.2f}",
                f"{x[f'statements_per_{key}']:.1f}",
                f"{x[f'writes_per_{key}']:.1f}",
                f"{x[f'transactions_per_{key}']:.2f}",
            )
    return t


WRITE_ORIGINS = (
    "command_events",
    "inventory_events",
    "accept_transactions",
    "engine_transactions",
    "projection_transactions",
)


def _write_split_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Our writes per command, by origin (medians)")
    for col in ("store", "root-command events", "inventory events", "accept tx", "engine tx", "projection tx"):
        t.add_column(col, justify="right" if col != "store" else "left")
    for backend, r in backends.items():
        if wc := r.get("write_cost"):
            t.add_row(backend, *(f"{wc['ours'][f'{key}_per_command']:.2f}" for key in WRITE_ORIGINS))
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
                    figure(x["tasks_changed"]),
                    figure(x["agent_calls"]),
                    figure(x["engine_transactions"]),
                    figure(x["sql_write_transactions"]),
                    figure(x["sql_writes"]),
                    figure(x["sql_statements"]),
                    figure(x["events"]),
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
                    figure(rec["in_flight"]),
                    figure(history),
                    figure(x["log_events"]),
                    f"{x['recover_seconds']:.2f}",
                    f"{x['open_seconds']:.2f}",
                    figure(x["decided"]),
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
            t.add_row(backend, key.replace("_", " "), figure(value, 1))
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
                    figure(q["rows"]),
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
            t.add_row(backend, name, figure(x["events"]), f"{x['seconds']:.2f}", figure(x["events_per_second"]))
        setup = (r.get("recovery") or {}).get("setup", {})
        if "history_catch_up_events_per_second" in setup:
            t.add_row(
                backend,
                "all three, catch-up of a backlog of ended history",
                "-",
                f"{setup['history_catch_up_seconds']:.1f}",
                figure(setup["history_catch_up_events_per_second"]),
            )
        if "commit_rate" in r:
            t.add_row(backend, "raw driver: 1-row write transactions", "-", "-", figure(r["commit_rate"]) + " tx/s")
        if "insert_rate" in r:
            rate = figure(r["insert_rate"]) + " ev/s"
            t.add_row(backend, "raw driver: event rows, 100 a transaction", "-", "-", rate)
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
                t.add_row(h["function"], figure(h["calls"]), f"{h['own_seconds']:.2f}", f"{h['total_seconds']:.2f}")
            out.append(t)
    return out


def _skipped_rows(t: Table, backends: dict[str, Any], key: str) -> None:
    """A row per backend where the section was skipped, saying why."""
    for backend, r in backends.items():
        if isinstance(r.get(key), dict) and "skipped" in r[key]:
            t.add_row(backend, f"skipped: {r[key]['skipped']}", *([""] * (len(t.columns) - 2)))


def _takeover_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Takeover: from an engine's SIGKILL or SIGSTOP to the standby's first Recovered event (seconds)")
    for col in ("store", "engine", "lease timeout s", "trials", "median", "worst", "best", "median to lease"):
        t.add_column(col, justify="left" if col in ("store", "engine") else "right")
    for backend, r in backends.items():
        for row in (r.get("takeover") or {}).get("rows", []):
            t.add_row(
                backend,
                "killed (SIGKILL)" if row["kind"] == "kill" else "frozen (SIGSTOP)",
                f"{row['lease_timeout']:g}",
                figure(row["trials"]),
                f"{row['median_seconds']:.2f}",
                f"{row['worst_seconds']:.2f}",
                f"{row['best_seconds']:.2f}",
                f"{row['median_to_lease_seconds']:.2f}",
            )
    _skipped_rows(t, backends, "takeover")
    return t


def _engines_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Lifecycle throughput with several engine processes on one database (medians)")
    for col in ("store", "engines", "commands", "tasks/s", "commands/s", "vs 1 engine", "seconds", "invariants"):
        t.add_column(col, justify="left" if col in ("store", "invariants") else "right")
    for backend, r in backends.items():
        for lv in (r.get("engines") or {}).get("throughput", []):
            t.add_row(
                backend,
                figure(lv["engines"]),
                figure(lv["commands"]),
                figure(lv["tasks_per_second"]),
                figure(lv["commands_per_second"]),
                f"{lv['speedup']:.2f}x",
                f"{lv['seconds']:.2f}",
                "[green]all hold[/]" if not lv["violations"] else f"[red]{len(lv['violations'])} broken[/]",
            )
    _skipped_rows(t, backends, "engines")
    return t


def _lease_cost_table(backends: dict[str, Any]) -> Table:
    t = Table(title="The leases' own cost, idle engines with default settings (per engine, and per cycle)")
    cols = ("store", "engines", "pools", "lease stmts/s", "lease tx/s", "beats/s", "rebalances/s", "stmts/beat")
    for col in (*cols, "stmts/rebalance", "tx/rebalance", "store stmts/s", "store tx/s"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for backend, r in backends.items():
        for x in (r.get("engines") or {}).get("lease_cost", []):
            t.add_row(
                backend,
                figure(x["engines"]),
                figure(x["pools"]),
                f"{x['statements_per_engine_second']:.2f}",
                f"{x['transactions_per_engine_second']:.2f}",
                f"{x['beats_per_engine_second']:.2f}",
                f"{x['rebalances_per_engine_second']:.2f}",
                f"{x['statements_per_beat']:.2f}",
                f"{x['statements_per_rebalance']:.2f}",
                f"{x['transactions_per_rebalance']:.2f}",
                f"{x['store_statements_per_engine_second']:.2f}",
                f"{x['store_transactions_per_engine_second']:.2f}",
            )
    return t


def _retention_table(backends: dict[str, Any]) -> Table:
    t = Table(title="Retention: a large history, before and after pruning 90% of it (medians)")
    for col in ("store", "when", "log head", "recover() s", "has running p50 ms", "p99 ms", "idle cycle ms"):
        t.add_column(col, justify="left" if col in ("store", "when") else "right")
    for col in ("store MiB", "prune"):
        t.add_column(col, justify="right" if col != "prune" else "left")
    for backend, r in backends.items():
        if not (ret := r.get("retention")):
            continue
        p = ret["prune"]
        for when in ("before", "after"):
            x = ret[when]
            mib = x["size"]["store_bytes"] / 2**20
            vacuumed = ret["after_vacuum_size"]["store_bytes"] / 2**20
            t.add_row(
                backend,
                f"{when} ({figure(ret['history_events'])} events of history)" if when == "before" else "after prune",
                figure(x["log_events"]),
                f"{x['recover_seconds']:.2f}",
                f"{x['query_p50_ms']:.3f}",
                f"{x['query_p99_ms']:.3f}",
                f"{x['idle_cycle_seconds'] * 1000:.1f}",
                f"{mib:,.1f}" if when == "before" else f"{mib:,.1f} ({vacuumed:,.1f} vacuumed)",
                "-"
                if when == "before"
                else f"{figure(p['events'])} events in {p['seconds']:.1f}s ({figure(p['events_per_second'])}/s), "
                f"archive {p['archive_bytes'] / 2**20:,.1f} MiB",
            )
    return t


def _yes(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def _single_table(backends: dict[str, Any]) -> Table:
    t = Table(title="One RemoveVm of 4 disks, instant agent, accept to cleared (medians, ms)")
    for col in ("store", "step", "time", "transactions", "their time", "events"):
        t.add_column(col, justify="left" if col in ("store", "step") else "right")
    for backend, r in backends.items():
        if not (single := r.get("single_command")):
            continue
        for step, x in single["steps"].items():
            nested = " " if step not in ("accept", "engine cycle") else ""
            t.add_row(
                backend,
                nested + step,
                f"{x['seconds'] * 1000:.2f}",
                f"{x['transactions']:.0f}",
                f"{x['transaction_seconds'] * 1000:.2f}",
                f"{x['events']:.0f}",
            )
        t.add_row(
            backend,
            "[b]accept to cleared[/]",
            f"{single['seconds'] * 1000:.2f}",
            f"{single['transactions']:.0f}",
            "",
            f"{single['events']:.0f}",
        )
        if "mean_seconds" in single:
            t.add_row(backend, "mean, catch-ups shared", f"{single['mean_seconds'] * 1000:.2f}", "", "", "")
    return t


def _limit_table(backends: dict[str, Any]) -> Table:
    """Our rates as a share of what the bare driver allows on the same machine, in the same run."""
    t = Table(title="The machine's limit: raw driver rates, and our throughput as a share of them")
    for col in (
        "store",
        "raw commits tx/s",
        "raw event inserts ev/s",
        "in flight",
        "ours tasks/s",
        "our events/s",
        "share of inserts",
        "our commits/s",
        "share of commits",
    ):
        t.add_column(col, justify="left" if col == "store" else "right")
    for backend, r in backends.items():
        commits, inserts = r.get("commit_rate"), r.get("insert_rate")
        if commits is None or inserts is None:
            continue
        for lv in r.get("throughput", []):
            commands = lv["ours_tasks_per_second"] / 4
            events = commands * lv.get("events_per_command", float("nan"))
            tx = commands * lv.get("transactions_per_command", float("nan"))
            t.add_row(
                backend,
                figure(commits),
                figure(inserts),
                figure(lv["in_flight"]),
                figure(lv["ours_tasks_per_second"]),
                figure(events),
                f"{events / inserts:.0%}",
                figure(tx),
                f"{tx / commits:.0%}",
            )
    return t


def _targets_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Targets")
    for col in ("target", "store", "figure", "verdict"):
        t.add_column(col)
    for row in rows:
        t.add_row(row["target"], row["backend"], row["figure"], _yes(row["met"]))
    return t


def print_report(console: Console, doc: dict[str, Any]) -> None:
    backends = doc["backends"]
    tables = [
        _throughput_table(backends),
        _network_table(backends),
        _write_cost_table(backends),
        _write_split_table(backends),
        _limit_table(backends),
        _cycle_table(backends),
        _single_table(backends),
        _recovery_table(backends),
        _setup_table(backends),
        _query_table(backends),
        _rebuild_table(backends),
        *_profile_tables(backends),
        _fleet_table(backends),
        _retention_table(backends),
        _takeover_table(backends),
        _engines_table(backends),
        _lease_cost_table(backends),
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
