"""Issue 16: user text is one inert line, refused otherwise, and shown safely whatever the store holds.

Names, descriptions and reasons that hold a newline, an escape sequence or
another control character are refused with one line (exit 4) and nothing is
recorded; sizes are capped. Text already in a store (written before these
checks, or by another program) is printed with its control characters escaped,
and Rich markup or emoji codes in it are shown literally.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from tests.conftest import cli_env
from tests.test_bad_input import recorded_events
from tests.test_cli_helpers import cli, cli_json, one_error_line

UNSAFE = [
    ("newline", "golden\nimage", "a newline (U+000A)"),
    ("escape", "golden\x1b[31m", "an escape (ESC) (U+001B)"),
    ("bell", "golden\x07", "a control character (U+0007)"),
    ("c1", "golden\x9b2J", "a control character (U+009B)"),
    ("bidi", "golden\u202eegami", "a bidirectional control (U+202E)"),
]


@pytest.mark.parametrize(("text", "says"), [u[1:] for u in UNSAFE], ids=[u[0] for u in UNSAFE])
def test_names_and_descriptions_with_control_characters_are_refused(
    store_url: str, orch: Orchestrator, agent_state: Path, text: str, says: str
) -> None:
    orch.seed(1, 1)
    before = recorded_events(store_url)
    for flow, field in (("CreateTemplate", "name"), ("CreateSnapshot", "description")):
        params = json.dumps({"vm_id": "vm-0001", field: text})
        line = one_error_line(cli(store_url, agent_state, "submit", flow, "--params", params), 4)
        assert f"{field}: must be one line of plain text, not {says}" in line, line
    assert recorded_events(store_url) == before


def test_reasons_are_one_line_of_at_most_200_characters(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    before = recorded_events(store_url)
    for verb in ("cancel", "terminate"):
        for reason, says in (
            ("wrong vm\nerror: forged", "contains a newline (U+000A) at character 9"),
            ("\x1b]0;owned\x07", "contains an escape (ESC) (U+001B) at character 1"),
            ("r" * 201, "is 201 characters long; the limit is 200"),
        ):
            line = one_error_line(cli(store_url, agent_state, verb, ident, "--reason", reason), 4)
            assert says in line, (verb, line)
    assert "give a reason" in one_error_line(cli(store_url, agent_state, "terminate", ident, "--reason", " "), 4)
    assert recorded_events(store_url) == before, "a refused reason records nothing"
    accepted = cli_json(store_url, agent_state, "cancel", ident, "--reason", "r" * 200)
    assert accepted["requested"] is True and accepted["reason"] == "r" * 200


def test_a_second_cancel_says_the_first_was_requested(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    ident = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    first = cli(store_url, agent_state, "cancel", ident, "--reason", "wrong vm")
    assert first.returncode == 0 and first.stdout.strip() == f"cancel requested for {ident}"
    second = cli(store_url, agent_state, "cancel", ident, "--reason", "another reason")
    assert second.returncode == 0
    assert second.stdout.strip() == f"cancel was already requested for {ident} (reason: wrong vm)"
    again = cli_json(store_url, agent_state, "cancel", ident, "--reason", "a third")
    assert (again["requested"], again["reason"]) == (False, "wrong vm")


def test_stored_text_is_printed_inert(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(2, 1)
    template = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "[red]x[/] :smile:"})
    victim = orch.submit("RemoveVm", {"vm_id": "vm-0002"})
    # A reason written by an older version or another program, which did not refuse control characters.
    command = orch.command(victim.command_id)
    command.request_cancel("evil\x1b[2J\nerror: forged line\x07")
    orch.save(command)

    shown = cli(store_url, agent_state, "show", str(victim.command_id))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "evil\\x1b[2J\\nerror: forged line\\x07" in shown.stdout
    assert not any(line.startswith("error: forged") for line in shown.stdout.splitlines())

    for args in (["show", str(template.command_id)], ["list"]):
        proc = cli(store_url, agent_state, *args, env=cli_env(COLUMNS="250"))
        assert proc.returncode == 0, proc.stderr
        assert "([red]x[/] :smile:)" in proc.stdout, "markup and emoji codes in user text are shown literally"
    as_json = cli_json(store_url, agent_state, "show", str(victim.command_id))
    assert as_json["cancel_reason"] == "evil\x1b[2J\nerror: forged line\x07", "JSON keeps the text exactly"


def test_an_error_about_user_text_stays_one_line(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 1)
    for args in (
        ["submit", "Remove\nVm\x1b[2J"],
        ["list", "--type", "a\nerror: forged\x1b[31m"],
        ["show", "abc\ndef\x1b"],
    ):
        proc = cli(store_url, agent_state, *args)
        line = one_error_line(proc, proc.returncode)
        assert proc.returncode in (4, 6) and "\x1b" not in line, (args, line)
