"""`flows`, `seed`, `submit`, `cancel`: what a user asks of the orchestrator."""

from __future__ import annotations

import sys
from typing import Annotated
from uuid import UUID

import typer
from rich.table import Table

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json
from orchestrator.errors import InputError

app = typer.Typer()


@app.command()
def flows(as_json: JsonOpt = False) -> None:
    """List the flows and their parameters."""
    from orchestrator.documents import FlowView
    from orchestrator.flows import FLOWS

    if as_json:
        print_json(
            [
                FlowView(name=name, description=f.description, parameters=f.params_model.model_json_schema())
                for name, f in FLOWS.items()
            ]
        )
        return
    table = Table("flow", "parameters", "what it does")
    for name, flow in FLOWS.items():
        fields = ", ".join(f"{k}{'' if v.is_required() else '?'}" for k, v in flow.params_model.model_fields.items())
        table.add_row(name, fields, flow.description)
    out.print(table)


@app.command()
def seed(
    vms: Annotated[int, typer.Option(min=0, max=10_000, help="VMs to create")] = 4,
    disks: Annotated[int, typer.Option(min=0, max=64, help="disks per VM")] = 2,
    status: Annotated[str, typer.Option(help="initial VM status: up or down")] = "up",
    as_json: JsonOpt = False,
) -> None:
    """Create VMs with disks in the inventory, and their images on the simulated agent."""
    if status not in ("up", "down"):
        raise InputError("--status must be up or down")
    with open_orchestrator(create=True) as orch:
        result = orch.seed(vms, disks, status)
    if as_json:
        print_json(result)
        return
    for vm in result.vms:
        out.print(f"{vm.vm_id}: {', '.join(vm.disk_ids) or 'no disks'}")
    out.print(f"storage domains: {', '.join(result.storage_domains)}")


@app.command()
def submit(
    flow: Annotated[str, typer.Argument(help="flow name (see 'orchestrator flows')")],
    params: Annotated[str, typer.Option("--params", help="flow parameters as a JSON object")] = "{}",
    command_id: Annotated[
        str | None, typer.Option("--id", help="command id (UUID); doubles as idempotency key")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and durably accept a command with all its expected tasks; print its id."""
    ident = None
    if command_id is not None:
        try:
            ident = UUID(command_id)
        except ValueError:
            raise InputError(f"--id {command_id!r} is not a UUID") from None
    with open_orchestrator(create=True) as orch:
        result = orch.submit(flow, params, ident)
    if as_json:
        print_json(result)
    else:
        out.print(str(result.command_id))
        if result.duplicate:
            print("(already accepted with these parameters)", file=sys.stderr)


@app.command()
def cancel(command_id: str, reason: str = "cancelled by user") -> None:
    """Ask the engine to cancel a command: running tasks are stopped, the rest never start."""
    with open_orchestrator() as orch:
        result = orch.request_cancel(command_id, reason)
    if result.requested:
        out.print(f"cancel requested for {result.command_id}")
    else:
        out.print(f"cancel was already requested for {result.command_id} (reason: {result.reason})")
