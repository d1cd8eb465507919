"""`schema [OUTPUT]`: the JSON Schema of what a command prints with --json.

Every output is a documented pydantic model; this catalogue names the model of
each command's --json output (and of the variants some options print), so a
program can validate what it reads. Docs: docs/cli.md.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from orchestrator.cli.context import JsonOpt
from orchestrator.errors import InputError

app = typer.Typer()


@dataclass(frozen=True)
class Output:
    """What one command prints with --json: a model (or a list of them), and the versioned kind it carries."""

    command: str
    model: str  # "module:Class"
    is_list: bool = False
    kind: str | None = None  # for a model defined elsewhere: printed with `format` = orchestrator.<kind>/1


OUTPUTS = {
    o.command.replace(" ", "-").replace("--", ""): o
    for o in (
        Output("flows", "orchestrator.documents:FlowView", is_list=True),
        Output("seed", "orchestrator.testing.seed:SeedResult", kind="seed"),
        Output("submit", "orchestrator.service:SubmitResult"),
        Output("submit --wait", "orchestrator.documents:SubmitAndWaitReport"),
        Output("submit-many", "orchestrator.documents:SubmitManyReport"),
        Output("cancel", "orchestrator.service:CancelResult"),
        Output("retry", "orchestrator.service:RetryResult"),
        Output("terminate", "orchestrator.service:TerminateResult"),
        Output("wait", "orchestrator.documents:WaitReport"),
        Output("run", "orchestrator.documents:RunReport"),
        Output("list", "projections.documents:CommandListView"),
        Output("show", "orchestrator.documents:CommandView"),
        Output("tasks", "projections.documents:EntityTasksView"),
        Output("entities", "projections.documents:TaskEntitiesView"),
        Output("active", "projections.documents:ActiveTasksView"),
        Output("locks", "orchestrator.documents:LockView", is_list=True),
        Output("inventory", "orchestrator.documents:InventoryItemView", is_list=True),
        Output("inspect", "orchestrator.inspection:InspectionReport", kind="inspection"),
        Output("inspect --command", "orchestrator.inspection:CommandHistory", kind="command-history"),
        Output("projections status", "projections.documents:ProjectionStatusView", is_list=True),
        Output("projections rebuild", "projections.documents:ProjectionRebuildView", is_list=True),
        Output("projections rebuild --verify", "projections.documents:ProjectionCheckView", is_list=True),
        Output("projections run", "projections.documents:ProjectionsRunReport"),
        Output("demo", "orchestrator.documents:DemoReport"),
        Output("agent show", "orchestrator.cli.agent:SimulatedAgentView"),
        Output("agent faults", "orchestrator.testing.faults:FaultConfig"),
    )
}


def model_of(output: Output) -> Any:
    module, name = output.model.split(":")
    model = getattr(importlib.import_module(module), name)
    if output.kind is not None:
        from orchestrator.documents import versioned

        model = versioned(model, output.kind)
    return model


def schema_of(output: Output) -> dict[str, Any]:
    from pydantic import TypeAdapter

    model = model_of(output)
    shape: Any = list[model] if output.is_list else model  # type: ignore[valid-type]
    made: dict[str, Any] = TypeAdapter(shape).json_schema()
    made["title"] = f"orchestrator {output.command} --json"
    return made


def format_of(output: Output) -> str | None:
    field = model_of(output).model_fields.get("format")
    return None if field is None else str(field.default)


@app.command()
def schema(
    output: Annotated[
        str | None, typer.Argument(help="a command (list, show, ...; 'inspect-command', 'submit-wait' ...)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The JSON Schema of a command's --json output; without one, every output and its format.

    Outputs with options of their own: submit-wait (submit --wait), inspect-command (inspect --command),
    projections-status, projections-rebuild, projections-rebuild-verify, projections-run, agent-show,
    agent-faults. Exit codes: 4 no such output.
    """
    if output is not None:
        found = OUTPUTS.get(output.strip().replace(" ", "-").replace("--", ""))
        if found is None:
            raise InputError(f"no output named {output[:40]!r}; known: {', '.join(OUTPUTS)}")
        sys.stdout.write(json.dumps(schema_of(found), indent=2) + "\n")
        return
    index = {
        name: {"command": o.command, "format": format_of(o), "list": o.is_list, "model": o.model}
        for name, o in OUTPUTS.items()
    }
    if as_json:
        sys.stdout.write(json.dumps({"format": "orchestrator.schema-index/1", "outputs": index}, indent=2) + "\n")
        return
    for name, entry in index.items():
        shape = "list of " if entry["list"] else ""
        sys.stdout.write(f"{name:28} {shape}{entry['format'] or '(no format field)'}\n")
