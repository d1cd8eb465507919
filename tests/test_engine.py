"""The task manager's behaviour, on SQLite and PostgreSQL: G3, poll cost, faults, retries."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import EntityRef, EntityType, entity_aggregate_id
from orchestrator.flows import FLOWS
from orchestrator.service import SubmitResult
from orchestrator.store import event_store
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import REPO, cli_env, engine_args, fast_settings, invariants_hold, run_cli, run_until_idle, wait_for


def _due(agent: SimulatedAgent) -> bool:
    """Every task the agent holds is past its completion time (the agent ends them when next asked)."""
    rows = [r for r in agent.backend.journal() if r["cleared_at"] is None]
    return bool(rows) and all(r["state"] != "running" for r in rows)


def test_two_read_only_commands_on_one_entity_end_independently(orch: Orchestrator, agent: SimulatedAgent) -> None:
    """G3: the end action is decided per root command, not per (type, entity)."""
    orch.seed(1, 2)
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    agent.backend.task_seconds = 30.0  # the first template's copies are slow...
    slow = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "slow"})
    engine.cycle()
    agent.backend.task_seconds = 0.3  # ...the second one's, submitted later, are quick
    quick = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "quick"})
    engine.cycle()
    both = [orch.command(slow.command_id), orch.command(quick.command_id)]
    assert all(t.agent_task_id for c in both for t in c.tasks.values()), "both are submitted and polled"

    wait_for(lambda: engine.cycle() is not None and orch.command(quick.command_id).ended, timeout=20)
    assert orch.command(quick.command_id).status.value == "succeeded"
    slow_now = orch.command(slow.command_id)
    assert not slow_now.ended and all(t.status.value == "running" for t in slow_now.tasks.values())


def test_poll_cycle_costs(orch: Orchestrator, agent_state: Path) -> None:
    """Nothing changed: one agent call, no store write. N changes: one transaction for all of them."""
    orch.seed(5, 2)
    agent = SimulatedAgent.open(agent_state, task_seconds=0.4)
    try:
        engine = build_engine(orch, agent, fast_settings())
        engine.recover()
        for n in range(1, 6):
            orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"})
        first = engine.cycle()
        assert first.submitted == 10 and first.agent_calls == 2  # one create call for all ten tasks, one poll
        head = orch.store.app.recorder.max_notification_id()

        quiet = engine.cycle()
        assert (quiet.agent_calls, quiet.store_transactions, quiet.events) == (1, 0, 0)
        assert orch.store.app.recorder.max_notification_id() == head

        wait_for(lambda: _due(agent), timeout=10, what="tasks to be done on the agent")
        busy = engine.cycle()
        assert busy.tasks_ended == 10 and busy.commands_ended == 5 and busy.cleared == 10
        # one status call and one clear call; one transaction for all ten task ends (with the five
        # end-action decisions), one for the five end actions, one for the clearing
        assert busy.agent_calls == 2
        assert busy.store_transactions == 3
    finally:
        agent.close()


def test_a_vanished_task_is_a_failure_never_a_success(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    agent.backend.set_faults(FaultConfig(vanish_share=1.0))
    result = orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
    run_until_idle(orch, agent)
    command = orch.command(result.command_id)
    assert command.status.value == "failed"
    assert all(t.end_kind is not None and t.end_kind.value == "vanished" for t in command.tasks.values())
    invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_a_zombie_task_is_stopped_and_fails_its_command(orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    agent = SimulatedAgent.open(agent_state, task_seconds=60)
    try:
        result = orch.submit("HibernateVm", {"vm_id": "vm-0001"})
        run_until_idle(orch, agent, settings=fast_settings(zombie_seconds=0.3))
        command = orch.command(result.command_id)
        assert command.status.value == "failed"
        assert {t.end_kind.value for t in command.tasks.values() if t.end_kind} == {"zombie"}
        assert all(r["state"] == "aborted" for r in agent.backend.journal())
    finally:
        agent.close()
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])


def test_a_failing_end_action_is_retried_then_the_command_fails_flagged(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(1, 2)
    calls: list[str] = []

    def broken(command: RootCommand, inventory: Any) -> None:
        calls.append("success")
        raise RuntimeError("inventory service exploded")

    monkeypatch.setattr(FLOWS["CreateSnapshot"], "end_successfully", broken)
    result = orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
    run_until_idle(orch, agent, settings=fast_settings(end_action_attempts=3, end_action_backoff=0.01))
    command = orch.command(result.command_id)
    assert calls == ["success"] * 3, "bounded: three attempts, not forever"
    assert command.status.value == "failed" and command.flagged
    assert "inventory service exploded" in command.outcome_reason
    assert command.reverted, "the fallback end_with_failure reverted the new volumes"
    invariants_hold(orch, agent_state, expected_commands=[command.id])


def test_when_both_end_actions_fail_the_locks_are_still_released(
    orch: Orchestrator, agent: SimulatedAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(1, 1)

    def broken(command: RootCommand, inventory: Any) -> None:
        raise RuntimeError("no")

    monkeypatch.setattr(FLOWS["RemoveVm"], "end_successfully", broken)
    monkeypatch.setattr(FLOWS["RemoveVm"], "end_with_failure", broken)
    result = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    run_until_idle(orch, agent, settings=fast_settings(end_action_attempts=2, end_action_backoff=0.01))
    command = orch.command(result.command_id)
    assert command.status.value == "failed" and command.flagged
    vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
    assert vm is not None and vm.locks == {}


def test_cancel_stops_running_tasks_and_fails_the_command(
    orch: Orchestrator, agent_state: Path, store_url: str
) -> None:
    orch.seed(1, 3)
    agent = SimulatedAgent.open(agent_state, task_seconds=60)
    try:
        engine = build_engine(orch, agent, fast_settings())
        engine.recover()
        result = orch.submit("CreateSnapshot", {"vm_id": "vm-0001"})
        engine.cycle()
        assert all(t.agent_task_id for t in orch.command(result.command_id).tasks.values())
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as other:  # another process's view
            other.request_cancel(str(result.command_id), "operator changed their mind")
        wait_for(lambda: engine.cycle() is not None and engine.idle, timeout=20)
        command = orch.command(result.command_id)
        assert command.status.value == "failed"
        assert command.outcome_reason.startswith("cancelled: operator changed their mind")
        assert {t.end_kind.value for t in command.tasks.values() if t.end_kind} == {"stopped"}
    finally:
        agent.close()
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])


def test_recovery_waits_for_an_unreachable_agent_and_decides_nothing(orch: Orchestrator, agent: SimulatedAgent) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    agent.backend.set_faults(FaultConfig(unreachable_until=time.time() + 3600))
    head = orch.store.app.recorder.max_notification_id()
    engine = build_engine(orch, agent, fast_settings(agent_backoff_max=0.05))
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    report = engine.recover(stop.is_set)
    assert report.decisions == {} and report.agent_waits >= 2
    assert orch.store.app.recorder.max_notification_id() == head, "nothing was recorded without the agent"
    assert "unreachable" in engine.agent_trouble


def test_malformed_answers_delay_decisions_and_never_end_a_task(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    result = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    engine = build_engine(orch, agent, fast_settings(agent_backoff_max=0.05))
    engine.recover()
    engine.cycle()  # submitted
    agent.backend.set_faults(FaultConfig(malformed_until=time.time() + 3600))
    wait_for(lambda: _due(agent), timeout=10)
    for _ in range(5):
        engine.cycle()
        time.sleep(0.06)  # past the engine's backoff, so each cycle asks the agent again
    assert "malformed" in engine.agent_trouble
    assert all(t.status.value == "running" for t in orch.command(result.command_id).tasks.values())
    agent.backend.set_faults(FaultConfig())
    run_until_idle(orch, agent)
    assert orch.command(result.command_id).status.value == "succeeded"
    invariants_hold(orch, agent_state, expected_commands=[result.command_id])


def test_a_standby_engine_takes_over_when_the_running_one_dies(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(2, 2)
        ids = [orch.submit("RemoveVm", {"vm_id": f"vm-000{n}"}).command_id for n in (1, 2)]
    env = cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="8", ORCHESTRATOR_POLL_INTERVAL="0.05")
    first = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state)],
        env=env,
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    standby: subprocess.Popen[str] | None = None
    try:
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            wait_for(
                lambda: all(t.agent_task_id for i in ids for t in orch.command(i).tasks.values()),
                timeout=20,
                what="the first engine to submit every task",
            )
            busy = run_cli(*engine_args(store_url, agent_state, "--no-wait"), env=env)
            assert busy.returncode == 8, busy.stderr
            errors = [line for line in busy.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and errors[0].startswith("error: another engine"), busy.stderr
            assert busy.stderr.strip().splitlines()[-1] == errors[0], "the error is the last word"
            standby = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    *engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"),
                ],
                env=env,
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
            lines: list[str] = []
            stream = standby.stderr
            assert stream is not None
            reader = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
            reader.start()
            wait_for(lambda: any("standing by" in line for line in lines), timeout=20, what="the standby to wait")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            orphaned = [i for i in ids if orch.command(i).in_flight]
            assert orphaned, "the first engine died with work in flight"
            assert standby.wait(timeout=90) == 0, "".join(lines)
            assert all(orch.command(i).status.value == "succeeded" for i in ids)
            # the dead engine had submitted everything: the standby resumes, it does not fail anything
            taken_over = {orch.command(i).recoveries[-1][1] for i in orphaned}
            assert taken_over <= {"resume polling", "run end action", "run end action again", "clear only"}
            invariants_hold(orch, agent_state, expected_commands=ids)
    finally:
        for proc in (first, standby):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_commands_submitted_while_the_engine_runs_are_picked_up(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(2, 1)
    env = cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="0.2", ORCHESTRATOR_POLL_INTERVAL="0.05")
    engine = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state)],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        submitted = run_cli(
            "--store",
            store_url,
            "--agent-state",
            str(agent_state),
            "submit",
            "HibernateVm",
            "--params",
            '{"vm_id": "vm-0002"}',
            env=env,
            check=True,
        )
        command_id = submitted.stdout.strip()
        with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
            wait_for(lambda: orch.command(command_id).ended and not orch.command(command_id).in_flight, timeout=30)
            assert orch.command(command_id).status.value == "succeeded"
        engine.send_signal(signal.SIGTERM)  # graceful stop
        assert engine.wait(timeout=20) == 0
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


def test_discovery_hands_over_everything_new_however_many_pages(
    orch: Orchestrator, agent: SimulatedAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery reads the head and the first page of what is new together, then the rest page by page."""
    orch.seed(7, 1)
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    monkeypatch.setattr(event_store, "LOG_PAGE", 3)
    accepted = {orch.submit("RemoveVm", {"vm_id": f"vm-000{n}"}).command_id for n in range(1, 8)}
    orch.request_cancel(next(iter(accepted)), "changed my mind")
    engine.discovery.run()
    handed = [w.inbox.get_nowait() for w in engine.workers.values() for _ in range(w.inbox.qsize())]
    new = [a.id for a in handed if isinstance(a, RootCommand)]
    assert sorted(new) == sorted(accepted), "every new command was handed over in one run, once"
    assert len(handed) == len(new) + 1, "and the cancel, as an id to read again"
    assert engine.discovery.position == orch.store.head()
    engine.discovery.run()  # nothing new: nothing handed again
    assert all(w.inbox.empty() for w in engine.workers.values())


def test_bulk_loading_from_snapshots_equals_replay(orch: Orchestrator, agent: SimulatedAgent, store_url: str) -> None:
    """Entities loaded in bulk (latest snapshot + later events) equal a full replay."""
    orch.seed(1, 1)
    for n in range(60):  # 60 shared locks taken and released: the storage domain passes a snapshot
        orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": f"t{n}"})
    run_until_idle(orch, agent, timeout=60)
    refs = [EntityRef(EntityType.STORAGE_DOMAIN, "sd-1"), EntityRef(EntityType.VM, "vm-0001")]
    with Orchestrator.open(store_url, create=False) as fresh:
        ids = [entity_aggregate_id(r) for r in refs]
        bulk = fresh.store.load_aggregates(ids)
        assert orch.store.app.snapshots is not None
        assert list(orch.store.app.snapshots.get(ids[0])), "a snapshot was taken"
        for ident in ids:
            replayed: Any = None
            for event in fresh.store.app.events.get(ident):  # every event from the first: no snapshot, no cache
                replayed = event.mutate(replayed)  # type: ignore[attr-defined]
            assert vars(bulk[ident]) == vars(replayed)
        assert bulk[ids[0]].version > 100


def test_submit_many_accepts_in_one_transaction_and_refuses_conflicts_one_by_one(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(3, 2)
    head = orch.store.app.recorder.max_notification_id()
    results = orch.submit_many(
        [
            ("RemoveVm", {"vm_id": "vm-0001"}),
            ("CreateSnapshot", {"vm_id": "vm-0001"}),  # conflicts with the removal just before it
            ("CreateTemplate", {"vm_id": "vm-0002", "name": "t"}),
            ("NoSuchFlow", {}),
            ("HibernateVm", {"vm_id": "vm-0003", "extra": 1}),
            ("HibernateVm", {"vm_id": "vm-0003"}),
        ]
    )
    kinds = [type(r).__name__ for r in results]
    assert kinds == [
        "SubmitResult",
        "EntityLockedError",
        "SubmitResult",
        "UnknownFlowError",
        "InvalidParametersError",
        "SubmitResult",
    ]
    assert "locked (write) by RemoveVm" in str(results[1])
    accepted = [r.command_id for r in results if isinstance(r, SubmitResult)]
    events = orch.store.app.recorder.select_notifications(start=head, limit=1000, inclusive_of_start=False)
    assert {e.originator_id for e in events if e.topic.endswith("RootCommand.Accepted")} == set(accepted)
    run_until_idle(orch, agent)
    assert all(orch.command(i).status.value == "succeeded" for i in accepted)
    invariants_hold(orch, agent_state, expected_commands=accepted)
