"""Issue 16: asking about things that do not exist, and naming commands by a prefix of their id.

An unknown command, entity or task is "not found" (exit 6, one line); a filter
that is well formed but matches nothing is an empty answer that says so; a
malformed value is an input error (exit 4). Real subprocesses, both stores.
"""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

from orchestrator.bootstrap import Orchestrator
from tests.test_cli_helpers import cli, cli_json, one_error_line

TWINS = ("abcdef00-0000-4000-8000-000000000001", "abcdef00-0000-4000-8000-000000000002")


def test_unknown_commands_entities_and_tasks_are_not_found(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    for args, says in (
        (["tasks", "--entity", "vm:nope"], "no vm nope in the inventory"),
        (["locks", "--entity", "vm:nope"], "no vm nope in the inventory"),
        (["list", "--entity", "storage_domain:sd-9"], "no storage domain sd-9 in the inventory"),
        (["entities", "--task", str(uuid4())], "in the entity-task index"),
        (["list", "--parent", "abcdef12"], "no command id starts with abcdef12"),
        (["show", str(uuid4())], "no command"),
        (["cancel", str(uuid4())], "no command"),
    ):
        line = one_error_line(cli(store_url, agent_state, *args), 6)
        assert says in line, (args, line)


def test_malformed_filters_are_input_errors(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    for args, says in (
        (["list", "--type", "Nope"], "unknown command type 'Nope'; flows: CreateSnapshot"),
        (["list", "--status", "done"], "--status must be one of"),
        (["entities", "--task", "nope"], "'nope' is not a task id"),
        (["tasks", "--entity", "vm"], "is not TYPE:ID"),
        (["show", "abcde"], "too short: give at least 6 characters"),
    ):
        line = one_error_line(cli(store_url, agent_state, *args), 4)
        assert says in line, (args, line)
    assert "RemoveImage" in one_error_line(cli(store_url, agent_state, "list", "--type", "Nope"), 4)


def test_filters_that_match_nothing_answer_an_empty_list_and_say_so(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 2)
    removal = orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    assert cli_json(store_url, agent_state, "list", "--type", "CreateSnapshot")["commands"] == []
    people = cli(store_url, agent_state, "list", "--type", "CreateSnapshot")
    assert people.returncode == 0 and "no commands match" in people.stdout and "0 command(s)" in people.stdout

    children = cli_json(store_url, agent_state, "list", "--parent", str(removal.command_id))["commands"]
    assert [c["command_type"] for c in children] == ["RemoveImage", "RemoveImage"]
    by_child_type = cli_json(store_url, agent_state, "list", "--type", "RemoveImage")["commands"]
    assert {c["command_id"] for c in by_child_type} == {c["command_id"] for c in children}

    idle_domain = cli(store_url, agent_state, "tasks", "--entity", "storage_domain:sd-2")
    assert idle_domain.returncode == 0
    assert "no tasks on storage_domain:sd-2" in idle_domain.stdout and "has no running tasks" in idle_domain.stdout
    no_locks = cli(store_url, agent_state, "locks", "--entity", "storage_domain:sd-2")
    assert no_locks.returncode == 0 and "no locks held" in no_locks.stdout
    assert cli_json(store_url, agent_state, "locks", "--entity", "storage_domain:sd-2") == []


def test_at_version_must_be_an_event_of_the_command(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    orch.request_cancel(ident, "not now")
    for command in (["show", ident], ["inspect", "--command", ident]):
        zero = one_error_line(cli(store_url, agent_state, *command, "--at-version", "0"), 4)
        assert "--at-version 0 is not an event number" in zero and "does not exist" not in zero
        beyond = one_error_line(cli(store_url, agent_state, *command, "--at-version", "999"), 4)
        assert f"command {ident} has only 2 event(s); --at-version must be 1 to 2" in beyond
    first = cli_json(store_url, agent_state, "show", ident, "--at-version", "1")
    assert (first["status"], first["cancel_requested"], first["version"]) == ("accepted", False, 1)
    assert cli_json(store_url, agent_state, "show", ident, "--at-version", "2")["cancel_reason"] == "not now"


def test_a_unique_prefix_names_a_command_wherever_an_id_is_taken(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(3, 1)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    prefix = ident[:8]
    assert cli_json(store_url, agent_state, "show", prefix)["command_id"] == ident
    assert cli_json(store_url, agent_state, "show", prefix.upper())["command_id"] == ident
    history = cli_json(store_url, agent_state, "inspect", "--command", ident[:6])
    assert history["command_id"] == ident
    cancelled = cli_json(store_url, agent_state, "cancel", prefix, "--reason", "by prefix")
    assert (cancelled["command_id"], cancelled["reason"]) == (ident, "by prefix")


def test_an_ambiguous_prefix_lists_the_candidates_in_one_line(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(2, 1)
    for vm, twin in zip(("vm-0001", "vm-0002"), TWINS, strict=True):
        proc = cli(store_url, agent_state, "submit", "RemoveVm", "--params", json.dumps({"vm_id": vm}), "--id", twin)
        assert proc.returncode == 0, proc.stderr
    for args in (["show", "abcdef00"], ["cancel", "abcdef"], ["wait", "abcdef00-0000", "--timeout", "1"]):
        line = one_error_line(cli(store_url, agent_state, *args), 4)
        assert "is ambiguous" in line and TWINS[0] in line and TWINS[1] in line, line
    assert cli_json(store_url, agent_state, "show", TWINS[1])["command_id"] == TWINS[1]
