"""Issue 5 item 7: credentials stay secret, files are private, and values never become SQL.

PostgreSQL here runs with trust authentication, so a URL with any password
connects: every output of a real session can be searched for the password.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.inventory import Snapshot, Template
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.store import parse_store_url
from orchestrator.testing import SimulatedAgent
from tests.conftest import cli_env, pg_schema_url, run_cli, run_until_idle, store_sql

SECRET = "s3cret"


def with_password(url: str, password: str = SECRET) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(**{"ORCHESTRATOR_AGENT_TASK_SECONDS": "0.2", "ORCHESTRATOR_POLL_INTERVAL": "0.05", **extra})


def everything_said(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


# ---- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize("password", [SECRET, "p%40ss%3Aw0rd%2F1"], ids=["plain", "percent-encoded"])
def test_credentials_never_appear_when_the_store_is_unreachable(password: str, tmp_path: Path) -> None:
    url = f"postgresql://postgres:{password}@127.0.0.1:1/test"
    forms = {password, "p@ss:w0rd/1"} if "%" in password else {password}
    state = str(tmp_path / "agent.db")
    for args in (
        ["seed", "--json"],
        ["submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--json"],
        ["list", "--json"],
        ["inspect", "--json"],
        ["locks", "--json"],
        ["projections", "status", "--json"],
        ["--verbose", "run", "--until-idle", "--timeout", "3"],
    ):
        proc = run_cli("--store", url, "--agent-state", state, *args, env=engine_env())
        assert proc.returncode == 3, everything_said(proc)
        assert "postgres:***@127.0.0.1:1/test" in proc.stderr
        for form in forms:
            assert form not in everything_said(proc), args
        via_env = run_cli(*args, env=engine_env(ORCHESTRATOR_STORE=url, ORCHESTRATOR_AGENT_STATE=state))
        assert via_env.returncode == 3
        for form in forms:
            assert form not in everything_said(via_env), args


def test_credentials_never_appear_in_a_whole_session_output_logs_or_json(pg_schema: str, tmp_path: Path) -> None:
    url = with_password(pg_schema_url(pg_schema))
    state = str(tmp_path / "agent.db")
    env = engine_env(ORCHESTRATOR_AGENT_STATE=state)
    said: list[str] = []

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = run_cli("--store", url, *args, env=env)
        assert proc.returncode == code, (args, proc.stderr[-2000:])
        said.append(everything_said(proc))
        return proc

    run("seed", "--vms", "2", "--disks", "2", "--json")
    command_id = json.loads(run("submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--json").stdout)[
        "command_id"
    ]
    run("submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', code=5)  # refused: locked
    said_json = json.loads(run("inspect", "--json", code=20).stdout)
    assert said_json["store"] == f"postgresql://postgres:***@127.0.0.1:5432/test?schema={pg_schema}"
    run("inspect", code=20)
    run("--verbose", "run", "--until-idle", "--timeout", "60")
    for args in (
        ["list", "--json"],
        ["show", command_id, "--json"],
        ["inspect", "--command", command_id, "--json"],
        ["tasks", "--entity", "vm:vm-0002", "--json"],
        ["active", "--json"],
        ["locks", "--json"],
        ["inventory", "--json"],
        ["projections", "status", "--json"],
        ["agent", "show", "--json"],
    ):
        run(*args)
    run("submit", "HibernateVm", "--params", '{"vm_id": "vm-0001"}', code=5)  # refused: does not exist
    store_sql(url, "UPDATE orchestrator_meta SET value = '99' WHERE key = 'schema_version'")
    newer = run("list", code=3)
    assert "postgres:***@" in newer.stderr and "newer orchestrator" in newer.stderr
    joined = "\n".join(said)
    assert command_id in joined
    assert SECRET not in joined


def test_a_password_in_an_unsupported_url_is_not_echoed(tmp_path: Path) -> None:
    proc = run_cli("--store", f"mysql://db.example/orchestrator?user=root&password={SECRET}", "list")
    assert proc.returncode == 3 and proc.stderr.startswith("error: ")
    assert SECRET not in everything_said(proc)


# ---- private files ------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Create files as a careless environment would (umask 000): ours must still be private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_the_project_creates_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    store = tmp_path / "store.db"
    state = tmp_path / "agent.db"
    url = f"sqlite:///{store}"
    for args in (["seed", "--json"], ["submit", "CreateSnapshot", "--params", '{"vm_id": "vm-0001"}']):
        proc = run_cli("--store", url, "--agent-state", str(state), *args, env=engine_env())
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "--store", url, "--agent-state", str(state), "run", "--until-idle", "--timeout", "60", env=engine_env()
    )
    assert proc.returncode == 0, proc.stderr
    created = list(tmp_path.iterdir())  # the store, the agent state, their -wal/-shm files, the engine's lock file
    assert {"store.db", "agent.db"} <= {p.name for p in created}
    assert any(p.name.endswith(".engine.lock") for p in created)
    for path in created:
        assert mode_of(path) == 0o600, f"{path.name} is {oct(mode_of(path))}"

    # The default agent state beside the store, and a store made by the library.
    lib_store = tmp_path / "lib.db"
    with Orchestrator.open(f"sqlite:///{lib_store}", create=True) as orch:
        orch.seed(1, 1)
        default_state = orch.agent_state
    assert default_state == tmp_path / "lib.db.agent"
    for path in (lib_store, default_state):
        assert mode_of(path) == 0o600, f"{path.name} is {oct(mode_of(path))}"
    agent = SimulatedAgent.open(tmp_path / "alone.agent")
    agent.close()
    assert mode_of(tmp_path / "alone.agent") == 0o600


@pytest.mark.parametrize("directory", ["run#2", "what?"])
def test_a_store_path_with_uri_characters_keeps_everything_in_the_store_file(
    directory: str, tmp_path: Path, open_umask: None
) -> None:
    (tmp_path / directory).mkdir()
    store = tmp_path / directory / "store.db"
    state = tmp_path / directory / "agent.db"
    for args in (["seed"], ["submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}'], ["list"]):
        proc = run_cli("--store", f"sqlite:///{store}", "--agent-state", str(state), *args, env=engine_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory], "nothing was written outside the store"
    tables = {r[0] for r in store_sql(f"sqlite:///{store}", "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"stored_events", "orchestrator_meta", "proj_commands", "proj_tracking"} <= tables
    assert mode_of(store) == 0o600


# ---- values never become SQL -----------------------------------------------------------------------

NASTY_NAME = "x'); DROP TABLE stored_events; --"
NASTY_DESCRIPTION = 'Robert"; DELETE FROM proj_commands WHERE 1=1; --'


def table_names(store_url: str) -> list[str]:
    config = parse_store_url(store_url)
    if config.kind == "sqlite":
        return sorted(str(r[0]) for r in store_sql(store_url, "SELECT name FROM sqlite_master WHERE type = 'table'"))
    rows = store_sql(
        store_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (config.schema_name,)
    )
    return sorted(str(r[0]) for r in rows)


def test_sql_metacharacters_in_values_are_stored_verbatim(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(2, 1)
    tables = table_names(store_url)
    template = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": NASTY_NAME, "template_id": "tmpl-nasty"})
    snapshot = orch.submit("CreateSnapshot", {"vm_id": "vm-0002", "description": NASTY_DESCRIPTION})
    run_until_idle(orch, agent)

    made = orch.entity(EntityRef(EntityType.TEMPLATE, "tmpl-nasty"))
    assert isinstance(made, Template) and made.name == NASTY_NAME and made.status == "ok"
    snap_ref = next(e.ref for e in orch.command(snapshot.command_id).entities if e.ref.type is EntityType.SNAPSHOT)
    snap = orch.entity(snap_ref)
    assert isinstance(snap, Snapshot) and snap.description == NASTY_DESCRIPTION
    assert orch.command(template.command_id).params["name"] == NASTY_NAME
    assert table_names(store_url) == tables, "no table was dropped or created"

    listed = run_cli("--store", store_url, "--agent-state", str(agent_state), "list", "--json")
    assert listed.returncode == 0
    summaries = [c["summary"] for c in json.loads(listed.stdout)["commands"]]
    assert f"create template tmpl-nasty ({NASTY_NAME}) from vm vm-0001" in summaries
    inventory = run_cli("--store", store_url, "--agent-state", str(agent_state), "inventory", "--json")
    items = {(i["type"], i["id"]): i for i in json.loads(inventory.stdout)}
    assert items[("template", "tmpl-nasty")]["details"]["name"] == NASTY_NAME
    assert items[("snapshot", snap_ref.id)]["details"]["description"] == NASTY_DESCRIPTION


def test_ids_and_filters_with_sql_in_them_are_refused_or_match_nothing(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 1)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.read_models.runner.catch_up()
    tables = table_names(store_url)
    head = orch.read_models.runner.head()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--store", store_url, "--agent-state", str(agent_state), *args)

    for args, code in (
        (["submit", "RemoveVm", "--params", '{"vm_id": "vm-0001\'; DROP TABLE stored_events; --"}'], 4),
        (["submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--id", "1'; DELETE FROM x; --"], 4),
        (["tasks", "--entity", "vm:vm-0001' OR '1'='1"], 4),
        (["locks", "--entity", "vm:x;DROP TABLE proj_tracking"], 4),
        (["list", "--entity", "vm:' OR 1=1 --"], 4),
        (["show", "x' OR '1'='1"], 6),
        (["inspect", "--command", "'; DROP TABLE stored_events; --"], 6),
        # What names nothing that exists is said so (issue 16), never matched as SQL.
        (["list", "--type", "RemoveVm' OR '1'='1", "--json"], 4),
        (["list", "--parent", "x' OR 1=1 --", "--json"], 6),
        (["list", "--type", "RemoveVm; DELETE FROM proj_commands", "--json"], 4),
        (["entities", "--task", "' OR '1'='1", "--json"], 4),
    ):
        proc = cli(*args)
        assert proc.returncode == code, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    wrong_schema = run_cli("--store", pg_schema_url("public;DROP SCHEMA public CASCADE"), "list")
    assert wrong_schema.returncode == 3 and "is not a plain lower-case identifier" in wrong_schema.stderr
    assert table_names(store_url) == tables
    assert orch.read_models.runner.head() == head
    assert len(orch.read_models.queries.list_commands(include_children=True)) == 2
