"""Issue 4: the crash-replay inspection (`orchestrator inspect`, `scripts/crash_replay.py`), on SQLite and PostgreSQL.

A real engine process dies at a crash point; then the CLI's `inspect --json`
must predict what recovery will do (verdict, reason, orphans by key,
provisional without the agent), recovery must then do exactly that, and the
inspection must not change one byte or row of the store, even while an
engine runs on it.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.errors import NotFoundError, StoreError
from orchestrator.inspection import EXIT_CLEAN, EXIT_NEEDS_RECOVERY
from orchestrator.store import parse_store_url
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import (
    ONE_PER_CALL,
    PG_DSN,
    REPO,
    cli_env,
    engine_args,
    events_table,
    invariants_hold,
    pg_schema_url,
    run_cli,
    run_until_idle,
    store_sql,
    wait_for,
)

SLOW = {"ORCHESTRATOR_AGENT_TASK_SECONDS": "60"}  # tasks created by the crashed engine run long


# ---- helpers ---------------------------------------------------------------------------------


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(**{"ORCHESTRATOR_AGENT_TASK_SECONDS": "0.3", "ORCHESTRATOR_POLL_INTERVAL": "0.05", **extra})


def inspect(store_url: str, agent_state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--store", store_url, "--agent-state", str(agent_state), "inspect", *args)


def inspect_json(store_url: str, agent_state: Path, *args: str) -> tuple[int, Any]:
    proc = inspect(store_url, agent_state, *args, "--json")
    assert proc.returncode in (EXIT_CLEAN, EXIT_NEEDS_RECOVERY), proc.stderr[-2000:]
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def agent_rows(agent_state: Path, command_id: str) -> list[dict[str, Any]]:
    agent = SimulatedAgent.open(agent_state)
    try:
        return [r for r in agent.backend.journal() if r["key"].startswith(command_id + "/")]
    finally:
        agent.close()


def seed_and_submit(store_url: str, agent_state: Path, flow: str, params: dict[str, Any], disks: int = 3) -> str:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, disks)
        return str(orch.submit(flow, params).command_id)


def crash(store_url: str, agent_state: Path, point: str, env: dict[str, str]) -> None:
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"), env=engine_env(ORCHESTRATOR_CRASH_AT=point, **env)
    )
    assert died.returncode == CRASH_EXIT_CODE, f"engine did not crash at {point}: {died.stderr[-2000:]}"


def restart_until_idle(store_url: str, agent_state: Path) -> None:
    restarted = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "90"), env=engine_env())
    assert restarted.returncode == 0, restarted.stderr[-3000:]


# ---- the verdicts: predicted, then done -------------------------------------------------------


@dataclass
class Case:
    name: str
    flow: str
    params: dict[str, Any]
    point: str  # crash point, or "submit" for a crash of `orchestrator submit` after the accept
    verdict: str
    reason: Callable[[int], str]  # with the agent, from the number of tasks
    no_agent_verdict: str = ""
    no_agent_reason: Callable[[int], str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    faults: FaultConfig | None = None  # set on the agent before the crash
    orphans: int = 0
    vanished: int = 0
    wait_agent_ended: bool = False  # wait until the agent ended every task before inspecting
    ends: str = "succeeded"


def _no_ids(n: int) -> str:
    return f"{n} of {n} expected tasks have no agent task id"


TEMPLATE = {"vm_id": "vm-0001", "name": "golden", "target_storage_domain_id": "sd-2"}
NOT_ASKED = "accepted; no agent task id recorded (the agent may hold some: not asked)"
CASES = [
    Case(
        "accepted-only",
        "RemoveVm",
        {"vm_id": "vm-0001"},
        "submit",
        "start",
        lambda n: "accepted; none of its tasks is on the agent: submit them",
        no_agent_reason=lambda n: NOT_ASKED,
    ),
    Case(
        "submission-cut-short",
        "HibernateVm",
        {"vm_id": "vm-0001"},
        "after_agent_id_recorded:1",
        "fail",
        lambda n: f"{n - 1} of {n} expected tasks have no agent task id",
        env=ONE_PER_CALL,
        ends="failed",
    ),
    Case(
        "orphans-by-key",
        "CreateTemplate",
        TEMPLATE,
        "after_agent_accept:1",
        "fail",
        lambda n: f"{_no_ids(n)}; {n} found on the agent by key: stop and clear them",
        no_agent_verdict="start",
        no_agent_reason=lambda n: NOT_ASKED,
        orphans=3,
        ends="failed",
    ),
    Case(
        "one-orphan-mid-submission",
        "CreateSnapshot",
        {"vm_id": "vm-0001"},
        "after_agent_accept:2",
        "fail",
        lambda n: (
            f"{n - 1} of {n} expected tasks have no agent task id; 1 found on the agent by key: stop and clear them"
        ),
        no_agent_reason=lambda n: f"{n - 1} of {n} expected tasks have no agent task id",
        env=ONE_PER_CALL,
        orphans=1,
        ends="failed",
    ),
    Case(
        "ended-while-down",
        "RemoveVm",
        {"vm_id": "vm-0001"},
        "after_agent_id_recorded:1",
        "resume polling",
        lambda n: f"{n} task(s) running on the agent, {n} ended while the engine was down",
        no_agent_reason=lambda n: f"{n} task(s) running on the agent",
        wait_agent_ended=True,
    ),
    Case(
        "vanished",
        "RemoveVm",
        {"vm_id": "vm-0001"},
        "after_agent_id_recorded:1",
        "fail",
        lambda n: f"{n} task(s) no longer known to the agent",
        no_agent_verdict="resume polling",
        no_agent_reason=lambda n: f"{n} task(s) running on the agent",
        faults=FaultConfig(vanish_share=1.0),
        vanished=3,
        wait_agent_ended=True,
        ends="failed",
    ),
    Case(
        "end-action-interrupted",
        "HibernateVm",
        {"vm_id": "vm-0001"},
        "in_end_action:1",
        "run end action again",
        lambda n: "end_successfully had started and did not finish",
    ),
    Case(
        "ended-not-cleared",
        "CreateTemplate",
        TEMPLATE,
        "after_end_action:1",
        "clear only",
        lambda n: f"command succeeded; {n} task(s) still to clear on the agent",
    ),
    Case(
        "cleared-not-recorded",
        "CreateSnapshot",
        {"vm_id": "vm-0001"},
        "after_agent_clear:1",
        "clear only",
        lambda n: f"command succeeded; {n} task(s) still to clear on the agent",
    ),
]


def crash_case(store_url: str, agent_state: Path, case: Case) -> str:
    if case.point == "submit":  # `orchestrator submit` itself dies right after its accept transaction
        with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
            orch.seed(1, 3)
        died = run_cli(
            "--store", store_url, "--agent-state", str(agent_state), "submit", case.flow,
            "--params", json.dumps(case.params), env=engine_env(ORCHESTRATOR_CRASH_AT="after_accept:1"),
        )  # fmt: skip
        assert died.returncode == CRASH_EXIT_CODE, died.stderr
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            orch.read_models.runner.catch_up()
            (row,) = orch.read_models.queries.list_commands()
        return row.command_id
    command_id = seed_and_submit(store_url, agent_state, case.flow, case.params)
    if case.faults is not None:
        agent = SimulatedAgent.open(agent_state)
        agent.backend.set_faults(case.faults)
        agent.close()
    crash(store_url, agent_state, case.point, case.env)
    if case.wait_agent_ended:
        wait_for(
            lambda: all(r["state"] != "running" for r in agent_rows(agent_state, command_id)),
            timeout=20,
            what="the agent ends the tasks while the engine is down",
        )
    return command_id


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inspect_predicts_the_verdict_recovery_then_reaches(store_url: str, agent_state: Path, case: Case) -> None:
    command_id = crash_case(store_url, agent_state, case)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        n = len(command.tasks)
        planned = [t.task_id for t in command.tasks.values() if t.agent_task_id is None]

    code, report = inspect_json(store_url, agent_state)
    assert code == EXIT_NEEDS_RECOVERY and report["exit_code"] == EXIT_NEEDS_RECOVERY
    assert report["agent_consulted"] is True
    found = {c["command_id"]: c for c in report["commands"]}
    mine = found[command_id]
    assert (mine["verdict"], mine["reason"]) == (case.verdict, case.reason(n))
    assert mine["provisional"] is False
    assert mine["flow"] == case.flow
    assert len(mine["orphans"]) == case.orphans and set(mine["orphans"]) <= set(planned)
    if case.verdict != "start":
        assert sorted(mine["orphans"] + mine["unsubmitted"]) == sorted(planned)
    assert len(mine["vanished"]) == case.vanished
    if case.wait_agent_ended and not case.vanished:
        assert sorted(mine["finished_while_down"]) == sorted(command.tasks)
    assert len(report["commands"]) == 1 and report["summary"] == {case.verdict: 1}

    # Without the agent: the same replay, and the verdicts that need the agent say so.
    code, blind = inspect_json(store_url, agent_state, "--no-agent")
    assert code == EXIT_NEEDS_RECOVERY and blind["agent_consulted"] is False
    assert "provisional" in blind["agent_note"]
    guess = {c["command_id"]: c for c in blind["commands"]}[command_id]
    assert guess["verdict"] == (case.no_agent_verdict or case.verdict)
    assert guess["reason"] == (case.no_agent_reason or case.reason)(n)
    assert guess["provisional"] is True
    assert guess["orphans"] == [] and guess["vanished"] == [] and guess["finished_while_down"] == []

    restart_until_idle(store_url, agent_state)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        done = orch.command(command_id)
        assert done.recoveries, "recovery recorded its verdict"
        assert (done.recoveries[-1][1], done.recoveries[-1][2]) == (case.verdict, case.reason(n))
        assert done.status.value == case.ends, done.outcome_reason
        if case.orphans:
            assert sum(1 for t in done.tasks.values() if t.orphan) == case.orphans
        invariants_hold(orch, agent_state)
    code, after = inspect_json(store_url, agent_state)
    assert (code, after["commands"], after["summary"]) == (EXIT_CLEAN, [], {})
    people = inspect(store_url, agent_state)
    assert people.returncode == EXIT_CLEAN and "nothing in flight" in people.stdout


def test_inspect_for_people_lists_tasks_marks_orphans_and_ends_with_a_summary(
    store_url: str, agent_state: Path
) -> None:
    command_id = seed_and_submit(store_url, agent_state, "CreateSnapshot", {"vm_id": "vm-0001"})
    crash(store_url, agent_state, "after_agent_accept:2", {**ONE_PER_CALL, **SLOW})
    proc = run_cli("--store", store_url, "--agent-state", str(agent_state), "inspect", env=cli_env(COLUMNS="250"))
    assert proc.returncode == EXIT_NEEDS_RECOVERY, proc.stderr
    assert command_id in proc.stdout
    assert "[orphan on agent]" in proc.stdout
    assert "reconciled with the agent" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "summary: 1 command(s) in flight: 1 fail"
    blind = run_cli(
        "--store", store_url, "--agent-state", str(agent_state), "inspect", "--no-agent", env=cli_env(COLUMNS="250")
    )  # wide: a narrow table may wrap "fail (provisional)" over two lines
    assert blind.returncode == EXIT_NEEDS_RECOVERY
    assert "fail (provisional)" in blind.stdout and "[orphan on agent]" not in blind.stdout, blind.stdout


def test_verdicts_are_provisional_when_the_agent_state_is_missing_or_the_agent_unreachable(
    store_url: str, agent_state: Path, tmp_path: Path
) -> None:
    command_id = seed_and_submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    crash(store_url, agent_state, "after_agent_id_recorded:1", SLOW)
    missing = tmp_path / "elsewhere.agent"
    code, report = inspect_json(store_url, missing)
    assert code == EXIT_NEEDS_RECOVERY and report["agent_consulted"] is False
    assert f"no agent state at {missing}" in report["agent_note"] and "provisional" in report["agent_note"]
    (mine,) = report["commands"]
    assert (mine["command_id"], mine["verdict"], mine["provisional"]) == (command_id, "resume polling", True)
    assert not missing.exists(), "the inspection created no agent state"

    agent = SimulatedAgent.open(agent_state)
    agent.backend.set_faults(FaultConfig(unreachable_until=time.time() + 600))
    agent.close()
    code, report = inspect_json(store_url, agent_state)
    assert code == EXIT_NEEDS_RECOVERY and report["agent_consulted"] is False
    assert "unreachable" in report["agent_note"] and "provisional" in report["agent_note"]
    assert [c["provisional"] for c in report["commands"]] == [True]


def _cancelled_while_down(store_url: str, agent_state: Path) -> str:
    """A RemoveVm whose three deletions run on the agent (5 s) when the engine dies; then the user cancels it."""
    command_id = seed_and_submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    crash(store_url, agent_state, "after_agent_id_recorded:1", {"ORCHESTRATOR_AGENT_TASK_SECONDS": "5"})
    cancelled = run_cli("--store", store_url, "--agent-state", str(agent_state), "cancel", command_id)
    assert cancelled.returncode == 0, cancelled.stderr
    return command_id


def test_a_cancel_requested_while_the_engine_is_down_is_predicted_then_done(store_url: str, agent_state: Path) -> None:
    command_id = _cancelled_while_down(store_url, agent_state)
    code, report = inspect_json(store_url, agent_state)
    (mine,) = report["commands"]
    assert (code, mine["verdict"], mine["reason"]) == (20, "fail", "cancelled: cancelled by user")
    restart_until_idle(store_url, agent_state)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.recoveries[-1][1:] == ("fail", "cancelled: cancelled by user")
        assert command.status.value == "failed" and command.outcome_reason.startswith("cancelled: cancelled by user")
        invariants_hold(orch, agent_state)


def test_recovery_stops_the_running_tasks_of_a_command_cancelled_while_the_engine_was_down(
    store_url: str, agent_state: Path
) -> None:
    command_id = _cancelled_while_down(store_url, agent_state)
    restart_until_idle(store_url, agent_state)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "failed"
        assert [(t.status.value, t.end_kind.value if t.end_kind else None) for t in command.tasks.values()] == [
            ("failed", "stopped")
        ] * 3, "the cancelled deletions were stopped, as a running engine stops them"
        vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
        assert isinstance(vm, Vm) and len(vm.disk_ids) == 3


# ---- one command's history, and time travel ---------------------------------------------------


def test_command_history_timeline_and_time_travel(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 3)
    command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    run_until_idle(orch, agent)
    final = orch.command(command_id)
    events = list(orch.store.app.events.get(final.id))

    code, history = inspect_json(store_url, agent_state, "--command", command_id)
    assert code == EXIT_CLEAN
    assert history["command_id"] == command_id
    assert [e["version"] for e in history["events"]] == list(range(1, final.version + 1))
    names = [e["event"] for e in history["events"]]
    assert names == [type(e).__name__ for e in events]
    assert names[0] == "Accepted" and names[-1] == "TasksCleared"
    assert {"TasksSubmitted", "TasksEnded", "EndActionStarted", "Ended"} <= set(names)
    accepted = history["events"][0]["detail"]
    assert "3 task(s) expected in 3 child(ren)" in accepted and "vm:vm-0001 (write)" in accepted
    ended = history["events"][names.index("Ended")]["detail"]
    assert ended.startswith("succeeded: all tasks succeeded")
    assert (history["state_version"], history["state"]["status"]) == (final.version, "succeeded")

    code, first = inspect_json(store_url, agent_state, "--command", command_id, "--at-version", "1")
    assert (first["state_version"], first["state"]["status"]) == (1, "accepted")
    assert [(t["status"], t["agent_task_id"]) for t in first["state"]["tasks"]] == [("planned", None)] * 3
    assert first["events"] == history["events"], "the timeline is the whole history; the state is at version N"

    submitted = next(e.originator_version for e in events if isinstance(e, RootCommand.TasksSubmitted))
    _, mid = inspect_json(store_url, agent_state, "--command", command_id, "--at-version", str(submitted))
    assert mid["state_version"] == submitted and mid["state"]["status"] == "running"
    assert all(t["status"] == "running" and t["agent_task_id"] for t in mid["state"]["tasks"])
    assert {t["agent_task_id"] for t in mid["state"]["tasks"]} == {t.agent_task_id for t in final.tasks.values()}

    people = inspect(store_url, agent_state, "--command", command_id, "--at-version", "1")
    assert people.returncode == EXIT_CLEAN
    assert f"history of {command_id}" in people.stdout and "state after event 1:" in people.stdout

    unknown = inspect(store_url, agent_state, "--command", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == NotFoundError.exit_code
    assert "no command 00000000-0000-4000-8000-000000000000" in one_error_line(unknown)
    not_an_id = inspect(store_url, agent_state, "--command", "vm-0001")
    assert not_an_id.returncode == NotFoundError.exit_code
    assert "is not a command id" in one_error_line(not_an_id)


# ---- strictly read-only -----------------------------------------------------------------------


# The engine's heartbeat rewrites these while it runs (docs/leases.md): they are not history.
HEARTBEAT_TABLES = ("orchestrator_leases", "orchestrator_engines")


def fingerprint(store_url: str, *, beside_an_engine: bool = False) -> dict[str, Any]:
    """SQLite: the bytes of the file and its -wal. PostgreSQL: rows (count and content) of every table, sequences.

    `beside_an_engine`: rows of every table but the heartbeat's, on both stores."""
    config = parse_store_url(store_url)
    if config.kind == "sqlite" and not beside_an_engine:
        assert config.path is not None
        wal = Path(f"{config.path}-wal")
        # A missing -wal and an empty one hold the same (nothing): SQLite creates it to read a WAL database.
        return {"db": config.path.read_bytes(), "wal": wal.read_bytes() if wal.exists() else b""}
    out: dict[str, Any] = {}
    if config.kind == "sqlite":
        for (table,) in store_sql(store_url, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            if table not in HEARTBEAT_TABLES:
                rows = store_sql(store_url, f'SELECT * FROM "{table}"')
                out[table] = (len(rows), hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest())
        return out
    tables = store_sql(
        store_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE'",
        (config.schema_name,),
    )
    for (table,) in sorted(tables):
        if beside_an_engine and table in HEARTBEAT_TABLES:
            continue
        out[table] = store_sql(
            store_url,
            f"SELECT COUNT(*), md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) FROM \"{table}\" t",
        )[0]
    for (sequence,) in store_sql(
        store_url,
        "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = ?",
        (config.schema_name,),
    ):
        out[f"sequence {sequence}"] = store_sql(store_url, f'SELECT last_value, is_called FROM "{sequence}"')[0]
    return out


def every_kind_of_inspection(store_url: str, agent_state: Path, command_id: str) -> None:
    for args in (
        ["--json"],
        ["--no-agent", "--json"],
        [],
        ["--command", command_id],
        ["--command", command_id, "--at-version", "2", "--json"],
    ):
        proc = inspect(store_url, agent_state, *args)
        assert proc.returncode in (EXIT_CLEAN, EXIT_NEEDS_RECOVERY), proc.stderr[-2000:]


def test_inspection_changes_nothing_in_the_store_even_while_an_engine_runs(store_url: str, agent_state: Path) -> None:
    command_id = seed_and_submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    crash(store_url, agent_state, "after_agent_id_recorded:1", SLOW)  # its tasks run on the agent for a minute
    before = fingerprint(store_url)
    every_kind_of_inspection(store_url, agent_state, command_id)
    assert fingerprint(store_url) == before, "an inspection changed the store"

    engine = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state)],
        cwd=REPO,
        env=engine_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        recovered = f"SELECT COUNT(*) FROM {events_table(store_url)} WHERE topic LIKE '%RootCommand.Recovered'"
        # The crashed engine recorded one verdict ("start"); the running one records its own ("resume polling").
        wait_for(lambda: store_sql(store_url, recovered)[0][0] == 2, timeout=30, what="the engine recovered")
        last: list[dict[str, Any]] = [fingerprint(store_url, beside_an_engine=True)]

        def quiet() -> bool:  # the engine now only polls the agent: two equal fingerprints in a row
            now = fingerprint(store_url, beside_an_engine=True)
            same = now == last[0]
            last[0] = now
            return same

        wait_for(quiet, timeout=30, interval=0.5, what="the engine is quiet")
        during = last[0]
        every_kind_of_inspection(store_url, agent_state, command_id)
        assert fingerprint(store_url, beside_an_engine=True) == during, "an inspection changed the store"
        assert engine.poll() is None, "the engine kept running"
    finally:
        engine.send_signal(signal.SIGTERM)
        _, stderr = engine.communicate(timeout=60)
    assert engine.returncode == 0, stderr[-2000:]


# ---- stores it must refuse, with one line -------------------------------------------------------


def _foreign(store_url: str, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        path = tmp_path / "crm.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
        conn.close()
        return f"sqlite:///{path}"
    config = parse_store_url(store_url)
    with psycopg.connect(PG_DSN, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {config.schema_name}".encode())
        pg.execute(f"CREATE TABLE {config.schema_name}.customers (id INT PRIMARY KEY, name TEXT)".encode())
    return store_url


def _empty(store_url: str, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        path = tmp_path / "empty.db"
        path.touch()
        return f"sqlite:///{path}"
    with psycopg.connect(PG_DSN, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {parse_store_url(store_url).schema_name}".encode())
    return store_url


def _unreachable(store_url: str, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'nothing-here.db'}"
    return pg_schema_url("whatever").replace(":5432/", ":1/")


def _newer(store_url: str, tmp_path: Path, backend: str) -> str:
    with Orchestrator.open(store_url, agent_state=tmp_path / "a.db", create=True) as orch:
        orch.seed(1, 1)
    store_sql(store_url, "UPDATE orchestrator_meta SET value = '99' WHERE key = 'schema_version'")
    return store_url


BAD_STORES: list[tuple[str, Callable[[str, Path, str], str], str]] = [
    ("foreign", _foreign, "is not an orchestrator store (it holds tables: customers)"),
    ("empty", _empty, ""),
    ("unreachable", _unreachable, ""),
    ("newer-schema", _newer, "was written by a newer orchestrator (store schema 99, this one reads 1)"),
]


@pytest.mark.parametrize(("kind", "make", "says"), BAD_STORES, ids=[b[0] for b in BAD_STORES])
def test_a_store_that_cannot_be_inspected_gives_one_clear_line_and_exit_3(
    kind: str, make: Callable[[str, Path, str], str], says: str, backend: str, store_url: str, tmp_path: Path
) -> None:
    url = make(store_url, tmp_path, backend)
    before = fingerprint(url) if kind in ("foreign", "newer-schema") else None
    for args in ([], ["--json"], ["--no-agent"]):
        proc = inspect(url, tmp_path / "agent.db", *args)
        assert proc.returncode == StoreError.exit_code, proc.stderr[-2000:]
        assert proc.stdout == ""
        line = one_error_line(proc)
        expected = (
            says
            or {
                ("empty", "sqlite"): "is empty: no orchestrator store has been created there yet",
                ("empty", "postgres"): "is empty: no orchestrator store has been created there yet",
                ("unreachable", "sqlite"): "no store at",
                ("unreachable", "postgres"): "cannot connect to postgresql://postgres@127.0.0.1:1/test",
            }[(kind, backend)]
        )
        assert expected in line
    script = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "crash_replay.py"), "--store", url, "--json"],
        capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert script.returncode == StoreError.exit_code and one_error_line(script) == line
    if before is not None:
        assert fingerprint(url) == before, "refusing a store changed it"
    if kind == "unreachable" and backend == "sqlite":
        assert not (tmp_path / "nothing-here.db").exists(), "inspect created a store"


def test_a_password_in_the_store_url_never_appears_in_the_inspection(pg_schema: str, agent_state: Path) -> None:
    url = pg_schema_url(pg_schema).replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    command_id = seed_and_submit(url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    crash(url, agent_state, "after_agent_accept:1", SLOW)
    outputs = []
    for args in (["--json"], [], ["--no-agent"], ["--command", command_id, "--json"], ["--command", command_id]):
        proc = inspect(url, agent_state, *args)
        assert proc.returncode in (EXIT_CLEAN, EXIT_NEEDS_RECOVERY), proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    _, report = inspect_json(url, agent_state)
    assert report["store"] == f"postgresql://postgres:***@127.0.0.1:5432/test?schema={pg_schema}"
    unreachable = inspect(url.replace(":5432/", ":1/"), agent_state, "--json")
    assert unreachable.returncode == StoreError.exit_code and "postgres:***@" in one_error_line(unreachable)
    outputs.append(unreachable.stdout + unreachable.stderr)
    for text in outputs:
        assert "s3cret" not in text


# ---- the entry point script ----------------------------------------------------------------------


def test_crash_replay_script_is_the_inspect_command(store_url: str, agent_state: Path) -> None:
    command_id = seed_and_submit(store_url, agent_state, "HibernateVm", {"vm_id": "vm-0001"})
    crash(store_url, agent_state, "after_agent_id_recorded:1", ONE_PER_CALL)
    script = [sys.executable, str(REPO / "scripts" / "crash_replay.py")]
    for args in (["--json"], ["--no-agent", "--json"], ["--command", command_id, "--at-version", "2", "--json"]):
        by_script = subprocess.run(
            [*script, *args, "--store", store_url, "--agent-state", str(agent_state)],
            capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=False,
        )  # fmt: skip
        by_cli = inspect(store_url, agent_state, *args)
        assert by_script.returncode == by_cli.returncode, by_script.stderr
        assert json.loads(by_script.stdout) == json.loads(by_cli.stdout)
    assert by_cli.returncode == EXIT_CLEAN
    overview = subprocess.run(
        [*script, f"--store={store_url}", "--agent-state", str(agent_state)],
        capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert overview.returncode == EXIT_NEEDS_RECOVERY, overview.stderr
    assert overview.stdout.strip().splitlines()[-1] == "summary: 1 command(s) in flight: 1 fail"
