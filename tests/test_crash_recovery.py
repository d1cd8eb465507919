"""Seed test case 2: a real engine process dies at every crash point of every flow.

The agent is a real agent server process, reached over HTTP (`orchestrator agent serve`).

Each case: seed, submit, start `orchestrator run` as a subprocess that exits at
the named crash point (`os._exit`, no cleanup), ask the read-only inspection
what recovery will decide, restart the engine until idle, then check that
recovery decided exactly that and that every invariant holds. A command whose
submission was cut short must end with failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.bootstrap import Orchestrator, inspect
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.inventory import Disk, Vm
from orchestrator.domain.model import EntityRef, EntityType
from tests.conftest import ONE_PER_CALL, ServedAgent, cli_env, engine_args, invariants_hold, run_cli

FLOWS: list[tuple[str, dict[str, Any]]] = [
    ("RemoveVm", {"vm_id": "vm-0001"}),
    ("HibernateVm", {"vm_id": "vm-0001"}),
    ("CreateTemplate", {"vm_id": "vm-0001", "name": "golden", "target_storage_domain_id": "sd-2"}),
    ("CreateSnapshot", {"vm_id": "vm-0001", "description": "s"}),
]
# (crash point, N, extra environment, expected outcome): every named point, and the submission
# points both batched and with one task per agent call (so a crash lands mid-command). A command
# whose submission was cut short must fail (G1); every other crash must not change the outcome.
CRASHES: list[tuple[str, int, dict[str, str], str]] = [
    ("after_accept", 1, {}, "succeeded"),
    ("after_agent_accept", 1, {}, "failed"),
    ("after_agent_accept", 2, ONE_PER_CALL, "failed"),
    ("after_agent_id_recorded", 1, {}, "succeeded"),
    ("after_agent_id_recorded", 1, ONE_PER_CALL, "failed"),
    ("after_task_end_recorded", 1, {}, "succeeded"),
    ("in_end_action", 1, {}, "succeeded"),
    ("after_end_action", 1, {}, "succeeded"),
    ("after_agent_clear", 1, {}, "succeeded"),
    ("in_recovery", 1, {}, "succeeded"),
]


def _crash_id(case: tuple[str, int, dict[str, str], str]) -> str:
    name, n, env, _ = case
    return f"{name}:{n}" + ("-one-per-call" if env else "")


def _engine_env(**extra: str) -> dict[str, str]:
    return cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="0.3", ORCHESTRATOR_POLL_INTERVAL="0.05", **extra)


def crash_and_recover(
    store_url: str, agent_state: Path, flow: str, params: dict[str, Any], crash: tuple[str, int, dict[str, str], str]
) -> tuple[str, dict[str, str]]:
    """Run the crash, then the restart; returns (command id, predicted verdicts by command)."""
    point, n, extra, _ = crash
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
    crash_env = _engine_env(ORCHESTRATOR_CRASH_AT=f"{point}:{n}", **extra)
    if point == "after_accept":
        died = run_cli(
            "--store",
            store_url,
            "--agent-state",
            str(agent_state),
            "submit",
            flow,
            "--params",
            _json(params),
            env=crash_env,
        )
        assert died.returncode == CRASH_EXIT_CODE, died.stderr
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            orch.read_models.runner.catch_up()
            rows = orch.read_models.queries.list_commands()
        assert len(rows) == 1, "the command was recorded before the crash"
        command_id = rows[0].command_id
    else:
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            command_id = str(orch.submit(flow, params).command_id)
        died = run_cli(*engine_args(store_url, agent_state, "--timeout", "60"), env=crash_env)
        assert died.returncode == CRASH_EXIT_CODE, f"engine did not crash at {point}:{n}: {died.stderr[-2000:]}"
    assert f"crash point {point}:{n} reached" in died.stderr

    report = inspect(store_url, agent_state)
    predicted = {c.command_id: c.verdict for c in report.commands}
    assert not any(c.provisional for c in report.commands)

    restarted = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=_engine_env())
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    return command_id, predicted


def _json(params: dict[str, Any]) -> str:
    import json

    return json.dumps(params)


@pytest.mark.parametrize("crash", CRASHES, ids=[_crash_id(c) for c in CRASHES])
@pytest.mark.parametrize(("flow", "params"), FLOWS, ids=[f for f, _ in FLOWS])
def test_crash_at_every_point_then_recover(
    store_url: str,
    agent_state: Path,
    http_agent: ServedAgent,
    flow: str,
    params: dict[str, Any],
    crash: tuple[str, int, dict[str, str], str],
) -> None:
    command_id, predicted = crash_and_recover(store_url, agent_state, flow, params, crash)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        # What the inspection predicted is what recovery recorded after the restart.
        if command_id in predicted:
            assert command.recoveries, "recovery recorded no verdict"
            assert command.recoveries[-1][1] == predicted[command_id], command.recoveries
        else:
            assert not command.in_flight
        assert command.status.value == crash[3], command.outcome_reason
        if crash[3] == "failed":
            assert "no agent task id" in command.outcome_reason
        invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_remove_vm_of_four_disks_crashed_after_two_submissions_fails(
    store_url: str, agent_state: Path, http_agent: ServedAgent
) -> None:
    """The seed's example: the VM must keep exactly the disks that still exist on the agent."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 4)
        command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"),
        env=_engine_env(ORCHESTRATOR_CRASH_AT="after_agent_id_recorded:2", **ONE_PER_CALL),
    )
    assert died.returncode == CRASH_EXIT_CODE, died.stderr
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        at_crash = orch.command(command_id)
        assert sum(1 for t in at_crash.tasks.values() if t.agent_task_id) == 2
    restarted = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=_engine_env())
    assert restarted.returncode == 0, restarted.stderr
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "failed"
        assert command.outcome_reason.startswith("2 of 4 expected tasks have no agent task id")
        vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
        assert isinstance(vm, Vm) and not vm.removed and vm.status == "down"
        agent = orch.simulator()  # the served agent, through its simulator extension
        try:
            images = {v.image_id for v in agent.storage().volumes}
        finally:
            agent.close()
        still_there = []
        for disk_id in (f"disk-0001-{k}" for k in range(1, 5)):
            disk = orch.entity(EntityRef(EntityType.DISK, disk_id))
            assert isinstance(disk, Disk)
            if disk.image_id in images:
                still_there.append(disk_id)
        assert len(still_there) == 2
        assert vm.disk_ids == still_there
        invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_crash_twice_the_second_time_during_recovery(
    store_url: str, agent_state: Path, http_agent: ServedAgent
) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
        command_id = str(orch.submit("CreateSnapshot", {"vm_id": "vm-0001"}).command_id)
    first = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"),
        env=_engine_env(ORCHESTRATOR_CRASH_AT="after_agent_accept:2", **ONE_PER_CALL),
    )
    assert first.returncode == CRASH_EXIT_CODE, first.stderr
    second = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"), env=_engine_env(ORCHESTRATOR_CRASH_AT="in_recovery:1")
    )
    assert second.returncode == CRASH_EXIT_CODE, second.stderr
    third = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=_engine_env())
    assert third.returncode == 0, third.stderr
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "failed"
        assert [v for _, v, _ in command.recoveries][-2:] == ["fail", "fail"]
        assert any(t.orphan for t in command.tasks.values()), "the orphan was found by its key"
        invariants_hold(orch, agent_state, expected_commands=[command.id])
