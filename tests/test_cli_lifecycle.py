"""Issue 16: `retry`, `terminate`, `wait`, `submit --wait` and `show --follow`, as an operator uses them.

Real CLI subprocesses on both stores; the engine runs in process (conftest's
run_until_idle) or as a real `orchestrator run` process stopped with SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.model import CommandStatus, EndKind, EntityRef, EntityType
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import REPO, cli_env, run_until_idle
from tests.test_cli_helpers import cli, cli_json, engine_env, one_error_line


@pytest.fixture
def engine(store_url: str, agent_state: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """An `orchestrator run` process for the test's store, stopped with SIGTERM afterwards."""
    log = (tmp_path / "engine.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--store", store_url, "--agent-state", str(agent_state)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
        env=engine_env(),
        cwd=REPO,
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp_path / "engine.log").read_text()[-3000:]
    log.close()


# ---- terminate ------------------------------------------------------------------------------


def test_terminate_fails_the_command_at_once_and_releases_its_locks(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 3)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    assert cli_json(store_url, agent_state, "locks"), "the command holds its locks"

    done = cli_json(store_url, agent_state, "terminate", ident[:8], "--reason", "host sd-1 is gone for good")
    assert done["format"] == "orchestrator.terminate/1" and done["command_id"] == ident
    assert len(done["terminated_tasks"]) == 3 and done["to_stop"] == [], "none had reached the agent"
    assert set(done["released_locks"]) >= {"vm:vm-0001", "disk:disk-0001-1", "storage_domain:sd-1"}
    assert cli_json(store_url, agent_state, "locks") == [], "every lock it held is released"

    shown = cli_json(store_url, agent_state, "show", ident)
    assert (shown["status"], shown["terminated"], shown["flagged"]) == ("failed", True, True)
    assert shown["terminate_reason"] == "host sd-1 is gone for good"
    assert {t["end_kind"] for t in shown["tasks"]} == {EndKind.TERMINATED.value}
    assert all("terminated by the operator" in t["message"] for t in shown["tasks"])
    people = cli(store_url, agent_state, "show", ident)
    assert "by the operator: host sd-1 is gone for good" in people.stdout
    history = cli_json(store_url, agent_state, "inspect", "--command", ident)
    assert [e["event"] for e in history["events"]][-1] == "Terminated"
    assert "by the operator: host sd-1 is gone for good; 3 task(s) ended, 0 to stop" in history["events"][-1]["detail"]
    assert history["state"]["terminated"] is True

    listed = {r["command_id"]: r for r in cli_json(store_url, agent_state, "list", "--json")["commands"]}
    assert (listed[ident]["status"], listed[ident]["flagged"]) == ("failed", True), "the read model saw it end"
    assert ident not in {
        r["command_id"] for r in cli_json(store_url, agent_state, "list", "--in-flight", "--json")["commands"]
    }
    on_vm = cli_json(store_url, agent_state, "tasks", "--entity", "vm:vm-0001", "--json")
    assert (on_vm["tasks"], on_vm["has_running_tasks"]) == ([], False), "tasks no agent ever had leave the views"

    again = one_error_line(cli(store_url, agent_state, "terminate", ident, "--reason", "twice"), 5)
    assert "has already ended (failed); nothing to terminate" in again
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as fresh:
        vm = fresh.entity(EntityRef(EntityType.VM, "vm-0001"))
        assert vm is not None and vm.locks == {}
        assert fresh.command(ident).status is CommandStatus.FAILED


# ---- retry ----------------------------------------------------------------------------------


def test_retry_makes_a_linked_command_once_the_original_has_ended(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    in_flight = one_error_line(cli(store_url, agent_state, "retry", ident), 5)
    assert f"command {ident} is still accepted; retry it once it has ended" in in_flight

    agent.backend.set_faults(FaultConfig(fail_verbs=["delete_image"]))
    run_until_idle(orch, agent)
    assert orch.command(ident).status is CommandStatus.FAILED
    agent.backend.set_faults(FaultConfig())

    retried = cli_json(store_url, agent_state, "retry", ident[:10])
    assert retried["format"] == "orchestrator.retry/1" and retried["retry_of"] == ident
    new_id = retried["command_id"]
    assert (retried["flow"], retried["tasks"]) == ("RemoveVm", 2)
    original = cli_json(store_url, agent_state, "show", ident)
    assert original["retries"] == [new_id]
    assert cli_json(store_url, agent_state, "show", new_id)["retry_of"] == ident
    assert "RetriedAs" in [
        e["event"] for e in cli_json(store_url, agent_state, "inspect", "--command", ident)["events"]
    ]
    people = cli(store_url, agent_state, "show", ident, env=cli_env(COLUMNS="250"))
    assert any("retried as" in line and new_id in line for line in people.stdout.splitlines())

    run_until_idle(orch, agent)
    waited = cli_json(store_url, agent_state, "wait", new_id)
    assert waited["outcome"] == "succeeded" and waited["commands"][0]["status"] == "succeeded"


def test_a_terminated_command_may_be_retried_at_once(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    ident = str(orch.submit("HibernateVm", {"vm_id": "vm-0001"}).command_id)
    cli_json(store_url, agent_state, "terminate", ident, "--reason", "agent replaced")
    retried = cli_json(store_url, agent_state, "retry", ident)
    holders = {lock["command_id"] for lock in cli_json(store_url, agent_state, "locks")}
    assert holders == {retried["command_id"]}, "the retry took the locks the terminated command released"


# ---- wait and submit --wait -------------------------------------------------------------------


def test_wait_exit_codes_say_how_commands_ended(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(2, 1)
    ok = str(orch.submit("CreateSnapshot", {"vm_id": "vm-0001"}).command_id)
    pending = cli(store_url, agent_state, "wait", ok, "--timeout", "0.5", "--json")
    assert pending.returncode == 9, pending.stderr
    assert json.loads(pending.stdout)["outcome"] == "timeout" and pending.stderr == "", "quiet without a terminal"

    run_until_idle(orch, agent)
    agent.backend.set_faults(FaultConfig(fail_verbs=["delete_image"]))
    bad = str(orch.submit("RemoveVm", {"vm_id": "vm-0002"}).command_id)
    run_until_idle(orch, agent)
    assert cli(store_url, agent_state, "wait", ok).returncode == 0
    both = cli(store_url, agent_state, "wait", ok, bad[:8])
    assert both.returncode == 11, both.stderr
    assert f"{bad} RemoveVm failed" in both.stdout and f"{ok} CreateSnapshot succeeded" in both.stdout
    assert "no command" in one_error_line(
        cli(store_url, agent_state, "wait", "0" * 8 + "-0000-4000-8000-" + "0" * 12), 6
    )


def test_submit_wait_follows_the_command_to_its_end(
    store_url: str, orch: Orchestrator, agent_state: Path, engine: subprocess.Popen[str]
) -> None:
    orch.seed(2, 1)
    ok = cli(store_url, agent_state, "submit", "CreateSnapshot", "--params", '{"vm_id": "vm-0001"}', "--wait")
    assert ok.returncode == 0, ok.stderr
    ident = ok.stdout.splitlines()[0]
    assert f"{ident} CreateSnapshot succeeded" in ok.stdout

    control = SimulatedAgent.open(agent_state)
    control.backend.set_faults(FaultConfig(fail_verbs=["delete_image"]))
    control.close()
    failed = cli(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0002"}', "--wait", "--json")
    assert failed.returncode == 11, failed.stderr
    doc = json.loads(failed.stdout)
    assert doc["format"] == "orchestrator.submit-wait/1" and doc["wait"]["outcome"] == "failed"
    assert doc["submitted"]["flow"] == "RemoveVm" and doc["wait"]["commands"][0]["reason"]
    timeout = cli(store_url, agent_state, "submit", "HibernateVm", "--params", '{"vm_id": "vm-0002"}', "--timeout", "1")
    assert "--timeout goes with --wait" in one_error_line(timeout, 4)


def test_show_follow_prints_each_change_until_the_command_ends(
    store_url: str, orch: Orchestrator, agent_state: Path, engine: subprocess.Popen[str]
) -> None:
    orch.seed(1, 2)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    followed = cli(store_url, agent_state, "show", ident, "--follow", "--json", timeout=90)
    assert followed.returncode == 0, followed.stderr
    states = [json.loads(line) for line in followed.stdout.splitlines()]
    versions = [s["version"] for s in states]
    assert versions == sorted(set(versions)) and len(states) >= 2, "one document per change"
    assert states[-1]["status"] == "succeeded" and states[0]["format"] == "orchestrator.command/1"
    people = cli(store_url, agent_state, "show", ident, "--follow")
    assert people.returncode == 0 and people.stdout.count(f"command {ident}") == 1, "ended: shown once"
