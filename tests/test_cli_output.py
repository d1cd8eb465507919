"""Issue 16: what the command line prints, and how it is driven.

Every --json output is a documented, versioned model (`orchestrator schema`);
tables use the terminal's width and, piped, a wide one that never cuts an id;
global options work after the sub-command; help shows no `<bool>` and says
the special exit codes; shell completion is on; `--params` reads files and
stdin; `submit-many` reports each line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.bootstrap import Orchestrator
from orchestrator.cli import COMMANDS, app
from orchestrator.cli.schema import OUTPUTS, model_of
from orchestrator.testing import SimulatedAgent
from tests.conftest import REPO, cli_env, run_cli, run_until_idle
from tests.test_cli_helpers import cli, cli_json, cli_stdin, one_error_line


def conforms(output: str, doc: Any) -> None:
    """The document validates against the model `orchestrator schema OUTPUT` describes, format included."""
    spec = OUTPUTS[output]
    model = model_of(spec)
    items = doc if spec.is_list else [doc]
    assert isinstance(items, list)
    for item in items:
        model.model_validate(item)
        if "format" in model.model_fields:
            assert item["format"] == model.model_fields["format"].default, (output, item.get("format"))


def test_every_json_output_is_a_versioned_documented_model(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    seeded = cli_json(store_url, agent_state, "seed", "--vms", "2", "--disks", "1")
    conforms("seed", seeded)
    conforms("flows", cli_json(store_url, agent_state, "flows"))
    submitted = cli_json(store_url, agent_state, "submit", "RemoveVm", "--params", '{"vm_id": "vm-0001"}')
    conforms("submit", submitted)
    ident = submitted["command_id"]
    task = cli_json(store_url, agent_state, "show", ident)["tasks"][0]["task_id"]
    for output, args, code in (
        ("show", ["show", ident], 0),
        ("list", ["list"], 0),
        ("tasks", ["tasks", "--entity", "vm:vm-0001"], 0),
        ("entities", ["entities", "--task", task], 0),
        ("active", ["active"], 0),
        ("locks", ["locks"], 0),
        ("inventory", ["inventory"], 0),
        ("inspect", ["inspect"], 20),
        ("inspect-command", ["inspect", "--command", ident], 0),
        ("projections-status", ["projections", "status"], 0),
        ("cancel", ["cancel", ident], 0),
    ):
        conforms(output, cli_json(store_url, agent_state, *args, code=code))
    run_until_idle(orch, agent)
    conforms("wait", cli_json(store_url, agent_state, "wait", ident, code=11))
    conforms("run", cli_json(store_url, agent_state, "run", "--until-idle", "--timeout", "30"))
    conforms("projections-rebuild", cli_json(store_url, agent_state, "projections", "rebuild"))
    conforms("projections-rebuild-verify", cli_json(store_url, agent_state, "projections", "rebuild", "--verify"))
    conforms("retry", cli_json(store_url, agent_state, "retry", ident))


def test_schema_prints_the_json_schema_of_any_output() -> None:
    index = json.loads(run_cli("schema", "--json", check=True).stdout)
    assert index["format"] == "orchestrator.schema-index/1"
    assert {"show", "list", "wait", "submit-many", "inspect-command", "locks"} <= set(index["outputs"])
    shown = json.loads(run_cli("schema", "show", check=True).stdout)
    assert shown["properties"]["format"]["const"] == "orchestrator.command/1"
    assert {"retry_of", "retries", "terminated", "terminate_reason"} <= set(shown["properties"])
    locks = json.loads(run_cli("schema", "locks", check=True).stdout)
    assert locks["type"] == "array"
    assert "no output named 'nope'" in one_error_line(run_cli("schema", "nope"), 4)


def test_tables_are_wide_when_piped_and_never_cut_an_id(store_url: str, orch: Orchestrator, agent_state: Path) -> None:
    orch.seed(1, 2)
    ident = str(orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "golden " * 8}).command_id)
    piped = cli_env()
    piped.pop("COLUMNS", None)
    for env in (piped, cli_env(COLUMNS="70")):
        for args in (["list"], ["show", ident], ["inspect", "--no-agent"]):
            proc = cli(store_url, agent_state, *args, env=env)
            assert proc.returncode in (0, 20), proc.stderr
            assert ident in proc.stdout, (args, env.get("COLUMNS"))
    wide = cli(store_url, agent_state, "list", env=piped)
    assert max(len(line) for line in wide.stdout.splitlines()) > 160, "piped: wider than the old fixed 160"
    narrow = cli(store_url, agent_state, "list", env=cli_env(COLUMNS="70"))
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, "COLUMNS is honoured (ids still whole)"


def test_global_options_work_before_and_after_the_command(
    store_url: str, orch: Orchestrator, agent_state: Path
) -> None:
    orch.seed(1, 1)
    before = run_cli("--store", store_url, "--agent-state", str(agent_state), "list", "--json")
    after = run_cli("list", "--json", "--store", store_url, "--agent-state", str(agent_state))
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout)["commands"] == json.loads(after.stdout)["commands"] == []
    logged = run_cli(
        "submit", "CreateSnapshot", "--params", '{"vm_id": "vm-0001"}', "--store", store_url, "--verbose",
        "--log-format", "json",
    )  # fmt: skip
    assert logged.returncode == 0, logged.stderr
    lines = [json.loads(line) for line in logged.stderr.splitlines()]
    accepted = next(line for line in lines if line.get("event") == "accepted")
    assert accepted["command_id"] == logged.stdout.strip() and accepted["flow"] == "CreateSnapshot"
    assert {"time", "level", "logger", "message"} <= set(accepted) and accepted["level"] == "info"
    bad = one_error_line(run_cli("list", "--log-format", "xml", "--store", store_url), 2)
    assert "must be one of text, json" in bad


def _help_of(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="orchestrator")
    assert result.exit_code == 0, (args, result.output)
    return result.output


def test_help_shows_no_bool_and_says_the_special_exit_codes() -> None:
    root = run_cli("--help", check=True).stdout
    assert "<bool>" not in root and "--install-completion" in root
    groups = {"agent": ["show", "faults"], "projections": ["status", "rebuild", "run"]}
    for name in COMMANDS:
        for sub in groups.get(name, [None]):  # type: ignore[list-item]
            text = _help_of([name] if sub is None else [name, sub])
            assert "<bool>" not in text, (name, sub)
            assert "--store" in text, f"{name} {sub or ''}: global options follow the command too"
    assert "20 one or more commands are in flight" in " ".join(_help_of(["inspect"]).split())
    for name, says in (
        ("wait", "11 one or more failed"),
        ("submit", "11 the command failed, 9 --timeout expired"),
        ("show", "6 no such command"),
        ("run", "8 another engine"),
        ("terminate", "5 it has ended already"),
        ("retry", "5 refused"),
    ):
        assert says in " ".join(_help_of([name]).split()), name


def test_shell_completion_is_on() -> None:
    script = run_cli("--show-completion", "bash", env=cli_env(SHELL="/bin/bash"), check=True).stdout
    assert "_ORCHESTRATOR_COMPLETE" in script and "complete" in script
    completed = subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(_ORCHESTRATOR_COMPLETE="complete_bash", COMP_WORDS="orchestrator sub", COMP_CWORD="1"),
        check=False,
    )
    assert completed.returncode == 0 and {"submit", "submit-many"} <= set(completed.stdout.split()), completed


def test_params_come_from_a_file_or_stdin(
    store_url: str, orch: Orchestrator, agent_state: Path, tmp_path: Path
) -> None:
    orch.seed(2, 1)
    params = tmp_path / "params.json"
    params.write_text('{"vm_id": "vm-0001", "description": "from a file"}\n')
    from_file = cli_json(store_url, agent_state, "submit", "CreateSnapshot", "--params", f"@{params}")
    assert cli_json(store_url, agent_state, "show", from_file["command_id"])["params"]["description"] == "from a file"
    from_stdin = cli_stdin(
        '{"vm_id": "vm-0002"}', "submit", "CreateSnapshot", "--params", "-", "--store", store_url, "--json"
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout)["flow"] == "CreateSnapshot"
    missing = one_error_line(cli(store_url, agent_state, "submit", "RemoveVm", "--params", "@/nonexistent.json"), 4)
    assert "cannot read the --params file '/nonexistent.json': No such file or directory" in missing
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"vm_id": "vm-0001", "description": "x" * 20_000}))
    assert "the limit is 16384" in one_error_line(
        cli(store_url, agent_state, "submit", "CreateSnapshot", "--params", f"@{big}"), 4
    )


def test_submit_many_reports_each_line(store_url: str, orch: Orchestrator, agent_state: Path, tmp_path: Path) -> None:
    orch.seed(3, 1)
    lines = [
        '{"flow": "RemoveVm", "params": {"vm_id": "vm-0001"}}',
        "",
        "not json",
        '{"flow": "HibernateVm", "params": {"vm_id": "vm-0001"}}',
        '{"flow": "CreateSnapshot", "params": {"vm_id": "vm-0002", "description": "nightly"}}',
        '{"flow": "Nope", "params": {}}',
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    proc = cli(store_url, agent_state, "submit-many", str(batch), "--json")
    assert proc.returncode == 4, proc.stderr  # the first refused line (3) is invalid input
    report = json.loads(proc.stdout)
    assert report["format"] == "orchestrator.submit-many/1"
    assert (report["accepted"], report["refused"]) == (2, 3)
    by_line = {entry["line"]: entry for entry in report["lines"]}
    assert sorted(by_line) == [1, 3, 4, 5, 6], "blank lines are skipped; numbers are the file's"
    assert by_line[1]["accepted"] and by_line[5]["accepted"]
    assert "not valid JSON" in by_line[3]["error"] and by_line[3]["exit_code"] == 4
    assert "is locked (write) by RemoveVm command" in by_line[4]["error"] and by_line[4]["exit_code"] == 5
    assert "unknown flow 'Nope'" in by_line[6]["error"]
    listed = {c["command_id"] for c in cli_json(store_url, agent_state, "list")["commands"]}
    assert listed == {by_line[1]["command_id"], by_line[5]["command_id"]}, "the accepted lines are recorded"

    people = cli_stdin(
        '{"flow": "RemoveVm", "params": {"vm_id": "vm-0003"}}\n', "submit-many", "-", "--store", store_url
    )
    assert people.returncode == 0, people.stderr
    assert people.stdout.startswith("line 1: ") and people.stdout.strip().endswith("1 accepted, 0 refused")


@pytest.mark.parametrize("args", [["--help"], ["show", "--help"]])
def test_help_needs_no_store(args: list[str], tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "orchestrator", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=cli_env(), check=False)
    assert proc.returncode == 0 and not os.listdir(tmp_path), "help creates nothing"


def test_usage_errors_are_one_line_and_no_command_prints_the_help() -> None:
    interval = one_error_line(run_cli("projections", "run", "--interval", "-1"), 2)
    assert "Invalid value for '--interval'" in interval and "0.01" in interval
    assert "Missing argument 'command_id'" in one_error_line(run_cli("show"), 2)
    typo = one_error_line(run_cli("lsit"), 2)
    assert "No such command 'lsit'. Did you mean 'list'" in typo, "suggested among every command"
    bare = run_cli()
    assert bare.returncode == 2 and bare.stderr.startswith("Usage: orchestrator [OPTIONS] COMMAND")


def test_the_json_log_format_carries_every_structured_field() -> None:
    """What the engine passes with `extra={...}` (ids, counts, verdicts) comes out as fields of the line."""
    import logging
    import uuid

    from orchestrator.cli.logs import JsonFormatter, TextFormatter

    ident = uuid.uuid4()
    record = logging.LogRecord(
        "orchestrator.engine.lifecycle", logging.WARNING, __file__, 1, "task %s ended", ("t1",), None
    )
    for key, value in {"event": "task_ended", "command_id": ident, "tasks": 3, "pool": "default"}.items():
        setattr(record, key, value)
    line = json.loads(JsonFormatter().format(record))
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"]) == (
        "warning",
        "orchestrator.engine.lifecycle",
        "task t1 ended",
    )
    assert (line["event"], line["command_id"], line["tasks"], line["pool"]) == ("task_ended", str(ident), 3, "default")
    text = TextFormatter().format(record)
    assert text.endswith(f"task t1 ended event=task_ended command_id={ident} tasks=3 pool=default")
