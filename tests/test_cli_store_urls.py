"""Issue 16: PostgreSQL store URLs mean what they mean to libpq (and psql), and never show a password.

The test server has no TLS, trusts every connection (any password works) and
listens on TCP and on a socket directory.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.store import parse_store_url
from orchestrator.store.url import _without_schema_param
from tests.conftest import PG_DSN
from tests.test_cli_helpers import cli, one_error_line

SECRET = "s3cret-Pa55"
SOCKET_DIR = Path("/var/run/postgresql")
PG_HOST = parse_store_url(PG_DSN).host
PG_PORT = parse_store_url(PG_DSN).port


def pg_url(schema: str, *, auth: str = "postgres", hosts: str = "", **params: str) -> str:
    query = "&".join([f"schema={schema}", *(f"{k}={v}" for k, v in params.items())])
    return f"postgresql://{auth}@{hosts or f'{PG_HOST}:{PG_PORT}'}/test?{query}"


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_sslmode_require_is_refused_with_one_line_as_psql_does(pg_schema: str, agent_state: Path) -> None:
    url = pg_url(pg_schema, auth=f"postgres:{SECRET}", sslmode="require")
    for args in (["list"], ["seed"], ["inspect"]):
        line = one_error_line(cli(url, agent_state, *args), 3)
        assert "server does not support SSL, but SSL was required" in line, line
        assert "postgres:***@" in line and SECRET not in line


@pytest.mark.skipif(not (SOCKET_DIR / f".s.PGSQL.{PG_PORT}").exists(), reason=f"no PostgreSQL socket in {SOCKET_DIR}")
def test_a_socket_directory_host_works(pg_schema: str, agent_state: Path) -> None:
    url = f"postgresql:///test?host={SOCKET_DIR}&schema={pg_schema}"
    assert cli(url, agent_state, "seed", "--vms", "1", "--disks", "1").returncode == 0
    listed = cli(url, agent_state, "inventory", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {i["id"] for i in json.loads(listed.stdout)} >= {"vm-0001", "disk-0001-1"}


def test_options_target_session_attrs_and_several_hosts_reach_libpq(pg_schema: str, agent_state: Path) -> None:
    refused = one_error_line(cli(pg_url(pg_schema, options="-c%20no_such_setting%3D1"), agent_state, "list"), 3)
    assert 'unrecognized configuration parameter "no_such_setting"' in refused, "options reached the server"
    standby = one_error_line(cli(pg_url(pg_schema, target_session_attrs="standby"), agent_state, "list"), 3)
    assert "server is not in hot standby mode" in standby, "target_session_attrs reached libpq"

    # The first host refuses connections; libpq goes on to the next, as it would for psql.
    url = pg_url(
        pg_schema,
        auth=f"postgres:{SECRET}",
        hosts=f"127.0.0.1:1,{PG_HOST}:{PG_PORT}",
        target_session_attrs="read-write",
        options="-c%20statement_timeout%3D5000",
    )
    session = [
        cli(url, agent_state, "seed", "--vms", "1", "--disks", "1", "--json"),
        cli(url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--json"),
        cli(url, agent_state, "list", "--verbose", "--json"),
        cli(url, agent_state, "inspect", "--json"),
    ]
    assert [p.returncode for p in session] == [0, 0, 0, 20], [p.stderr for p in session]
    store = json.loads(session[3].stdout)["store"]
    assert store == (
        f"postgresql://postgres:***@127.0.0.1:1,{PG_HOST}:{PG_PORT}/test"
        f"?options=-c%20statement_timeout%3D5000&schema={pg_schema}&target_session_attrs=read-write"
    )
    assert all(SECRET not in said(p) for p in session)


def test_libpq_urls_are_passed_on_byte_for_byte() -> None:
    """Our `schema` parameter is dropped; a host-less URL keeps its `//`, encoded spaces stay encoded."""
    assert _without_schema_param("postgresql:///test?host=/var/run/postgresql&schema=s") == (
        "postgresql:///test?host=/var/run/postgresql"
    )
    assert _without_schema_param("postgresql://u@h/db?options=-c%20a%3Db&schema=s&sslmode=require") == (
        "postgresql://u@h/db?options=-c%20a%3Db&sslmode=require"
    )
    config = parse_store_url("postgresql://u:p%40ss@h1,h2:5433/db?options=-c%20a%3Db&sslpassword=k3y&schema=s")
    assert config.conninfo["options"] == "-c a=b" and config.host == "h1,h2"
    assert "p@ss" not in config.redacted and "k3y" not in config.redacted
    assert config.scrub("failed for p@ss, p%40ss and k3y") == "failed for ***, *** and ***"


def test_store_sessions_keep_the_urls_options_beside_their_own(pg_schema: str, agent_state: Path) -> None:
    """The user's `options` reach the server on the event store's connections and the read models',
    beside each one's own: the event store runs without JIT and with generic plans for prepared
    statements (its queries are index lookups; planning each cost more than running it)."""
    url = pg_url(pg_schema, options="-c%20statement_timeout%3D5000")
    orch = Orchestrator.open(url, agent_state=agent_state, create=True)
    try:
        with orch.store.recorder.datastore.get_connection() as conn:
            names = ("statement_timeout", "jit", "plan_cache_mode")
            events = [next(iter(conn.execute(f"SHOW {name}").fetchone().values())) for name in names]
        tables = [
            row[0]
            for name in ("statement_timeout", "search_path")
            for row in orch.read_models.tables.query(f"SHOW {name}")
        ]
    finally:
        orch.close()
    assert events == ["5s", "off", "force_generic_plan"]
    assert tables == ["5s", f"{pg_schema},public"]
