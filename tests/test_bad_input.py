"""Issue 5 item 6 (and issue 2's bad input): every kind of bad input, on SQLite and PostgreSQL.

For each: the user sees ONE line on stderr starting `error:` and a non-zero,
documented exit code (or, for the agent's misbehaviour, the engine makes a
safe decision), nothing crashes in a loop, and the events already recorded
are unchanged (compared row by row before and after).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.model import CommandStatus, TaskStatus
from orchestrator.errors import (
    AgentError,
    DuplicateCommandError,
    EntityLockedError,
    InputError,
    InvalidParametersError,
    StoreError,
    UnknownFlowError,
)
from orchestrator.store import parse_store_url
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import (
    PG_DSN,
    cli_env,
    engine_args,
    events_table,
    fast_settings,
    invariants_hold,
    run_cli,
    run_until_idle,
    store_sql,
)

# ---- helpers ---------------------------------------------------------------------------------


def recorded_events(store_url: str) -> list[tuple[str, int, str, bytes]]:
    """Every stored event, as stored: (originator id, version, topic, state bytes)."""
    rows = store_sql(
        store_url,
        f"SELECT originator_id, originator_version, topic, state FROM {events_table(store_url)}"
        " ORDER BY originator_id, originator_version",
    )
    return [(str(a), int(b), str(c), bytes(d)) for a, b, c, d in rows]


def cli(store_url: str, agent_state: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_cli("--store", store_url, "--agent-state", str(agent_state), *args, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The CLI contract: exit `code`, and one line on stderr, `error: ...`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, f"expected one line on stderr:\n{proc.stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def service_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """`run` is a service that logs: its error is its last line, the only `error:` line, and no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], proc.stderr[-3000:]
    return lines[-1]


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(**{"ORCHESTRATOR_AGENT_TASK_SECONDS": "0.3", "ORCHESTRATOR_POLL_INTERVAL": "0.05", **extra})


# ---- parameters and flows ------------------------------------------------------------------------

BIG = "x" * 20_000
BAD_PARAMS: list[tuple[str, str, str, str]] = [
    ("not-json", "RemoveVm", "{vm_id: vm-0001}", "RemoveVm parameters are not valid JSON"),
    ("not-an-object", "RemoveVm", '["vm-0001"]', "RemoveVm parameters must be a JSON object"),
    ("missing-field", "RemoveVm", "{}", "invalid RemoveVm parameters: vm_id: Field required"),
    ("wrong-type", "RemoveVm", '{"vm_id": 17}', "invalid RemoveVm parameters: vm_id: Input should be a valid string"),
    ("unknown-field", "HibernateVm", '{"vm_id": "vm-0001", "force": true}', "force: Extra inputs are not permitted"),
    ("bad-id", "RemoveVm", '{"vm_id": "../../etc/passwd"}', "vm_id: String should match pattern"),
    (
        "empty-name",
        "CreateTemplate",
        '{"vm_id": "vm-0001", "name": ""}',
        "name: String should have at least 1 character",
    ),
    ("long-name", "CreateTemplate", json.dumps({"vm_id": "vm-0001", "name": "n" * 65}), "at most 64 characters"),
    ("long-description", "CreateSnapshot", json.dumps({"vm_id": "vm-0001", "description": "d" * 201}), "at most 200"),
    ("oversized", "CreateSnapshot", json.dumps({"vm_id": "vm-0001", "description": BIG}), "the limit is 16384"),
    ("null-byte-id", "RemoveVm", '{"vm_id": "vm-0001\\u0000"}', "vm_id: String should match pattern"),
    ("no-such-vm", "RemoveVm", '{"vm_id": "vm-0999"}', "vm vm-0999 does not exist"),
]


@pytest.mark.parametrize(("flow", "params", "says"), [c[1:] for c in BAD_PARAMS], ids=[c[0] for c in BAD_PARAMS])
def test_invalid_parameters_are_refused_with_one_line_and_nothing_recorded(
    store_url: str, orch: Orchestrator, agent_state: Path, flow: str, params: str, says: str
) -> None:
    orch.seed(1, 2)
    before = recorded_events(store_url)
    proc = cli(store_url, agent_state, "submit", flow, "--params", params)
    code = 5 if says.endswith("does not exist") else InputError.exit_code
    assert says in one_error_line(proc, code)
    assert proc.stdout == ""
    assert len(proc.stderr) < 1000, "the error is short even for oversized input"
    assert recorded_events(store_url) == before


def test_invalid_parameters_through_the_library_raise_input_errors(store_url: str, orch: Orchestrator) -> None:
    orch.seed(1, 1)
    before = recorded_events(store_url)
    for flow, params in (
        ("RemoveVm", {}),
        ("RemoveVm", {"vm_id": ["vm-0001"]}),
        ("CreateTemplate", {"vm_id": "vm-0001", "name": BIG}),
        ("CreateSnapshot", {"vm_id": "vm-0001", "description": BIG}),
        ("CreateTemplate", {"vm_id": "vm-0001", "name": "t", "template_id": "x'; DROP TABLE t; --"}),
    ):
        with pytest.raises(InvalidParametersError):
            orch.submit(flow, params)
    with pytest.raises(InvalidParametersError, match="the limit is 16384"):
        orch.submit("CreateSnapshot", json.dumps({"vm_id": "vm-0001", "description": BIG}))
    assert recorded_events(store_url) == before


def test_unknown_flow_is_refused_naming_the_known_ones(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    before = recorded_events(store_url)
    line = one_error_line(cli(store_url, agent_state, "submit", "DeleteEverything"), UnknownFlowError.exit_code)
    assert "unknown flow 'DeleteEverything'" in line and "RemoveVm" in line and "CreateSnapshot" in line
    with pytest.raises(UnknownFlowError):
        orch.submit("DeleteEverything", {})
    assert recorded_events(store_url) == before


# ---- duplicate command ids ---------------------------------------------------------------------


def test_duplicate_command_ids_are_idempotent_with_the_same_parameters_and_refused_with_others(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(2, 2)
    ident = str(uuid4())
    first = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--id", ident)
    assert first.returncode == 0 and first.stdout.strip() == ident, first.stderr
    before = recorded_events(store_url)

    again = cli(
        store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id":"vm-0001"}', "--id", ident, "--json"
    )
    assert again.returncode == 0, again.stderr
    answer = json.loads(again.stdout)
    assert (answer["command_id"], answer["duplicate"]) == (ident, True)
    assert recorded_events(store_url) == before, "the same command again records nothing"
    assert orch.submit("RemoveVm", {"vm_id": "vm-0001"}, UUID(ident)).duplicate

    other_params = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0002"}', "--id", ident)
    line = one_error_line(other_params, DuplicateCommandError.exit_code)
    assert f"command id {ident} is already used by a RemoveVm command with other parameters" in line
    other_flow = cli(store_url, agent_state, "submit", "HibernateVm", "--params", '{"vm_id": "vm-0001"}', "--id", ident)
    assert ident in one_error_line(other_flow, DuplicateCommandError.exit_code)
    with pytest.raises(DuplicateCommandError):
        orch.submit("CreateSnapshot", {"vm_id": "vm-0002"}, UUID(ident))
    assert recorded_events(store_url) == before

    run_until_idle(orch, agent)
    ended = recorded_events(store_url)
    late = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--id", ident)
    assert late.returncode == 0 and late.stdout.strip() == ident, "still idempotent once it has ended"
    assert recorded_events(store_url) == ended
    not_a_uuid = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0002"}', "--id", "42")
    assert "is not a UUID" in one_error_line(not_a_uuid, InputError.exit_code)


def test_reusing_the_id_of_a_failed_template_gets_a_clear_answer(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 1)
    agent.backend.set_faults(FaultConfig(fail_verbs=["copy_image"]))
    params = '{"vm_id": "vm-0001", "name": "golden", "template_id": "tmpl-golden"}'
    first = cli(store_url, agent_state, "submit", "CreateTemplate", "--params", params)
    assert first.returncode == 0, first.stderr
    run_until_idle(orch, agent)
    assert orch.command(first.stdout.strip()).status is CommandStatus.FAILED
    agent.backend.set_faults(FaultConfig())

    again = cli(store_url, agent_state, "submit", "CreateTemplate", "--params", params)
    if again.returncode == 0:  # a safe decision: the id is free again, and the new template is made
        run_until_idle(orch, agent)
        assert orch.command(again.stdout.strip()).status is CommandStatus.SUCCEEDED
        invariants_hold(orch, agent_state)
    else:  # or a clear refusal that names the id, not a false "try again"
        line = one_error_line(again, 5)
        assert "tmpl-golden" in line and "try again" not in line


def test_a_conflicting_lock_is_one_line_and_records_nothing(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    holder = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    before = recorded_events(store_url)
    proc = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}')
    line = one_error_line(proc, EntityLockedError.exit_code)
    assert f"vm vm-0001 is locked (write) by HibernateVm command {holder.command_id}" in line
    assert recorded_events(store_url) == before


# ---- stores that are wrong, unreachable, or not ours ---------------------------------------------

BAD_URLS: list[tuple[str, str, str]] = [
    ("other-scheme", "mysql://root@db.example/orchestrator", "is not supported; expected sqlite:///PATH"),
    ("no-path", "sqlite://", "has no file path"),
    ("no-directory", "sqlite:////nonexistent-dir/store.db", "sqlite:////nonexistent-dir/store.db"),
    (
        "refused-port",
        "postgresql://postgres@127.0.0.1:1/test",
        "cannot connect to postgresql://postgres@127.0.0.1:1/test",
    ),
    ("bad-port", "postgresql://postgres@127.0.0.1:99999/test", "bad port"),
    (
        "no-database",
        "postgresql://postgres@127.0.0.1:5432/no_such_db_here",
        'database "no_such_db_here" does not exist',
    ),
    (
        "bad-schema",
        "postgresql://postgres@127.0.0.1:5432/test?schema=Robert;drop",
        "is not a plain lower-case identifier",
    ),
    ("no-db-name", "postgresql://postgres@127.0.0.1:5432/", "has no database name"),
]


@pytest.mark.parametrize(("url", "says"), [u[1:] for u in BAD_URLS], ids=[u[0] for u in BAD_URLS])
def test_a_wrong_or_unreachable_store_url_is_one_line_exit_3(url: str, says: str, agent_state: Path) -> None:
    for args in (["seed"], ["run", "--until-idle", "--timeout", "5"], ["inspect", "--json"]):
        proc = cli(url, agent_state, *args, env=engine_env())
        assert says in one_error_line(proc, StoreError.exit_code), args
    env_only = run_cli("list", env=cli_env(ORCHESTRATOR_STORE=url))
    assert says in one_error_line(env_only, StoreError.exit_code)


def test_a_malformed_postgres_url_is_one_line_exit_3(agent_state: Path) -> None:
    proc = cli("postgresql://postgres@[::1/test", agent_state, "list")
    assert "store URL" in one_error_line(proc, StoreError.exit_code)


def _foreign_sqlite(tmp_path: Path) -> str:
    path = tmp_path / "payroll.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE salaries (name TEXT, amount INTEGER)")
    conn.execute("INSERT INTO salaries VALUES ('ann', 100)")
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def test_a_database_that_is_not_ours_is_refused_and_left_untouched(
    backend: str, store_url: str, tmp_path: Path, agent_state: Path
) -> None:
    if backend == "sqlite":
        url = _foreign_sqlite(tmp_path)
        path = parse_store_url(url).path
        assert path is not None

        def content() -> Any:
            return path.read_bytes()
    else:
        url = store_url
        schema = parse_store_url(url).schema_name
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
            conn.execute(f"CREATE TABLE {schema}.salaries (name TEXT, amount INTEGER)".encode())
            conn.execute(f"INSERT INTO {schema}.salaries VALUES ('ann', 100)".encode())

        def content() -> Any:
            return store_sql(
                url, "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", (schema,)
            ), store_sql(url, "SELECT * FROM salaries")

    before = content()
    for args in (["seed"], ["submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}'], ["list"], ["inspect"]):
        proc = cli(url, agent_state, *args)
        assert "is not an orchestrator store (it holds tables: salaries)" in one_error_line(proc, StoreError.exit_code)
    run = cli(url, agent_state, "run", "--until-idle", "--timeout", "5")
    assert "is not an orchestrator store" in one_error_line(run, StoreError.exit_code)
    with pytest.raises(StoreError, match="is not an orchestrator store"):
        Orchestrator.open(url, agent_state=agent_state, create=True)
    assert content() == before, "a refused store was changed"


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, agent_state: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("remember the milk\n" * 200)
    before = notes.read_bytes()
    for args in (["seed"], ["list"], ["inspect"]):
        proc = cli(f"sqlite:///{notes}", agent_state, *args)
        assert "is not a readable SQLite database" in one_error_line(proc, StoreError.exit_code)
    assert notes.read_bytes() == before


# ---- a corrupt event row ---------------------------------------------------------------------------


def corrupt_one_event(store_url: str, agent_state: Path) -> tuple[str, list[tuple[str, int, str, bytes]]]:
    """Two commands in flight; garbage written into the state of one event of the first (its TasksSubmitted)."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(2, 2)
        victim = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"),
        env=engine_env(ORCHESTRATOR_CRASH_AT="after_agent_id_recorded:1", ORCHESTRATOR_AGENT_TASK_SECONDS="30"),
    )
    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        orch.submit("HibernateVm", {"vm_id": "vm-0002"})
    topic = "%RootCommand.TasksSubmitted"
    victim_id: Any = UUID(victim) if parse_store_url(store_url).kind == "postgresql" else UUID(victim).hex
    store_sql(
        store_url,
        f"UPDATE {events_table(store_url)} SET state = ? WHERE originator_id = ? AND topic LIKE ?",
        (b"\xde\xad\xbe\xef not json", victim_id, topic),
    )
    rows = recorded_events(store_url)
    assert sum(1 for r in rows if r[3] == b"\xde\xad\xbe\xef not json") == 1
    return victim, rows


def test_a_corrupt_event_row_stops_the_engine_with_one_clear_line_every_time(store_url: str, agent_state: Path) -> None:
    _, before = corrupt_one_event(store_url, agent_state)
    for _ in range(2):  # a supervisor restarting it gets the same clear answer, not a crash
        proc = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "10", env=engine_env())
        assert proc.returncode != 0
        line = service_error_line(proc, StoreError.exit_code)
        assert "event" in line
    assert recorded_events(store_url) == before, "nothing recorded was changed or lost"


def test_a_corrupt_event_row_gives_readers_one_clear_line(store_url: str, agent_state: Path) -> None:
    victim, before = corrupt_one_event(store_url, agent_state)
    for args in (["inspect"], ["inspect", "--json"], ["show", victim], ["list"]):
        proc = cli(store_url, agent_state, *args)
        assert "Traceback" not in proc.stderr, (args, proc.stderr[-1500:])
        if proc.returncode not in (0, 20):
            one_error_line(proc, StoreError.exit_code)
    assert recorded_events(store_url) == before


# ---- an agent that misbehaves -------------------------------------------------------------------


def crashed_with_tasks_running(store_url: str, agent_state: Path) -> str:
    """A RemoveVm whose three tasks run on the agent (for a minute) after the engine died."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
        command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"),
        env=engine_env(ORCHESTRATOR_CRASH_AT="after_agent_id_recorded:1", ORCHESTRATOR_AGENT_TASK_SECONDS="2"),
    )
    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    return command_id


AGENT_FAULTS: list[tuple[str, dict[str, Any], str]] = [
    ("unreachable", {"unreachable_until": 1e12}, "agent unreachable: connection refused"),
    ("garbage", {"malformed_until": 1e12}, "agent gave a malformed answer to task_statuses"),
    ("timeout", {"call_latency": 1.0, "timeout_seconds": 0.3}, "agent did not answer within 0.3s"),
]
# For a while only (in-process): what the engine says it is waiting for.
PASSING_FAULTS: list[tuple[str, dict[str, Any], str]] = [
    ("unreachable", {"unreachable_until": 0.0}, "agent unreachable"),
    ("garbage", {"malformed_until": 0.0}, "agent gave a malformed answer"),
    ("timeout", {"call_latency": 1.0, "timeout_seconds": 0.3}, "agent did not answer within 0.3s"),
]


@pytest.mark.parametrize(("faults", "says"), [f[1:] for f in AGENT_FAULTS], ids=[f[0] for f in AGENT_FAULTS])
def test_an_agent_that_cannot_answer_makes_run_give_up_with_one_line_and_decide_nothing(
    store_url: str, agent_state: Path, faults: dict[str, Any], says: str
) -> None:
    command_id = crashed_with_tasks_running(store_url, agent_state)
    agent = SimulatedAgent.open(agent_state)
    agent.backend.set_faults(FaultConfig(**faults))
    agent.close()
    before = recorded_events(store_url)

    started = time.monotonic()
    proc = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "3", env=engine_env())
    assert time.monotonic() - started < 30
    line = service_error_line(proc, AgentError.exit_code)
    assert line.startswith("error: gave up after 3s waiting for the agent")
    assert says in line and "recovery decided nothing" in line
    assert "recovered 0 command(s)" not in proc.stderr, "it does not claim to have recovered anything"
    assert "gave up waiting for the agent" in proc.stderr
    assert recorded_events(store_url) == before, "nothing was decided"

    agent = SimulatedAgent.open(agent_state)
    agent.backend.set_faults(FaultConfig())
    agent.close()
    back = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "60", env=engine_env())
    assert back.returncode == 0, back.stderr[-3000:]
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status is CommandStatus.SUCCEEDED, command.outcome_reason
        assert set(before) <= set(recorded_events(store_url)), "nothing recorded was changed or lost"
        invariants_hold(orch, agent_state, expected_commands=[command.id])


@pytest.mark.parametrize(("faults", "says"), [f[1:] for f in PASSING_FAULTS], ids=[f[0] for f in PASSING_FAULTS])
def test_an_agent_misbehaving_for_a_while_delays_the_engine_but_never_decides_for_it(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, faults: dict[str, Any], says: str
) -> None:
    orch.seed(1, 2)
    engine = build_engine(orch, agent, fast_settings(agent_backoff_max=0.3))
    engine.recover()
    until = {k: time.time() + 600 for k in faults if k.endswith("_until")}
    agent.backend.set_faults(FaultConfig(**{**faults, **until}))
    result = orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        engine.cycle()
        time.sleep(0.02)  # the poll interval of this hand-driven engine
    assert says in engine.agent_trouble
    command = orch.command(result.command_id)
    assert not command.ended and command.failure_reason is None, "nothing decided from silence"
    assert not command.recoveries
    assert all(t.status in (TaskStatus.PLANNED, TaskStatus.RUNNING) for t in command.tasks.values())

    agent.backend.set_faults(FaultConfig())
    # The same engine carries on (a new one would be a restart: recovery fails what was cut short, by G1).
    deadline = time.monotonic() + 30
    while not engine.idle:
        assert time.monotonic() < deadline, "the engine never got the command done"
        engine.cycle()
        time.sleep(0.02)
    command = orch.command(result.command_id)
    assert command.status is CommandStatus.SUCCEEDED, command.outcome_reason
    keys = [r["key"] for r in agent.backend.journal()]
    assert sorted(keys) == sorted(command.task_key(t) for t in command.tasks), "no task created twice"
    invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_statuses_of_tasks_never_given_are_ignored(store_url: str, agent_state: Path) -> None:
    command_id = crashed_with_tasks_running(store_url, agent_state)
    agent = SimulatedAgent.open(agent_state)
    agent.backend.set_faults(FaultConfig(phantom_tasks=5))
    assert len(agent.task_statuses()) == 3 + 5, "the agent reports five tasks it was never given"
    agent.close()
    before = recorded_events(store_url)
    proc = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "60", env=engine_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status is CommandStatus.SUCCEEDED, command.outcome_reason
        assert all(t.status is TaskStatus.SUCCEEDED for t in command.tasks.values())
        after = recorded_events(store_url)
        assert set(before) <= set(after), "nothing recorded was changed"
        invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_a_new_command_succeeds_while_the_agent_reports_phantoms(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    agent.backend.set_faults(FaultConfig(phantom_tasks=3, malformed_share=0.0))
    result = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    run_until_idle(orch, agent)
    assert orch.command(result.command_id).status is CommandStatus.SUCCEEDED
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])
