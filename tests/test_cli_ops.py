"""Issue 16: operating the orchestrator from a shell: the demo, services and signals, logs, broken agent
state, read-only copies of a store, each store's own agent state, and progress on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.cli.demo import _Engines
from orchestrator.store import STORE_ENV_VAR, parse_store_url
from orchestrator.testing import default_agent_state_path
from tests.conftest import PG_DSN, REPO, cli_env, pg_schema_url, wait_for
from tests.test_cli_helpers import cli, cli_json, engine_env, one_error_line

SECRET = "demo-Pa55w0rd"
ORCHESTRATOR = [sys.executable, "-m", "orchestrator"]


# ---- the demo -------------------------------------------------------------------------------


def _children_cmdlines(parent: int) -> list[list[str]]:
    """The argv of every live process whose parent is `parent` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                found.append((entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_the_demo_keeps_the_store_url_out_of_argv_and_output(store_url: str, backend: str) -> None:
    url = store_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    demo = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "demo", "--no-keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=cli_env(COLUMNS="250", **{STORE_ENV_VAR: url}),  # ORCHESTRATOR_STORE only: the demo honours it
    )
    seen: list[list[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(_children_cmdlines(demo.pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = demo.communicate(timeout=240)
    done.set()
    watcher.join()
    assert demo.returncode == 0, stderr[-3000:] + stdout[-3000:]
    engines = [argv for argv in seen if "run" in argv]
    assert engines, "the demo's engine processes were seen running"
    served = {argv[argv.index("--pool") + 1] for argv in seen if "serve" in argv and "--pool" in argv}
    assert served == {"east", "west"}, "an agent server process of its own for each of the two pools"
    assert "every invariant holds" in stdout and "one pool's agent down" in stdout
    for argv in seen:
        assert not any(url_part in arg for arg in argv for url_part in ("sqlite://", "postgresql://", SECRET)), argv
    assert SECRET not in stdout + stderr
    assert parse_store_url(url).redacted in " ".join(stdout.split()), "the demo used the ORCHESTRATOR_STORE store"
    if backend == "postgres":
        assert "postgres:***@" in stdout


def test_the_demo_engines_get_the_url_through_their_environment(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{SECRET}@db.example/prod"
    engines = _Engines(url, tmp_path / "agent.db")
    assert engines.env[STORE_ENV_VAR] == url
    assert not any(SECRET in arg or "postgresql" in arg for arg in engines.argv)


# ---- services: signals and logs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sig"), [(["run"], signal.SIGTERM), (["projections", "run"], signal.SIGINT)], ids=["run", "projections"]
)
def test_services_log_the_signal_that_stops_them(
    store_url: str, orch: Orchestrator, agent_state: Path, tmp_path: Path, command: list[str], sig: signal.Signals
) -> None:
    log = tmp_path / "service.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                *ORCHESTRATOR,
                *command,
                "--json",
                "--log-format",
                "json",
                "--store",
                store_url,
                "--agent-state",
                str(agent_state),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            env=engine_env(),
        )
        wait_for(lambda: '"event": "starting"' in log.read_text(), timeout=60, what="the service to start")
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), "one JSON object a line"
    stops = [r for r in records if r.get("event") == "signal"]
    assert len(stops) == 1 and stops[0]["signal"] == sig.name and stops[0]["message"].startswith(sig.name)
    assert json.loads(stdout)["signal"] == sig.name


def test_the_service_logs_each_command_it_accepts_cancels_terminates_or_retries(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(2, 1)

    def logged(*args: str) -> list[dict[str, str]]:
        proc = cli(store_url, agent_state, *args, "--verbose", "--log-format", "json")
        assert proc.returncode == 0, proc.stderr
        # Log records, one JSON object a line (retry also notes, for people, what it retried)
        return [json.loads(line) for line in proc.stderr.splitlines() if not line.startswith("(retries ")]

    accepted = logged("submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}')
    (event,) = [r for r in accepted if r.get("event") == "accepted"]
    ident = event["command_id"]
    assert event["flow"] == "RemoveVm" and event["logger"] == "orchestrator"
    assert [r["event"] for r in logged("cancel", ident) if "event" in r] == ["cancel_requested"]
    other = cli_json(store_url, agent_state, "submit", "HibernateVm", "--params", '{"vm_id": "vm-0002"}')["command_id"]
    terminated = [r for r in logged("terminate", other, "--reason", "agent lost") if "event" in r]
    assert [(r["event"], r["command_id"], r["reason"]) for r in terminated] == [("terminated", other, "agent lost")]
    retried = [r for r in logged("retry", other) if "event" in r]
    assert [r["event"] for r in retried] == ["accepted", "retried"] and retried[1]["command_id"] == other


# ---- a corrupt faults row in the simulated agent's state ----------------------------------------


def test_a_corrupt_faults_row_is_one_clear_line(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
    with sqlite3.connect(agent_state) as conn:
        conn.execute("UPDATE faults SET config = '{{'")
    shown = one_error_line(cli(store_url, agent_state, "agent", "show"), 7)
    assert "its faults row is not a fault configuration" in shown and "agent faults --clear" in shown
    engine = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "3", env=engine_env())
    assert engine.returncode == 7 and "Traceback" not in engine.stderr, engine.stderr[-3000:]
    assert engine.stderr.strip().splitlines()[-1].startswith("error: gave up after 3s")
    assert "faults row is not a fault configuration" in engine.stderr
    cleared = cli(store_url, agent_state, "agent", "faults", "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert cli(store_url, agent_state, "run", "--until-idle", "--timeout", "60", env=engine_env()).returncode == 0


# ---- read-only copies of a store (SQLite: a backup, a read-only mount) ----------------------------


def as_another_user(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user who may read but not write the copy (root ignores permissions: run as nobody)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        cwd="/",
        env=cli_env(COLUMNS="250"),
        timeout=120,
        check=False,
    )


def closed_to_others(path: Path) -> Path | None:
    """The first directory on the way to `path` that users other than its owner may not enter."""
    for folder in reversed(path.resolve().parents):
        if not folder.stat().st_mode & 0o001:
            return folder
    return None


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    """A directory another user can read (pytest's tmp_path is private to root)."""
    if os.geteuid() == 0:
        closed = closed_to_others(REPO / "orchestrator")  # the package the CLI imports
        if closed is not None:
            pytest.skip(
                f"{closed} is closed to other users (mode 700, as `mktemp -d` makes it): nobody cannot run the CLI"
            )
    made = Path(tempfile.mkdtemp(prefix="orchestrator-backup-", dir="/tmp"))
    made.chmod(0o755)
    yield made
    for path in made.iterdir():
        path.chmod(0o600)
        path.unlink()
    made.chmod(0o700)
    made.rmdir()


def _store_with_a_command(tmp_path: Path, *, caught_up: bool = True) -> tuple[Path, str]:
    source = tmp_path / "live.db"
    with Orchestrator.open(f"sqlite:///{source}", agent_state=tmp_path / "agent.db", create=True) as orch:
        orch.seed(1, 1)
        ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
        if caught_up:  # as a running engine keeps them
            orch.read_models.catch_up()
    return source, ident


def _read_only_copy(source: Path, into: Path, *, with_wal_files: bool) -> Path:
    copy = into / "store.db"
    if with_wal_files:  # copied while a process had it open: the -wal and -shm files come along
        holder = sqlite3.connect(source)
        holder.execute("SELECT count(*) FROM stored_events").fetchone()
        for suffix in ("", "-wal", "-shm"):
            copy.with_name(copy.name + suffix).write_bytes(source.with_name(source.name + suffix).read_bytes())
        holder.close()
    else:
        copy.write_bytes(source.read_bytes())
    for path in into.iterdir():
        path.chmod(0o444)
    into.chmod(0o555)
    return copy


def test_a_read_only_copy_opens_for_reading(tmp_path: Path, backup_dir: Path) -> None:
    source, ident = _store_with_a_command(tmp_path)
    copy = _read_only_copy(source, backup_dir, with_wal_files=True)
    url = f"sqlite:///{copy}"
    before = {p.name: p.read_bytes() for p in backup_dir.iterdir()}
    listed = as_another_user("list", "--json", "--store", url)
    assert listed.returncode == 0, listed.stderr
    assert [c["command_id"] for c in json.loads(listed.stdout)["commands"]] == [ident]
    for args, code in ((["show", ident], 0), (["inspect", "--command", ident], 0), (["inspect", "--no-agent"], 20)):
        proc = as_another_user(*args, "--store", url)
        assert proc.returncode == code and ident in proc.stdout, (args, proc.stderr)
    refused = one_error_line(
        as_another_user("submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}', "--store", url), 3
    )
    assert "is read-only for this user" in refused and "reading commands (list, show, inspect) work" in refused
    assert {p.name: p.read_bytes() for p in backup_dir.iterdir()} == before, "nothing was written to the copy"


def test_a_read_only_copy_says_how_far_behind_its_read_models_are(tmp_path: Path, backup_dir: Path) -> None:
    source, ident = _store_with_a_command(tmp_path, caught_up=False)
    url = f"sqlite:///{_read_only_copy(source, backup_dir, with_wal_files=True)}"
    listed = as_another_user("list", "--json", "--store", url)
    assert listed.returncode == 0, listed.stderr
    freshness = json.loads(listed.stdout)["freshness"]
    assert freshness["lag"] > 0 and freshness["position"] < freshness["head"], "not caught up: it cannot write"
    people = as_another_user("list", "--store", url)
    assert "read-only store: its read models were not caught up" in people.stdout
    assert as_another_user("show", ident, "--store", url).returncode == 0, "a command's own history is complete"


def test_an_unreadable_store_is_blamed_on_permissions_not_on_the_file(tmp_path: Path, backup_dir: Path) -> None:
    source, _ = _store_with_a_command(tmp_path)
    copy = backup_dir / "store.db"
    copy.write_bytes(source.read_bytes())
    copy.chmod(0o000)
    line = one_error_line(as_another_user("list", "--store", f"sqlite:///{copy}"), 3)
    assert "permission denied" in line and "not a readable SQLite database" not in line, line


def test_a_cold_read_only_copy_says_why_it_cannot_be_read_in_place(tmp_path: Path, backup_dir: Path) -> None:
    source, ident = _store_with_a_command(tmp_path)
    copy = _read_only_copy(source, backup_dir, with_wal_files=False)
    proc = as_another_user("show", ident, "--store", f"sqlite:///{copy}")
    if proc.returncode == 0:  # the store layer opens such copies immutable (sqlite_read_only_uri)
        assert ident in proc.stdout
        return
    line = one_error_line(proc, 3)
    assert "not writable for this user" in line and "not a readable SQLite database" not in line, line


def test_a_cold_read_only_copy_opens(tmp_path: Path, backup_dir: Path) -> None:
    source, ident = _store_with_a_command(tmp_path)
    copy = _read_only_copy(source, backup_dir, with_wal_files=False)
    for args in (["list"], ["show", ident], ["inspect", "--command", ident]):
        proc = as_another_user(*args, "--store", f"sqlite:///{copy}")
        assert proc.returncode == 0 and ident in proc.stdout, (args, proc.stderr)


# ---- each store's own simulated agent state -------------------------------------------------------


def test_postgres_stores_run_from_one_folder_each_get_their_own_agent_state(pg_schema: str, tmp_path: Path) -> None:
    urls = [pg_schema_url(pg_schema), pg_schema_url(pg_schema + "_b")]
    try:
        for n, url in enumerate(urls, start=1):
            seeded = subprocess.run(
                [sys.executable, "-m", "orchestrator", "seed", "--vms", str(n), "--disks", "1", "--store", url],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=cli_env(),
                check=False,
            )
            assert seeded.returncode == 0, seeded.stderr
        states = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".agent")
        expected = sorted(default_agent_state_path(parse_store_url(u)).name for u in urls)
        assert states == expected and len(set(states)) == 2, states
        assert all(name.startswith("orchestrator-pg-") for name in states)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {pg_schema}_b CASCADE".encode())


def test_the_default_agent_state_is_the_stores_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_AGENT_STATE", raising=False)
    sqlite = parse_store_url(f"sqlite:///{tmp_path / 'a.db'}")
    assert default_agent_state_path(sqlite) == tmp_path / "a.db.agent"
    one = default_agent_state_path(parse_store_url("postgresql://u:pw1@h/db?schema=one"))
    same = default_agent_state_path(parse_store_url("postgresql://u:pw2@h/db?schema=one"))
    two = default_agent_state_path(parse_store_url("postgresql://u@h/db?schema=two"))
    assert one == same, "the password is not part of what names a store"
    assert one != two and one.name.startswith("orchestrator-pg-one-") and one.parent == Path(".")
    monkeypatch.setenv("ORCHESTRATOR_AGENT_STATE", str(tmp_path / "x.agent"))
    assert default_agent_state_path(sqlite) == tmp_path / "x.agent"


# ---- progress on a terminal ------------------------------------------------------------------------


def _on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; its exit code, stdout and what the terminal showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        cwd=REPO,
        env=cli_env(TERM="xterm", COLUMNS="120"),
    )
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    stdout = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, stdout, shown.decode(errors="replace")


def test_seed_shows_progress_on_a_terminal_only(store_url: str, agent_state: Path) -> None:
    code, stdout, shown = _on_a_terminal(
        "seed", "--vms", "300", "--disks", "3", "--store", store_url, "--agent-state", str(agent_state)
    )
    assert code == 0, shown[-2000:]
    assert "1200/1200" in shown and "seeded" in shown, shown[-2000:]
    assert "vm-0300" in stdout
    piped = cli(store_url, agent_state, "seed", "--vms", "2", "--disks", "1")
    assert piped.returncode == 0 and piped.stderr == "", "no progress drawn on a pipe"
