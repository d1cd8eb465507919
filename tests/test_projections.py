"""Issue 3: the read models (G2), their queries, their process, and their rebuild, on SQLite and PostgreSQL.

Every check reads what a user reads: the library's queries, or the CLI's
`--json` output. Crash tests kill a real engine process; the projection
process is a real `orchestrator projections run` subprocess, SIGKILLed while
it is working through a backlog.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.inventory import StorageDomain
from orchestrator.domain.model import CommandStatus, EntityRef, EntityType, TaskStatus
from orchestrator.engine.task_manager import TaskManager
from orchestrator.errors import CommandRefusedError
from orchestrator.store import META_TABLE, parse_store_url
from orchestrator.testing import FaultConfig, SimulatedAgent
from projections.read_models import READ_MODELS
from tests.conftest import (
    ONE_PER_CALL,
    REPO,
    cli_env,
    engine_args,
    events_table,
    fast_settings,
    invariants_hold,
    run_cli,
    run_until_idle,
    store_sql,
    wait_for,
)

SD, IMAGE, TEMPLATE, VM = EntityType.STORAGE_DOMAIN, EntityType.IMAGE, EntityType.TEMPLATE, EntityType.VM
# ---- helpers ---------------------------------------------------------------------------------


def cli(store_url: str, agent_state: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_cli("--store", store_url, "--agent-state", str(agent_state), *args, **kwargs)


def cli_json(store_url: str, agent_state: Path, *args: str) -> Any:
    proc = cli(store_url, agent_state, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_projections_true(orch: Orchestrator) -> None:
    for projection in orch.read_models.runner.projections:
        result = orch.read_models.runner.verify(projection)
        assert result.differences == [], f"{projection.name} differs from a rebuild: {result.differences}"


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="0.3", ORCHESTRATOR_POLL_INTERVAL="0.05", **extra)


def cycle_until(engine: TaskManager, condition: Any, timeout: float = 20.0, what: str = "") -> None:
    """Drive an in-process engine one cycle at a time until `condition()` holds."""

    def step() -> bool:
        engine.cycle()
        return bool(condition())

    wait_for(step, timeout=timeout, what=what)


# ---- G2: the entity -> task index ------------------------------------------------------------


def test_create_template_task_touches_both_domains_the_image_and_the_template(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 1)
    result = orch.submit(
        "CreateTemplate",
        {"vm_id": "vm-0001", "name": "golden", "target_storage_domain_id": "sd-2", "template_id": "tmpl-golden"},
    )
    (task,) = orch.command(result.command_id).tasks.values()
    four = {
        EntityRef(SD, "sd-1"): True,  # source domain, read
        EntityRef(SD, "sd-2"): True,  # target domain, read
        EntityRef(IMAGE, "img-0001-1"): True,  # the source image, read
        EntityRef(TEMPLATE, "tmpl-golden"): False,  # the new template, written
    }
    orch.read_models.runner.catch_up()

    # The task finds all four (and says how it uses each).
    touched = {
        EntityRef(EntityType(r.entity_type), r.entity_id): r
        for r in orch.read_models.queries.entities_for_task(task.task_id)
    }
    assert set(four) <= set(touched), sorted(touched)
    for ref, read_only in four.items():
        assert touched[ref].read_only is read_only, ref
        assert touched[ref].root_command_id == str(result.command_id)
    # All four find the task.
    for ref in four:
        rows = orch.read_models.queries.tasks_for_entity(ref, running_only=True)
        assert [r.task_id for r in rows] == [task.task_id], ref
        assert orch.read_models.queries.has_running_tasks(ref), ref

    # The same answers on the command line.
    doc = cli_json(store_url, agent_state, "entities", "--task", task.task_id)
    assert {(e["entity_type"], e["entity_id"]) for e in doc["entities"]} >= {(r.type.value, r.id) for r in four}
    for ref in four:
        doc = cli_json(store_url, agent_state, "tasks", "--entity", ref.key, "--running")
        assert doc["has_running_tasks"] is True, ref
        assert [t["task_id"] for t in doc["tasks"]] == [task.task_id], ref

    run_until_idle(orch, agent)
    orch.read_models.runner.catch_up()
    for ref in four:
        assert not orch.read_models.queries.has_running_tasks(ref), ref
        assert orch.read_models.queries.tasks_for_entity(ref) == [], "a cleared task leaves the index"
    assert orch.read_models.queries.entities_for_task(task.task_id) == []


def test_two_read_only_commands_on_one_vm_each_leave_the_index_with_their_own_tasks(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    vm = EntityRef(VM, "vm-0001")
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    first = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "first"})
    engine.cycle()  # submits the first command's tasks (0.2 s each)
    agent.backend.set_faults(FaultConfig(extra_task_seconds=2.5))
    second = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "second"})
    engine.cycle()  # submits the second command's tasks (2.7 s each)
    agent.backend.set_faults(FaultConfig())
    a, b = orch.command(first.command_id), orch.command(second.command_id)
    assert all(t.agent_task_id for t in [*a.tasks.values(), *b.tasks.values()])

    orch.read_models.runner.catch_up()
    on_vm = orch.read_models.queries.tasks_for_entity(vm)
    assert {r.root_command_id for r in on_vm} == {str(a.id), str(b.id)}
    assert {r.task_id for r in on_vm} == set(a.tasks) | set(b.tasks)
    assert all(r.read_only for r in on_vm)

    cycle_until(engine, lambda: not orch.command(a.id).in_flight, what="the first command ends and is cleared")
    b_now = orch.command(b.id)
    assert b_now.status is CommandStatus.RUNNING, "the second command's tasks still run"
    assert all(t.status is TaskStatus.RUNNING for t in b_now.tasks.values())
    orch.read_models.runner.catch_up()
    on_vm = orch.read_models.queries.tasks_for_entity(vm)
    assert {r.root_command_id for r in on_vm} == {str(b.id)}, "only the first command's tasks left the index"
    assert {r.task_id for r in on_vm} == set(b.tasks)
    assert all(orch.read_models.queries.entities_for_task(t) == [] for t in a.tasks)
    assert {r.task_id for r in orch.read_models.queries.active_tasks()} == set(b.tasks)

    cycle_until(engine, lambda: not orch.command(b.id).in_flight, what="the second command ends and is cleared")
    orch.read_models.runner.catch_up()
    assert orch.read_models.queries.tasks_for_entity(vm) == []
    assert orch.read_models.queries.active_tasks() == []
    assert orch.command(a.id).status is CommandStatus.SUCCEEDED
    assert orch.command(b.id).status is CommandStatus.SUCCEEDED
    invariants_hold(orch, agent_state, expected_commands=[a.id, b.id])


# ---- DeactivateStorageDomain: validation by the index ------------------------------------------


def test_deactivate_storage_domain_is_refused_while_a_task_runs_on_it_and_accepted_after(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 2)
    template = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "t", "target_storage_domain_id": "sd-2"})
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    engine.cycle()  # the copy tasks are on the agent now
    task_ids = sorted(orch.command(template.command_id).tasks)
    assert all(orch.command(template.command_id).tasks[t].agent_task_id for t in task_ids)
    head = orch.read_models.runner.head()

    refused = cli(
        store_url, agent_state, "submit", "DeactivateStorageDomain", "--params", '{"storage_domain_id": "sd-2"}'
    )
    assert refused.returncode == CommandRefusedError.exit_code, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot deactivate storage domain sd-2"), lines
    for task_id in task_ids:
        assert task_id in lines[0], "the message names the running tasks"
    with pytest.raises(CommandRefusedError, match="2 task\\(s\\) running on it"):
        orch.submit("DeactivateStorageDomain", {"storage_domain_id": "sd-2"})
    assert orch.read_models.runner.head() == head, "nothing was recorded for the refused command"

    cycle_until(engine, lambda: not orch.command(template.command_id).in_flight, what="the template is done")
    accepted = cli(
        store_url, agent_state, "submit", "DeactivateStorageDomain", "--params", '{"storage_domain_id": "sd-2"}'
    )
    assert accepted.returncode == 0, accepted.stderr
    deactivation = orch.command(accepted.stdout.strip())
    assert deactivation.flow == "DeactivateStorageDomain" and deactivation.tasks == {}
    assert [lk["mode"] for lk in orch.entity(EntityRef(SD, "sd-2")).locks.values()] == ["write"]  # type: ignore[union-attr]


def test_an_accepted_deactivation_takes_effect(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    orch.seed(1, 1)
    result = orch.submit("DeactivateStorageDomain", {"storage_domain_id": "sd-2"})
    proc = cli(store_url, agent_state, "run", "--until-idle", "--timeout", "8", env=engine_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    deactivation = orch.command(result.command_id)
    assert deactivation.status is CommandStatus.SUCCEEDED, deactivation.outcome_reason
    domain = orch.entity(EntityRef(SD, "sd-2"))
    assert isinstance(domain, StorageDomain) and domain.status == "inactive" and domain.locks == {}
    with pytest.raises(CommandRefusedError, match="storage domain sd-2 is inactive"):  # no new work on it
        orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "t", "target_storage_domain_id": "sd-2"})
    invariants_hold(orch, agent_state)


# ---- crash + recovery: projections stay true -----------------------------------------------------

CRASH_CASES: list[tuple[str, dict[str, Any], str, dict[str, str]]] = [
    ("RemoveVm", {"vm_id": "vm-0001"}, "after_agent_accept:2", ONE_PER_CALL),
    ("RemoveVm", {"vm_id": "vm-0001"}, "after_task_end_recorded:1", {}),
    ("HibernateVm", {"vm_id": "vm-0001"}, "after_agent_id_recorded:1", ONE_PER_CALL),
    ("HibernateVm", {"vm_id": "vm-0001"}, "after_agent_clear:1", {}),
    ("CreateTemplate", {"vm_id": "vm-0001", "name": "g", "target_storage_domain_id": "sd-2"}, "in_end_action:1", {}),
    (
        "CreateTemplate",
        {"vm_id": "vm-0001", "name": "g", "target_storage_domain_id": "sd-2"},
        "after_agent_accept:1",
        {},
    ),
    ("CreateSnapshot", {"vm_id": "vm-0001"}, "after_agent_id_recorded:1", ONE_PER_CALL),
    ("CreateSnapshot", {"vm_id": "vm-0001"}, "after_end_action:1", {}),
]


def crash_then_recover(
    store_url: str, agent_state: Path, flow: str, params: dict[str, Any], point: str, extra: dict[str, str]
) -> str:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
        command_id = str(orch.submit(flow, params).command_id)
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "60"), env=engine_env(ORCHESTRATOR_CRASH_AT=point, **extra)
    )
    assert died.returncode == CRASH_EXIT_CODE, f"engine did not crash at {point}: {died.stderr[-2000:]}"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        views_tell_what_the_log_tells(orch, command_id)  # as the crash left them, once caught up
        assert_projections_true(orch)
    restarted = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=engine_env())
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    return command_id


def views_tell_what_the_log_tells(orch: Orchestrator, command_id: str) -> None:
    """Each view against the command aggregate itself (a rebuild shares the view's code; this does not)."""
    orch.read_models.runner.catch_up()
    command = orch.command(command_id)
    rows = {r.command_id: r for r in orch.read_models.queries.list_commands(include_children=True)}
    root = rows[command_id]
    uncleared = [t for t in command.tasks.values() if not t.cleared]
    assert (root.status, root.task_count) == (command.status.value, len(command.tasks))
    assert root.uncleared_tasks == len(uncleared)
    assert {c for c in rows if c != command_id} == set(command.children) - {command_id}  # a lone child is the root
    assert (command_id in [str(i) for i in orch.store.in_flight_ids()]) == command.in_flight
    active = {a.task_id: a for a in orch.read_models.queries.active_tasks(command_id)}
    assert set(active) == {t.task_id for t in uncleared}
    for task in uncleared:
        assert (active[task.task_id].status, active[task.task_id].agent_task_id) == (
            task.status.value,
            task.agent_task_id,
        )
        touched = orch.read_models.queries.entities_for_task(task.task_id)
        assert {(e.entity_type, e.entity_id) for e in touched} == {(u.ref.type.value, u.ref.id) for u in task.entities}
        assert {e.status for e in touched} == {task.status.value}


@pytest.mark.parametrize(
    ("flow", "params", "point", "extra"),
    CRASH_CASES,
    ids=[f"{c[0]}-{c[2]}{'-1pc' if c[3] else ''}" for c in CRASH_CASES],
)
def test_after_crash_and_recovery_every_projection_equals_a_rebuild(
    store_url: str, agent_state: Path, flow: str, params: dict[str, Any], point: str, extra: dict[str, str]
) -> None:
    command_id = crash_then_recover(store_url, agent_state, flow, params, point, extra)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        assert not orch.command(command_id).in_flight
        views_tell_what_the_log_tells(orch, command_id)
        assert_projections_true(orch)
        assert orch.read_models.queries.active_tasks() == [], "the active-tasks view is empty once idle"
        assert orch.read_models.queries.list_commands(in_flight=True) == []
        rows = orch.read_models.queries.list_commands()
        assert [(r.command_id, r.status) for r in rows] == [(command_id, orch.command(command_id).status.value)]
    active = cli_json(store_url, agent_state, "active")
    assert active["tasks"] == []
    assert active["freshness"]["lag"] == 0


def test_cli_verify_passes_after_crash_and_recovery(store_url: str, agent_state: Path) -> None:
    crash_then_recover(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"}, "after_agent_accept:2", ONE_PER_CALL)
    proc = cli(store_url, agent_state, "projections", "rebuild", "--verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in READ_MODELS:
        assert f"{name}: equal to a rebuild from the log" in proc.stdout


# ---- the projection process: killed mid-stream, resumes exactly where it was ----------------------


def positions(store_url: str) -> dict[str, int]:
    return {str(name): int(pos) for name, pos in store_sql(store_url, "SELECT projection, position FROM proj_tracking")}


def start_projection_process(store_url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--store", store_url, "projections", "run", "--interval=0.05", *extra],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_projection_process_killed_mid_stream_resumes_without_skipping_or_repeating(
    store_url: str, backend: str, agent_state: Path
) -> None:
    n_commands, disks = (400, 8) if backend == "sqlite" else (200, 8)
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(n_commands, disks)
        for n in range(1, n_commands + 1):  # a backlog the views have not seen yet
            orch.submit("CreateTemplate", {"vm_id": f"vm-{n:04d}", "name": f"t{n}"})
        head = orch.read_models.runner.head()
        assert set(positions(store_url).values()) == {0}
    accepted_ids = [int(r[0]) for r in _accepted_notification_ids(store_url)]
    assert len(accepted_ids) == n_commands

    proc = start_projection_process(store_url, "--batch", "1000")  # a backlog of several batches
    try:
        wait_for(lambda: min(positions(store_url).values()) > 0, timeout=60, interval=0.002, what="a first batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    at_kill = positions(store_url)
    assert all(0 < p < head for p in at_kill.values()), f"not killed mid-stream: {at_kill}, head {head}"
    # What the killed process committed is exactly the events up to its tracked position: no half batch.
    commands_position = at_kill["commands"]
    seen = sum(1 for i in accepted_ids if i <= commands_position)
    roots = store_sql(store_url, "SELECT COUNT(*) FROM proj_commands WHERE parent_id IS NULL")[0][0]
    children = store_sql(store_url, "SELECT COUNT(*) FROM proj_commands WHERE parent_id IS NOT NULL")[0][0]
    assert (roots, children) == (seen, seen * disks)

    proc = start_projection_process(store_url)
    try:
        wait_for(
            lambda: set(positions(store_url).values()) == {head}, timeout=90, what="the restarted process catches up"
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    roots = store_sql(store_url, "SELECT COUNT(*) FROM proj_commands WHERE parent_id IS NULL")[0][0]
    active = store_sql(store_url, "SELECT COUNT(*) FROM proj_active_tasks")[0][0]
    assert (roots, active) == (n_commands, n_commands * disks), "every event applied once"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        assert {s.name: s.lag for s in orch.read_models.runner.status()} == dict.fromkeys(READ_MODELS, 0)
        assert_projections_true(orch)


def _accepted_notification_ids(store_url: str) -> list[tuple[Any, ...]]:
    config = parse_store_url(store_url)
    if config.kind == "sqlite":
        sql = "SELECT rowid FROM stored_events WHERE topic LIKE '%RootCommand.Accepted' ORDER BY rowid"
    else:
        sql = "SELECT notification_id FROM orchestrator_events WHERE topic LIKE '%RootCommand.Accepted' ORDER BY 1"
    return store_sql(store_url, sql)


# ---- rebuild and verify ---------------------------------------------------------------------------


def test_rebuild_while_the_engine_runs_never_shows_a_half_built_view(store_url: str, agent_state: Path) -> None:
    n = 12
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(n, 2)
        ids = [str(orch.submit("CreateSnapshot", {"vm_id": f"vm-{k:04d}"}).command_id) for k in range(1, n + 1)]
        orch.read_models.runner.catch_up()
    # Opened one after the other, before the engine (opening one store at the same moment is another bug).
    other = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    orch = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    engine = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state, "--until-idle", "--timeout", "90")],
        cwd=REPO,
        env=cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="1.0", ORCHESTRATOR_POLL_INTERVAL="0.05", **ONE_PER_CALL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_counts: list[int] = []
    reader_errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen_counts.append(len(other.read_models.queries.list_commands()))
                other.read_models.queries.active_tasks()
                other.read_models.queries.tasks_for_entity(EntityRef(VM, "vm-0001"))
            except Exception as exc:  # a reader must never fail because of a rebuild
                reader_errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    rebuilds = 0
    try:
        while engine.poll() is None:
            for projection in orch.read_models.runner.projections:
                orch.read_models.runner.rebuild(projection)
            rebuilds += 1
    finally:
        stop.set()
        thread.join(timeout=60)
        _, stderr = engine.communicate(timeout=120)
        other.close()
        orch.close()
    assert engine.returncode == 0, stderr[-3000:]
    assert rebuilds >= 2, "the rebuilds overlapped the engine's work"
    assert reader_errors == []
    assert seen_counts and min(seen_counts) == n, "readers saw a half-built commands view"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        assert [orch.command(i).status for i in ids] == [CommandStatus.SUCCEEDED] * n
        orch.read_models.runner.catch_up()
        assert orch.read_models.queries.active_tasks() == []
        assert_projections_true(orch)
    invariants_after(store_url, agent_state)


def invariants_after(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state)


def test_cli_rebuild_while_the_engine_runs(store_url: str, agent_state: Path) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(4, 2)
        for k in range(1, 5):
            orch.submit("HibernateVm", {"vm_id": f"vm-{k:04d}"})
    engine = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state, "--until-idle", "--timeout", "60")],
        cwd=REPO,
        env=cli_env(ORCHESTRATOR_AGENT_TASK_SECONDS="1.0", ORCHESTRATOR_POLL_INTERVAL="0.05"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The engine has opened the store and works (opening one store at the same moment is another bug).
        started = f"SELECT COUNT(*) FROM {events_table(store_url)} WHERE topic LIKE '%RootCommand.TasksSubmitted'"
        wait_for(lambda: store_sql(store_url, started)[0][0] > 0, timeout=30, what="the engine works")
        proc = cli(store_url, agent_state, "projections", "rebuild")
    finally:
        _, stderr = engine.communicate(timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in READ_MODELS:
        assert f"{name}: rebuilt from" in proc.stdout
    assert engine.returncode == 0, stderr[-2000:]
    invariants_after(store_url, agent_state)


def _delete_one_index_row(store_url: str) -> tuple[str, str, str]:
    entity_type, entity_id, task_id = store_sql(
        store_url,
        "SELECT entity_type, entity_id, task_id FROM proj_entity_tasks WHERE entity_type = 'storage_domain'"
        " ORDER BY task_id LIMIT 1",
    )[0]
    store_sql(
        store_url,
        "DELETE FROM proj_entity_tasks WHERE entity_type = ? AND entity_id = ? AND task_id = ?",
        (entity_type, entity_id, task_id),
    )
    return str(entity_type), str(entity_id), str(task_id)


def test_verify_finds_a_row_deleted_from_a_live_view(store_url: str, orch: Orchestrator) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.read_models.runner.catch_up()
    assert_projections_true(orch)
    _, _, task_id = _delete_one_index_row(store_url)
    store_sql(store_url, "UPDATE proj_commands SET status = 'succeeded' WHERE parent_id IS NULL")

    entity_tasks = orch.read_models.runner.verify(READ_MODELS["entity_tasks"])
    assert not entity_tasks.ok
    assert any("only in the rebuild" in d and task_id in d for d in entity_tasks.differences), entity_tasks.differences
    commands = orch.read_models.runner.verify(READ_MODELS["commands"])
    assert any("only in the live view" in d and "succeeded" in d for d in commands.differences)
    assert orch.read_models.runner.verify(READ_MODELS["active_tasks"]).ok
    # A rebuild repairs the view.
    orch.read_models.runner.rebuild(READ_MODELS["entity_tasks"])
    orch.read_models.runner.rebuild(READ_MODELS["commands"])
    assert_projections_true(orch)


def test_cli_verify_exits_non_zero_and_prints_the_row_deleted_from_a_live_view(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.read_models.runner.catch_up()
    _, _, task_id = _delete_one_index_row(store_url)
    proc = cli(store_url, agent_state, "projections", "rebuild", "entity_tasks", "--verify")
    assert proc.returncode == 10, proc.stderr[-2000:]
    assert "only in the rebuild" in proc.stdout and task_id in proc.stdout
    as_json = cli(store_url, agent_state, "projections", "rebuild", "entity_tasks", "--verify", "--json")
    assert as_json.returncode == 10, as_json.stderr[-2000:]
    (doc,) = json.loads(as_json.stdout)
    assert doc["name"] == "entity_tasks" and doc["ok"] is False
    assert any("only in the rebuild" in d and task_id in d for d in doc["differences"])


# ---- the CLI's JSON carries freshness -------------------------------------------------------------


def _assert_fresh(freshness: dict[str, Any], head: int) -> None:
    assert set(freshness) == {"position", "head", "lag"}
    assert freshness["head"] == head
    assert freshness["lag"] == freshness["head"] - freshness["position"] == 0


def test_cli_json_outputs_parse_and_carry_freshness(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(2, 2)
    removal = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.submit("CreateTemplate", {"vm_id": "vm-0002", "name": "t"})
    head = orch.read_models.runner.head()
    assert {s.lag for s in orch.read_models.runner.status()} == {head}, "nothing projected yet"
    task_id = sorted(orch.command(removal.command_id).tasks)[0]

    listed = cli_json(store_url, agent_state, "list")
    _assert_fresh(listed["freshness"], head)
    assert {c["command_type"] for c in listed["commands"]} == {"RemoveVm", "CreateTemplate"}
    by_type = cli_json(store_url, agent_state, "list", "--type", "RemoveVm")
    assert [c["command_id"] for c in by_type["commands"]] == [str(removal.command_id)]
    by_entity = cli_json(store_url, agent_state, "list", "--entity", "vm:vm-0002")
    assert [c["command_type"] for c in by_entity["commands"]] == ["CreateTemplate"]
    children = cli_json(store_url, agent_state, "list", "--parent", str(removal.command_id))
    assert {c["command_type"] for c in children["commands"]} == {"RemoveImage"} and len(children["commands"]) == 2
    accepted = cli_json(store_url, agent_state, "list", "--status", "accepted")
    assert len(accepted["commands"]) == 2

    tasks = cli_json(store_url, agent_state, "tasks", "--entity", "storage_domain:sd-1")
    _assert_fresh(tasks["freshness"], head)
    assert tasks["has_running_tasks"] is True and len(tasks["tasks"]) == 4
    entities = cli_json(store_url, agent_state, "entities", "--task", task_id)
    _assert_fresh(entities["freshness"], head)
    assert ["storage_domain", "sd-1"] in [[e["entity_type"], e["entity_id"]] for e in entities["entities"]]
    active = cli_json(store_url, agent_state, "active")
    _assert_fresh(active["freshness"], head)
    assert len(active["tasks"]) == 4 and {t["status"] for t in active["tasks"]} == {"planned"}

    status = cli_json(store_url, agent_state, "projections", "status")
    assert {s["name"]: (s["position"], s["head"], s["lag"]) for s in status} == dict.fromkeys(
        READ_MODELS, (head, head, 0)
    )


# ---- the entry point script -------------------------------------------------------------------------


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_rebuild_script_is_the_cli_rebuild_command() -> None:
    proc = _script("rebuild_projections.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--verify" in proc.stdout and "Rebuild read models" in proc.stdout


def test_rebuild_script_rebuilds_and_verifies(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    rebuilt = _script("rebuild_projections.py", "--store", store_url, "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert {r["name"] for r in json.loads(rebuilt.stdout)} == set(READ_MODELS)
    verified = _script("rebuild_projections.py", "--store", store_url, "--verify")
    assert verified.returncode == 0, verified.stderr[-2000:]
    assert "equal to a rebuild from the log" in verified.stdout


def test_in_flight_table_holds_exactly_the_commands_in_flight_and_is_filled_on_upgrade(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent
) -> None:
    """Recovery reads `orchestrator_in_flight`, kept with the events; a store of layout 3 (which kept
    the commands in flight in a read model, `proj_in_flight`) gets it filled on the next open."""
    orch.seed(3, 2)
    ended = [str(orch.submit("RemoveVm", {"vm_id": f"vm-000{n}"}).command_id) for n in (1, 2)]
    run_until_idle(orch, agent)
    waiting = str(orch.submit("RemoveVm", {"vm_id": "vm-0003"}).command_id)
    assert [str(i) for i in orch.store.in_flight_ids()] == [waiting], "kept in the accept transaction itself"
    assert all(not orch.command(c).in_flight for c in ended)
    orch.close()
    # As a store of layout 3 was: the read model held the commands in flight, the store did not.
    store_sql(store_url, "DROP TABLE orchestrator_in_flight")
    store_sql(store_url, "CREATE TABLE proj_in_flight (command_id TEXT PRIMARY KEY)")
    store_sql(store_url, "INSERT INTO proj_in_flight VALUES (?)", (waiting,))
    store_sql(store_url, f"UPDATE {META_TABLE} SET value = '3' WHERE key = 'layout'")
    with Orchestrator.open(store_url, agent_state=orch.agent_state, create=False) as upgraded:
        assert [str(i) for i in upgraded.store.in_flight_ids()] == [waiting]
        assert not upgraded.store.has_table("proj_in_flight"), "the read model's copy is gone"
        assert_projections_true(upgraded)


def test_catch_ups_commit_without_waiting_for_the_disk_and_other_writes_wait(orch: Orchestrator) -> None:
    """A catch-up writes what the log can give again, with its position: its commit need not wait
    for the disk. A prune's writes (and every other write of these tables) still do."""
    tables = orch.read_models.tables

    def sync_setting(flush: bool) -> str:
        with tables.write(flush=flush) as cur:
            if tables.dialect == "sqlite":
                cur.execute("PRAGMA synchronous")
            else:
                cur.execute("SHOW synchronous_commit")
            return str(cur.fetchall()[0][0])

    waits, skips = ("2", "1") if tables.dialect == "sqlite" else ("on", "off")  # SQLite: FULL, NORMAL
    assert [sync_setting(True), sync_setting(False), sync_setting(True)] == [waits, skips, waits]
    with tables.write() as cur:  # the default
        cur.execute("PRAGMA synchronous" if tables.dialect == "sqlite" else "SHOW synchronous_commit")
        assert str(cur.fetchall()[0][0]) == waits


def test_commands_run_back_to_back_share_one_catch_up_and_queries_stay_current(
    orch: Orchestrator, agent_state: Path
) -> None:
    """The engine catches the read models up at most once per interval, idle or busy; a query
    catches them up itself, so it reads every command as it ended; a stop leaves them current."""
    orch.seed(3, 2)
    agent = SimulatedAgent.open(agent_state, task_seconds=0.0)
    try:
        engine = build_engine(orch, agent, fast_settings(catch_up_interval=3600))
        engine.recover()
        ids: list[UUID] = []
        for n in (1, 2):
            ids.append(orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"}).command_id)
            wait_for(lambda: engine.cycle() is not None and engine.idle, timeout=20)
        behind = {s.name: s.lag for s in orch.read_models.runner.status()}
        assert all(lag > 0 for lag in behind.values()), f"the engine caught up again within the interval: {behind}"

        assert orch.read_models.freshness("commands").lag == 0  # what every query does first
        ended = {r.command_id: r.status for r in orch.read_models.queries.list_commands()}
        assert ended == {str(i): "succeeded" for i in ids}

        orch.submit("RemoveVm", {"vm_id": "vm-0003"})
        stop = threading.Event()
        engine.run(stop, until_idle=True)
        assert {s.name: s.lag for s in orch.read_models.runner.status()} == dict.fromkeys(READ_MODELS, 0)
    finally:
        agent.close()
