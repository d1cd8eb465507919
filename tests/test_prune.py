"""Retention: `orchestrator prune` archives old, ended root commands, then removes them (docs/retention.md).

On both stores: after a prune every invariant holds and a rebuild of the read
models equals them; the archive reads back with every stored event; commands in
flight (or not yet cleared) refuse the prune and nothing changes; --dry-run
changes nothing; a prune killed in the middle (a crash point, a real CLI
process) loses nothing and a re-run finishes it; the read models' catch-up and
the engine's discovery are fine with the gaps left in the notification ids;
bad input is one `error:` line and a non-zero exit code.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus
from orchestrator.retention import (
    PRUNE_LOG_ID,
    ArchiveError,
    PruneRefusedError,
    PruneRequest,
    iter_archive,
    prune,
    read_archive,
)
from orchestrator.testing import SimulatedAgent
from tests.conftest import cli_env, fast_settings, invariants_hold, run_until_idle, store_sql
from tests.test_cli_helpers import cli, cli_json, engine_env, one_error_line

READ_MODEL_TABLES = {
    "proj_commands": "command_id",
    "proj_command_entities": "command_id",
    "proj_entity_tasks": "task_id",
    "proj_active_tasks": "task_id",
}


def now() -> str:
    return datetime.now(UTC).isoformat()


def run_flows(orch: Orchestrator, agent: SimulatedAgent, flows: list[tuple[str, dict[str, Any]]]) -> list[UUID]:
    """Submit the flows and run the engine until nothing is in flight; their ids."""
    ids = [orch.submit(flow, params).command_id for flow, params in flows]
    run_until_idle(orch, agent)
    return ids


def several(orch: Orchestrator, agent: SimulatedAgent, *, terminated: bool = False) -> list[UUID]:
    """Commands of every kind, ended: succeeded, failed (cancelled; terminated), children, many entities.

    A command terminated before it reached the agent leaves rows in the task views (they do not read
    `Terminated`): the prune removes them with the command.
    """
    orch.seed(5, 2)
    ids = [orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id]
    cancelled = orch.submit("HibernateVm", {"vm_id": "vm-0002"}).command_id
    orch.request_cancel(cancelled, "not today")
    ids.append(cancelled)
    if terminated:
        ids.append(orch.submit("HibernateVm", {"vm_id": "vm-0005"}).command_id)
        orch.terminate(ids[-1], "its agent is gone")
    return ids + run_flows(
        orch,
        agent,
        [
            ("CreateSnapshot", {"vm_id": "vm-0003", "description": "before"}),
            ("CreateTemplate", {"vm_id": "vm-0004", "name": "golden", "target_storage_domain_id": "sd-2"}),
        ],
    )


def stored(orch: Orchestrator, ident: UUID) -> list[tuple[int, str, dict[str, Any]]]:
    """A command's events as the store holds them: version, topic, decoded state."""
    return [
        (s.originator_version, s.topic, json.loads(s.state))
        for s in orch.store.dialect.events_after(orch.store.recorder, [(ident, 0)])
    ]


def keys_of(orch: Orchestrator, ident: UUID) -> dict[str, set[str]]:
    """What the read models key rows of a root command by: its command ids (root, children), its tasks."""
    command = orch.command(ident)
    ids = {str(ident), *command.children}
    tasks = set(command.tasks)
    return {table: ids if column == "command_id" else tasks for table, column in READ_MODEL_TABLES.items()}


def rows_about(store_url: str, keys: dict[str, set[str]]) -> dict[str, int]:
    counts = {}
    for table, column in READ_MODEL_TABLES.items():
        wanted = sorted(keys[table])
        marks = ",".join("?" * len(wanted))
        counts[table] = store_sql(
            store_url, f"SELECT COUNT(*) FROM {table} WHERE {column} IN ({marks})", tuple(wanted)
        )[0][0]
    return counts


def merged(keys: list[dict[str, set[str]]]) -> dict[str, set[str]]:
    return {table: set().union(*(k[table] for k in keys)) for table in READ_MODEL_TABLES}


def event_count(store_url: str) -> int:
    table = "stored_events" if store_url.startswith("sqlite") else "orchestrator_events"
    return int(store_sql(store_url, f"SELECT COUNT(*) FROM {table}")[0][0])


def verify_cli(store_url: str, agent_state: Path) -> None:
    checked = cli_json(store_url, agent_state, "projections", "rebuild", "--verify")
    assert [c["ok"] for c in checked] == [True, True, True], checked


# ---- the prune itself ---------------------------------------------------------------------------------


def test_prune_archives_every_event_then_removes_the_commands_and_every_invariant_holds(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    old = several(orch, agent, terminated=True)
    histories = {i: stored(orch, i) for i in old}
    inspected = {i: cli_json(store_url, agent_state, "inspect", "--command", str(i)) for i in old}
    states = {i: (orch.command(i).status, orch.command(i).outcome_reason) for i in old}
    keys = merged([keys_of(orch, i) for i in old])
    rows = rows_about(store_url, keys)
    assert rows["proj_commands"] > len(old) and rows["proj_command_entities"] > len(old)
    cutoff = now()
    newer = run_flows(orch, agent, [("CreateSnapshot", {"vm_id": "vm-0003", "description": "after"})])
    before = event_count(store_url)
    archive = tmp_path / "archive.jsonl"

    report = cli_json(store_url, agent_state, "prune", "--ended-before", cutoff, "--archive", str(archive))

    pruned_events = sum(len(h) for h in histories.values())
    assert (report["format"], report["commands"], report["events"]) == ("orchestrator.prune/1", len(old), pruned_events)
    assert (report["deleted_commands"], report["deleted_events"], report["resumed"]) == (len(old), pruned_events, False)
    assert report["archive"] == str(archive) and not report["dry_run"]
    # The archive: a header, one line per command with every stored event, an end line.
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert lines[0]["format"] == "orchestrator.archive/1" and lines[0]["kind"] == "header"
    assert (lines[0]["store"], lines[0]["ended_before"][:19]) == (orch.config.redacted, cutoff[:19])
    assert lines[-1] == {"kind": "end", "prune_id": report["prune_id"], "commands": len(old), "events": pruned_events}
    read = list(read_archive(archive))
    assert [c.command_id for c in read] == old
    for c in read:
        assert [(e.version, e.topic, e.state) for e in c.record.events] == histories[c.command_id]
        assert all(e.written_by == e.state.get("written_by", {}) for e in c.record.events)
        assert (c.command.status, c.command.outcome_reason) == states[c.command_id]  # replayed as it was
        assert c.ended_at is not None and len(c.events) == len(c.record.events)
    assert {c.command_id: c.outcome for c in read}[old[1]] == "failed"  # the cancelled one
    # Gone from the store and every read model; the inventory and the newer command stay.
    fresh = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    try:
        assert all(fresh.store.events_of(i) == [] for i in old)
        assert rows_about(store_url, keys) == dict.fromkeys(READ_MODEL_TABLES, 0)
        assert fresh.command(newer[0]).status is CommandStatus.SUCCEEDED
        assert len(fresh.inventory()) == len(orch.inventory())
        assert event_count(store_url) == before - pruned_events + 3  # the prune log: opened, started, finished
        assert [type(e).__name__ for e in fresh.store.events_of(PRUNE_LOG_ID)] == ["Opened", "Started", "Finished"]
        invariants_hold(fresh, agent_state, expected_commands=[*old, *newer], pruned=old)
    finally:
        fresh.close()
    verify_cli(store_url, agent_state)
    shown = cli_json(store_url, agent_state, "archive", "show", str(archive))
    assert shown["format"] == "orchestrator.archive-show/1"
    assert [c["command_id"] for c in shown["commands"]] == [str(i) for i in old]
    assert shown["events"] == pruned_events and all(c["ended_at"] for c in shown["commands"])
    assert cli_json(store_url, agent_state, "inspect", "--archive", str(archive))["commands"] == shown["commands"]
    for ident, before_prune in inspected.items():
        archived = cli_json(store_url, agent_state, "inspect", "--archive", str(archive), "--command", str(ident)[:8])
        assert archived["events"] == before_prune["events"], "the archive tells the history the store told"
        assert archived["state"] == before_prune["state"] and archived["store"] == f"archive {archive}"
    missing = cli(store_url, agent_state, "inspect", "--archive", str(archive), "--command", str(newer[0]))
    assert f"no command id starts with {newer[0]} in archive" in one_error_line(missing, 6)
    # A second prune of the same cut-off finds nothing more; the file of a finished prune is not reused.
    again = cli(store_url, agent_state, "prune", "--ended-before", cutoff, "--archive", str(archive))
    assert "finished" in one_error_line(again, 4)


def test_in_flight_and_uncleared_commands_refuse_the_prune_and_nothing_changes(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(3, 1)
    ended = run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"})])
    waiting = orch.submit("RemoveVm", {"vm_id": "vm-0002"}).command_id  # accepted, never run
    archive = tmp_path / "a.jsonl"
    before = event_count(store_url)

    refused = cli(store_url, agent_state, "prune", "--ended-before", now(), "--archive", str(archive))

    line = one_error_line(refused, 5)
    assert str(waiting) in line and "nothing was changed" in line
    assert not archive.exists() and not (tmp_path / "a.jsonl.partial").exists()
    assert event_count(store_url) == before and orch.store.events_of(ended[0])
    # The dry run says the same; a cut-off before the command in flight prunes only older ones.
    one_error_line(cli(store_url, agent_state, "prune", "--ended-before", now(), "--dry-run"), 5)
    # Ended, tasks not yet cleared on the agent (an engine killed after the end action): refused too.
    died = cli(store_url, agent_state, "run", "--until-idle", env=engine_env(ORCHESTRATOR_CRASH_AT="after_end_action"))
    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    orch.store.forget()
    command = orch.command(waiting)
    assert command.ended and command.uncleared_tasks
    uncleared = cli(store_url, agent_state, "prune", "--ended-before", now(), "--archive", str(archive))
    assert str(waiting) in one_error_line(uncleared, 5) and not archive.exists()
    with pytest.raises(PruneRefusedError):
        prune(orch.store, orch.read_models, PruneRequest(datetime.now(UTC), None))
    assert orch.store.events_of(ended[0])


def test_dry_run_says_what_would_go_and_changes_nothing(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    old = several(orch, agent)
    cutoff = now()
    keys = merged([keys_of(orch, i) for i in old])
    rows, head, before = rows_about(store_url, keys), orch.store.head(), event_count(store_url)
    archive = tmp_path / "a.jsonl"

    report = cli_json(store_url, agent_state, "prune", "--ended-before", cutoff, "--archive", str(archive), "--dry-run")

    events = sum(len(stored(orch, i)) for i in old)
    assert (report["dry_run"], report["commands"], report["events"], report["deleted_commands"]) == (
        True,
        len(old),
        events,
        0,
    )
    assert report["stored_bytes"] > 0 and report["archive_bytes"] > report["stored_bytes"]
    assert report["oldest_settled_at"] <= report["newest_settled_at"] < cutoff.replace("+00:00", "Z")
    assert not archive.exists() and not (tmp_path / "a.jsonl.partial").exists()
    assert (rows_about(store_url, keys), orch.store.head(), event_count(store_url)) == (rows, head, before)
    text = cli(store_url, agent_state, "prune", "--ended-before", cutoff, "--dry-run")
    assert text.returncode == 0 and f"would prune {len(old)} command(s)" in text.stdout
    invariants_hold(orch, agent_state, expected_commands=old)


def test_a_prune_without_an_archive_is_refused_unless_asked_for(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(2, 1)
    old = run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"}), ("RemoveVm", {"vm_id": "vm-0002"})])
    cutoff, before = now(), event_count(store_url)

    refused = cli(store_url, agent_state, "prune", "--ended-before", cutoff)

    assert "--archive FILE" in one_error_line(refused, 4) and event_count(store_url) == before
    both = cli(
        store_url, agent_state, "prune", "--ended-before", cutoff, "--archive", str(tmp_path / "x"), "--no-archive"
    )
    one_error_line(both, 4)
    report = cli_json(store_url, agent_state, "prune", "--ended-before", cutoff, "--no-archive")
    assert (report["archive"], report["deleted_commands"]) == (None, 2)
    assert not list(tmp_path.glob("*.jsonl*"))
    invariants_hold(orch, agent_state, expected_commands=old, pruned=old)


def test_bad_input_is_one_error_line(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(1, 1)
    run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"})])
    before = event_count(store_url)
    not_ours = tmp_path / "notes.txt"
    not_ours.write_text("keep me\n")
    for args, says in (
        (["--ended-before", "last tuesday", "--archive", str(tmp_path / "a")], "not an ISO date"),
        (["--ended-before", "2025-13-40", "--archive", str(tmp_path / "a")], "not an ISO date"),
        (["--ended-before", "2025-01-01", "--archive", str(tmp_path / "missing" / "a")], "does not exist"),
        (["--ended-before", "2025-01-01", "--archive", str(not_ours)], "not an orchestrator archive"),
        (["--ended-before", "2025-01-01", "--archive", str(tmp_path)], "is a directory"),
    ):
        assert says in one_error_line(cli(store_url, agent_state, "prune", *args), 4), args
    assert not_ours.read_text() == "keep me\n" and event_count(store_url) == before
    one_error_line(cli(store_url, agent_state, "prune", "--archive", str(tmp_path / "a")), 2)  # no cut-off
    assert "not an orchestrator archive" in one_error_line(
        cli(store_url, agent_state, "archive", "show", str(not_ours)), 4
    )
    with pytest.raises(ArchiveError):
        list(iter_archive(not_ours))


def test_an_archive_of_another_cut_off_is_not_reused(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(2, 1)
    run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"})])
    archive = tmp_path / "a.jsonl"
    env = cli_env(ORCHESTRATOR_CRASH_AT="in_prune:1")
    cutoff = now()
    died = cli(store_url, agent_state, "prune", "--ended-before", cutoff, "--archive", str(archive), env=env)
    assert died.returncode == CRASH_EXIT_CODE and archive.exists()
    content = archive.read_bytes()
    other = cli(store_url, agent_state, "prune", "--ended-before", now(), "--archive", str(archive))
    assert "cut-off" in one_error_line(other, 4) and archive.read_bytes() == content


# ---- crash safety -------------------------------------------------------------------------------------


@pytest.mark.parametrize("nth", [1, 3], ids=["archived-nothing-deleted", "after-two-batches"])
def test_a_prune_killed_in_the_middle_loses_nothing_and_a_rerun_finishes_it(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path, nth: int
) -> None:
    orch.seed(6, 1)
    old = run_flows(orch, agent, [("RemoveVm", {"vm_id": f"vm-{n:04d}"}) for n in range(1, 7)])
    histories = {i: stored(orch, i) for i in old}
    keys = merged([keys_of(orch, i) for i in old])
    cutoff = now()
    archive = tmp_path / "a.jsonl"
    args = ["prune", "--ended-before", cutoff, "--archive", str(archive), "--batch-size", "2"]

    died = cli(store_url, agent_state, *args, env=cli_env(ORCHESTRATOR_CRASH_AT=f"in_prune:{nth}"))

    assert died.returncode == CRASH_EXIT_CODE, died.stderr[-2000:]
    assert f"crash point in_prune:{nth} reached" in died.stderr
    deleted_first = 2 * (nth - 1)
    assert sum(1 for i in old if not orch.store.events_of(i)) == deleted_first
    assert [c.command_id for c in iter_archive(archive)] == old  # complete before anything was deleted
    content = archive.read_bytes()

    finished = cli_json(store_url, agent_state, *args)

    assert (finished["resumed"], finished["commands"]) == (True, len(old))
    assert (finished["deleted_commands"], finished["already_gone"]) == (len(old) - deleted_first, deleted_first)
    assert archive.read_bytes() == content  # nothing written twice
    assert [
        (c.command_id, [(e.version, e.topic, e.state) for e in c.record.events]) for c in read_archive(archive)
    ] == [(i, histories[i]) for i in old]
    assert rows_about(store_url, keys) == dict.fromkeys(READ_MODEL_TABLES, 0)
    fresh = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    try:
        assert all(fresh.store.events_of(i) == [] for i in old)
        log_events = [type(e).__name__ for e in fresh.store.events_of(PRUNE_LOG_ID)]
        assert log_events == ["Opened", "Started", "Finished"]  # started once, finished once
        invariants_hold(fresh, agent_state, expected_commands=old, pruned=old)
    finally:
        fresh.close()
    verify_cli(store_url, agent_state)


def test_a_command_whose_history_grew_after_archiving_is_left_in_place(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(2, 1)
    old = run_flows(
        orch,
        agent,
        [("CreateSnapshot", {"vm_id": "vm-0001", "description": "a"}), ("RemoveVm", {"vm_id": "vm-0002"})],
    )
    cutoff = now()
    archive = tmp_path / "a.jsonl"
    args = ["prune", "--ended-before", cutoff, "--archive", str(archive)]
    died = cli(store_url, agent_state, *args, env=cli_env(ORCHESTRATOR_CRASH_AT="in_prune:1"))
    assert died.returncode == CRASH_EXIT_CODE
    retried = orch.retry(old[0])  # records RetriedAs on the archived command: its history grew

    finished = cli_json(store_url, agent_state, *args)

    assert finished["changed"] == [str(old[0])] and finished["deleted_commands"] == 1
    orch.store.forget()
    assert [type(e).__name__ for e in orch.store.events_of(old[0])][-1] == "RetriedAs"
    assert orch.store.events_of(old[1]) == []
    run_until_idle(orch, agent)
    invariants_hold(orch, agent_state, expected_commands=[*old, retried.command_id], pruned=[old[1]])


def test_a_stale_partial_archive_is_replaced(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    """A prune killed while it wrote FILE.partial left nothing else: the next one starts afresh."""
    orch.seed(1, 1)
    old = run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"})])
    archive = tmp_path / "a.jsonl"
    (tmp_path / "a.jsonl.partial").write_text('{"format": "orchestrator.archive/1", "kind": "hea')
    report = prune(orch.store, orch.read_models, PruneRequest(datetime.now(UTC), archive))
    assert report.deleted_commands == 1 and not (tmp_path / "a.jsonl.partial").exists()
    assert [c.command_id for c in iter_archive(archive)] == old
    assert oct(archive.stat().st_mode & 0o777) == "0o600"


def test_a_prune_and_a_rebuild_exclude_each_other(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(1, 1)
    run_flows(orch, agent, [("RemoveVm", {"vm_id": "vm-0001"})])
    before = event_count(store_url)
    with orch.read_models.tables.exclusive("rebuild") as got:
        assert got
        busy = cli(store_url, agent_state, "prune", "--ended-before", now(), "--archive", str(tmp_path / "a"))
    assert "holds this store's lock" in one_error_line(busy, 13)
    assert event_count(store_url) == before and not (tmp_path / "a").exists()


# ---- the log's gaps -----------------------------------------------------------------------------------


def test_catch_up_and_discovery_read_past_the_gaps_a_prune_leaves(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(4, 1)
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    old = [orch.submit("RemoveVm", {"vm_id": f"vm-000{n}"}).command_id for n in (1, 2, 3)]
    engine.run(threading.Event(), until_idle=True)
    head = orch.store.head()  # the engine's discovery has read up to here

    prune(orch.store, orch.read_models, PruneRequest(datetime.now(UTC), tmp_path / "a.jsonl"))

    # Another process accepts a command: its notification id is past every id read so far (SQLite
    # would reuse the rowids of the deleted newest rows, but the prune recorded itself first).
    other = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    try:
        newer = other.submit("RemoveVm", {"vm_id": "vm-0004"}).command_id
        accepted = [n for page in other.store.notifications(after=0) for n in page if n.originator_id == newer]
        assert accepted[0].id > head
    finally:
        other.close()
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)
    timer.start()
    try:
        engine.run(stop, until_idle=True)  # the same engine: discovery finds it after the gap
    finally:
        timer.cancel()
    orch.store.forget()
    assert orch.command(newer).status is CommandStatus.SUCCEEDED
    # The read models read the log from the start again, over every gap, and equal a rebuild.
    with orch.read_models.tables.write() as cur:
        cur.execute("UPDATE proj_tracking SET position = 0")
        for table in READ_MODEL_TABLES:
            cur.execute(f"DELETE FROM {table}")
    assert orch.read_models.catch_up() > 0
    invariants_hold(orch, agent_state, expected_commands=[*old, newer], pruned=old)
    assert [r.command_id for r in orch.read_models.queries.list_commands()] == [str(newer)]
    assert isinstance(orch.command(newer), RootCommand)
