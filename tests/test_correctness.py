"""Issue 11: races and crashes that once changed outcomes, each made deterministic, on both stores.

A cancel racing a create batch; an orphan whose recovery died before stopping it;
a cancel that comes too late; a zombie's reason across a restart; two rebuilds at
once and a rebuild killed midway; racing seeds; a fresh PostgreSQL store opened
by four processes at once; what `inspect` reads; an end action raising in a batch;
a leftover task stopped by recovery. Every case ends with every invariant,
including "no spurious failure".
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator.agent.port import TaskSpec
from orchestrator.bootstrap import Orchestrator
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Vm
from orchestrator.domain.model import EntityRef, EntityType
from orchestrator.flows import FLOWS
from orchestrator.testing import FaultConfig, SimulatedAgent, SimulatedAgentBackend, expected_storage
from tests.conftest import (
    ONE_PER_CALL,
    REPO,
    cli_env,
    engine_args,
    events_table,
    fast_settings,
    invariants_hold,
    pg_schema_url,
    run_cli,
    run_together,
    run_until_idle,
    start_together,
    store_sql,
    wait_for,
)

Y_ID = "00000000-0000-4000-8000-000000000001"
X_ID = "00000000-0000-4000-8000-000000000002"


def env_with(**extra: str) -> dict[str, str]:
    return cli_env(**{"ORCHESTRATOR_POLL_INTERVAL": "0.1", **extra})


def cli(
    store_url: str, agent_state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli("--store", store_url, "--agent-state", str(agent_state), *args, env=env or env_with())


def journal_of(agent_state: Path, command_id: str) -> list[dict[str, Any]]:
    agent = SimulatedAgent.open(agent_state)
    try:
        return [r for r in agent.backend.journal() if r["key"].startswith(command_id)]
    finally:
        agent.close()


def set_faults(agent_state: Path, **faults: Any) -> None:
    agent = SimulatedAgent.open(agent_state)
    try:
        agent.backend.set_faults(FaultConfig(**faults))
    finally:
        agent.close()


def engine(store_url: str, agent_state: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state, *args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def until_idle(store_url: str, agent_state: Path, **extra: str) -> None:
    done = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "90", env=env_with(**extra))
    assert done.returncode == 0, done.stderr[-3000:]


# ---- 1. a cancel racing a create batch ----------------------------------------------------------


def test_cancelling_one_command_of_a_create_batch_never_fails_the_other(store_url: str, agent_state: Path) -> None:
    """The batch [Y3, X1] is being created when X is cancelled: X fails, cancelled; Y succeeds."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
        orch.seed(1, 1)
        orch.submit("RemoveVm", {"vm_id": "vm-0001"}, UUID(Y_ID))
        orch.submit("RemoveVm", {"vm_id": "vm-0002"}, UUID(X_ID))
    set_faults(agent_state, create_answer_latency=3.0)  # the agent makes the tasks, then answers slowly
    env = env_with(ORCHESTRATOR_SUBMIT_BATCH="2", ORCHESTRATOR_AGENT_TASK_SECONDS="1", ORCHESTRATOR_POLL_INTERVAL="0.3")
    proc = engine(store_url, agent_state, "--until-idle", "--timeout", "90", env=env)
    try:
        wait_for(lambda: bool(journal_of(agent_state, X_ID)), timeout=60, what="the agent to create X's task")
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            x_now = orch.command(X_ID)
            assert not any(t.agent_task_id for t in x_now.tasks.values()), "the cancel lands before the answer"
            assert orch.request_cancel(X_ID, "changed my mind").requested
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        y, x = orch.command(Y_ID), orch.command(X_ID)
        assert y.status.value == "succeeded", y.outcome_reason
        assert y.cancel_reason is None
        assert [v for _, v, _ in y.recoveries] == ["start"], "only the engine's start decided anything"
        assert all(t.status.value == "succeeded" for t in y.tasks.values())
        assert x.status.value == "failed" and x.outcome_reason == "cancelled: changed my mind"
        assert [v for _, v, _ in x.recoveries] == ["start"]
        vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
        assert vm is not None and vm.removed, "vm-0001 and its three disks are gone, as asked"
        invariants_hold(orch, agent_state, expected_commands=[y.id, x.id])


# ---- 2. an orphan adopted by a recovery that dies is still stopped ---------------------------------


@pytest.mark.parametrize(
    ("flow", "params"),
    [("RemoveVm", {"vm_id": "vm-0001"}), ("CreateTemplate", {"vm_id": "vm-0001", "name": "t"})],
    ids=["RemoveVm", "CreateTemplate"],
)
def test_an_orphan_adopted_by_a_recovery_that_dies_is_stopped_by_the_next(
    store_url: str, agent_state: Path, flow: str, params: dict[str, str]
) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 4)
        command_id = str(orch.submit(flow, params).command_id)
    slow = {"ORCHESTRATOR_AGENT_TASK_SECONDS": "15", **ONE_PER_CALL}
    died = cli(store_url, agent_state, "run", env=env_with(ORCHESTRATOR_CRASH_AT="after_agent_accept:2", **slow))
    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    for _ in range(3):
        died = cli(store_url, agent_state, "run", env=env_with(ORCHESTRATOR_CRASH_AT="in_recovery", **slow))
        assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    inspected = cli(store_url, agent_state, "inspect", "--json")
    (verdict,) = json.loads(inspected.stdout)["commands"]
    assert verdict["verdict"] == "fail" and len(verdict["to_stop"]) == 1, verdict
    until_idle(store_url, agent_state, **slow)
    first, orphan = journal_of(agent_state, command_id)  # two tasks were ever created
    assert orphan["state"] == "aborted" and not orphan["effect_applied"], "the orphan was stopped before it did work"
    assert first["state"] == "finished" and first["effect_applied"]
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "failed"
        adopted = [t for t in command.tasks.values() if t.orphan]
        assert len(adopted) == 1 and adopted[0].end_kind is not None and adopted[0].end_kind.value == "stopped"
        if flow == "RemoveVm":
            vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
            assert isinstance(vm, Vm) and len(vm.disk_ids) == 3, "one disk removed, as the verdict said"
        invariants_hold(orch, agent_state, expected_commands=[command.id])


# ---- 3. a cancel that comes too late --------------------------------------------------------------


def test_a_cancel_after_the_end_action_began_is_refused_and_changes_nothing(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 2)
        command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    died = cli(store_url, agent_state, "run", env=env_with(ORCHESTRATOR_CRASH_AT="in_end_action"))
    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    before = store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}")
    late = cli(store_url, agent_state, "cancel", command_id)
    assert late.returncode == 5, late.stderr
    assert late.stderr.strip() == (
        f"error: too late to cancel command {command_id}: its end action has begun; it will end as succeeded"
    )
    assert store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}") == before, "nothing recorded"
    until_idle(store_url, agent_state)
    ended = cli(store_url, agent_state, "cancel", command_id)
    assert ended.returncode == 5 and "has already ended (succeeded)" in ended.stderr
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "succeeded" and command.cancel_reason is None
        invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_a_second_cancel_says_it_was_already_requested(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 1)
        command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    first = cli(store_url, agent_state, "cancel", command_id, "--reason", "wrong vm")
    assert (first.returncode, first.stdout.strip()) == (0, f"cancel requested for {command_id}")
    second = cli(store_url, agent_state, "cancel", command_id, "--reason", "another reason")
    assert second.returncode == 0
    assert second.stdout.strip() == f"cancel was already requested for {command_id} (reason: wrong vm)"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        events = orch.store.events_of(UUID(command_id))
        assert sum(isinstance(e, RootCommand.CancelRequested) for e in events) == 1


# ---- 4. a zombie's reason survives a restart ------------------------------------------------------


def test_a_zombie_stopped_just_before_a_crash_still_ends_as_a_zombie(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 1)
        command_id = str(orch.submit("HibernateVm", {"vm_id": "vm-0001"}).command_id)
    env = env_with(
        ORCHESTRATOR_ZOMBIE_SECONDS="2", ORCHESTRATOR_AGENT_TASK_SECONDS="30", ORCHESTRATOR_POLL_INTERVAL="1"
    )
    proc = engine(store_url, agent_state, env=env)
    try:
        wait_for(
            lambda: any(r["state"] == "aborted" for r in journal_of(agent_state, command_id)),
            timeout=60,
            interval=0.005,
            what="the engine to stop a zombie",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    until_idle(store_url, agent_state, ORCHESTRATOR_ZOMBIE_SECONDS="2", ORCHESTRATOR_AGENT_TASK_SECONDS="30")
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.status.value == "failed"
        kinds = {t.end_kind.value for t in command.tasks.values() if t.end_kind is not None}
        assert kinds == {"zombie"}, kinds
        invariants_hold(orch, agent_state, expected_commands=[command.id])


# ---- 5. rebuilds at once, and a rebuild killed midway ----------------------------------------------


def _store_with_history(store_url: str, agent_state: Path, *, accepted: int = 300, ended: int = 60) -> list[str]:
    """About 12,000 events: some commands run to their end, `accepted` more waiting for an engine."""
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(accepted + ended, 8)
        done = orch.submit_many([("RemoveVm", {"vm_id": f"vm-{n:04d}"}) for n in range(1, ended + 1)])
        agent = SimulatedAgent.open(agent_state, task_seconds=0)
        try:
            run_until_idle(orch, agent, timeout=120)
        finally:
            agent.close()
        waiting = orch.submit_many(
            [("RemoveVm", {"vm_id": f"vm-{n:04d}"}) for n in range(ended + 1, accepted + ended + 1)]
        )
        assert all(not isinstance(r, Exception) for r in [*done, *waiting])
        return [str(r.command_id) for r in waiting if not isinstance(r, Exception)]


def _rebuild_tables(store_url: str) -> list[str]:
    if store_url.startswith("sqlite"):
        rows = store_sql(store_url, "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%rebuild%'")
    else:
        rows = store_sql(
            store_url, "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '%rebuild%'"
        )
    return [str(r[0]) for r in rows]


def _everything_ends(store_url: str, agent_state: Path, waiting: list[str]) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        assert sorted(str(i) for i in orch.store.in_flight_ids()) == sorted(waiting), "recovery will find them all"
    until_idle(store_url, agent_state, ORCHESTRATOR_AGENT_TASK_SECONDS="0")
    inspected = cli(store_url, agent_state, "inspect", "--json")
    assert inspected.returncode == 0, inspected.stdout[-2000:]
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        assert all(orch.command(c).status.value == "succeeded" for c in waiting)
        invariants_hold(orch, agent_state)


def test_rebuilds_and_verifications_at_once_exclude_each_other(
    store_url: str, agent_state: Path, tmp_path: Path
) -> None:
    waiting = _store_with_history(store_url, agent_state)
    base = ["--store", store_url, "--agent-state", str(agent_state), "projections", "rebuild"]
    rounds = [
        ([[*base, "commands"], [*base, "commands"]], [0.0, 0.05]),
        ([[*base, "commands"], [*base, "commands"]], [0.0, 0.3]),
        ([[*base], [*base, "--verify"]], [0.0, 0.1]),
        ([[*base, "--verify"], [*base, "--verify"], [*base, "commands"]], [0.0, 0.0, 0.05]),
    ]
    for commands, delays in rounds:
        results = run_together(commands, tmp_path, delays=delays)
        for r in results:
            assert r.returncode in (0, 13), f"{r.args}: exit {r.returncode}: {r.stderr[-2000:]}"
            assert "Traceback" not in r.stderr
            if r.returncode == 13:
                assert r.stderr.strip().splitlines()[-1] == (
                    "error: another rebuild or verification of the read models is running on this store; "
                    "wait for it to finish, then try again"
                )
        assert any(r.returncode == 0 for r in results)
        verify = cli(store_url, agent_state, "projections", "rebuild", "--verify")
        assert verify.returncode == 0, verify.stdout[-3000:]
        status = json.loads(cli(store_url, agent_state, "projections", "status", "--json").stdout)
        assert all(s["lag"] == 0 for s in status)
    assert _rebuild_tables(store_url) == [], "no shadow table is left behind"
    _everything_ends(store_url, agent_state, waiting)


def test_a_rebuild_killed_midway_leaves_the_live_views_as_they_were(
    store_url: str, agent_state: Path, tmp_path: Path
) -> None:
    waiting = _store_with_history(store_url, agent_state)
    args = ["--store", store_url, "--agent-state", str(agent_state), "projections", "rebuild"]
    for delay in (0.1, 0.4, 0.8):
        (proc,) = start_together([args], tmp_path)
        time.sleep(delay)  # the kill lands at a different moment each round; any moment must be safe
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        verify = cli(store_url, agent_state, "projections", "rebuild", "--verify")
        assert verify.returncode == 0, verify.stdout[-3000:]
    rebuilt = cli(store_url, agent_state, "projections", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert _rebuild_tables(store_url) == []
    _everything_ends(store_url, agent_state, waiting)


# ---- 6 and 7. racing seeds, and a fresh PostgreSQL store opened at once ------------------------------


def _truth_matches(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        agent = SimulatedAgent.open(agent_state)
        try:
            actual = agent.storage().triples()
        finally:
            agent.close()
        expected = expected_storage(orch.inventory())
    assert actual == expected, (
        f"agent only: {sorted(actual - expected)[:5]}; inventory only: {sorted(expected - actual)[:5]}"
    )


def _seeds_raced(results: list[subprocess.CompletedProcess[str]]) -> None:
    for r in results:
        assert r.returncode in (0, 5), f"exit {r.returncode}: {r.stderr[-2000:]}"
        if r.returncode == 5:
            (line,) = r.stderr.strip().splitlines()
            assert line.startswith("error: another seed ran at the same time"), line
    assert any(r.returncode == 0 for r in results)


def test_a_seed_that_loses_a_race_leaves_nothing_behind(store_url: str, agent_state: Path, tmp_path: Path) -> None:
    base = ["--store", store_url, "--agent-state", str(agent_state), "seed"]
    with Orchestrator.open(store_url, agent_state=agent_state, create=True):
        pass
    for _ in range(5):
        _seeds_raced(
            run_together([[*base, "--vms", "2", "--disks", "1"], [*base, "--vms", "2", "--disks", "3"]], tmp_path)
        )
        _truth_matches(store_url, agent_state)
    for _ in range(4):
        _seeds_raced(run_together([[*base, "--vms", "2", "--disks", str(k)] for k in (1, 2, 3, 4)], tmp_path))
        _truth_matches(store_url, agent_state)


@pytest.mark.postgres
def test_four_processes_opening_a_fresh_postgres_store_at_once_all_get_in(
    pg_schema: str, agent_state: Path, tmp_path: Path
) -> None:
    for round_ in range(3):
        url = pg_schema_url(f"{pg_schema}_{round_}")
        state = tmp_path / f"agent-{round_}.db"
        try:
            base = ["--store", url, "--agent-state", str(state), "seed", "--vms", "1", "--disks", "1"]
            _seeds_raced(run_together([base] * 4, tmp_path))
            _truth_matches(url, state)
        finally:
            store_sql(pg_schema_url("public"), f"DROP SCHEMA IF EXISTS {pg_schema}_{round_} CASCADE")


# ---- 8. smaller -----------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for part in (path, path.with_name(path.name + "-wal")):
        if part.exists():
            h.update(part.read_bytes())
    return h.hexdigest()


def test_inspect_reads_only_what_is_in_flight_and_never_writes_the_agent(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(3, 2)
        ended = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
        agent = SimulatedAgent.open(agent_state, task_seconds=0)
        try:
            run_until_idle(orch, agent)
        finally:
            agent.close()
        running = str(orch.submit("RemoveVm", {"vm_id": "vm-0002"}).command_id)
    died = cli(
        store_url,
        agent_state,
        "run",
        env=env_with(ORCHESTRATOR_CRASH_AT="after_agent_id_recorded", ORCHESTRATOR_AGENT_TASK_SECONDS="0.2"),
    )
    assert died.returncode == CRASH_EXIT_CODE
    # An ended command whose history cannot be read: the inspection never needs it.
    store_sql(
        store_url,
        f"UPDATE {events_table(store_url)} SET state = ? WHERE originator_id = ?",
        (b"not json", UUID(ended).hex if store_url.startswith("sqlite") else UUID(ended)),
    )
    wait_for(  # past the tasks' due time: asked through its calls, the agent would end them now (and write)
        lambda: all(s["state"] != "running" for s in SimulatedAgentBackend.peek_statuses(agent_state)),
        timeout=10,
        what="the crashed engine's tasks to be due",
    )
    before = _digest(agent_state)
    code_report = cli(store_url, agent_state, "inspect", "--json")
    assert code_report.returncode == 20, code_report.stderr[-2000:]
    report = json.loads(code_report.stdout)
    (mine,) = report["commands"]
    assert mine["command_id"] == running and len(mine["finished_while_down"]) == 2
    assert _digest(agent_state) == before, "the agent's state file was not written"


def test_an_end_action_raising_in_a_batch_keeps_what_the_others_reverted(
    orch: Orchestrator, agent_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(2, 1)
    agent = SimulatedAgent.open(agent_state, task_seconds=0.1)
    try:
        agent.backend.set_faults(FaultConfig(fail_ordinals=[2, 4]))  # each hibernation's metadata volume fails
        first = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
        second = orch.submit("HibernateVm", {"vm_id": "vm-0002"})
        original = FLOWS["HibernateVm"].end_with_failure
        raised: list[str] = []

        def once_for_the_second(command: RootCommand, inventory: Any) -> None:
            if command.id == second.command_id and not raised:
                raised.append("x")
                raise RuntimeError("inventory hiccup")
            original(command, inventory)

        monkeypatch.setattr(FLOWS["HibernateVm"], "end_with_failure", once_for_the_second)
        run_until_idle(orch, agent, settings=fast_settings(end_action_backoff=0.01))
    finally:
        agent.close()
    assert raised == ["x"]
    for result in (first, second):
        command = orch.command(result.command_id)
        assert command.status.value == "failed"
        assert len(command.reverted) == 1, f"the memory volume created by {command.summary} is reported reverted"
    invariants_hold(orch, agent_state, expected_commands=[first.command_id, second.command_id])


def test_a_leftover_task_stopped_by_recovery_is_cleared_before_the_engine_is_idle(
    store_url: str, agent_state: Path
) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 2)
        command_id = orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id
        orch.request_cancel(command_id, "before it started")
    until_idle(store_url, agent_state)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(command_id)
        assert command.ended and not command.in_flight
        task = next(iter(command.tasks.values()))
        assert task.agent_task_id is None, "it never reached the agent"
    agent = SimulatedAgent.open(agent_state, task_seconds=60)
    try:  # a create call for it arrives late on the agent (a slow network): a task of ours nobody expects
        agent.create_tasks([TaskSpec(key=command.task_key(task.task_id), verb=task.verb, args=task.args)])
    finally:
        agent.close()
    until_idle(store_url, agent_state)
    (row,) = journal_of(agent_state, str(command_id))
    assert row["state"] == "aborted" and row["cleared_at"] is not None, row
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state, expected_commands=[command_id])
