"""`flows`, `seed`, `submit`, `submit-many`, `cancel`, `retry`, `terminate`: what a user asks of the orchestrator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

import typer

from orchestrator.cli.context import JsonOpt, open_orchestrator, out, print_json
from orchestrator.cli.stores import open_session
from orchestrator.cli.terminal import printable
from orchestrator.cli.waiting import TimeoutOpt
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from orchestrator.documents import SubmitManyLine
    from orchestrator.errors import OrchestratorError
    from orchestrator.service import SubmitResult

app = typer.Typer()
ParamsOpt = Annotated[
    str, typer.Option("--params", help="flow parameters: a JSON object, @FILE to read it from a file, - for stdin")
]
CommandIdArg = Annotated[str, typer.Argument(help="command id (or a unique prefix of 6+ characters)")]


@app.command()
def flows(as_json: JsonOpt = False) -> None:
    """List the flows and their parameters."""
    from orchestrator.documents import FlowView
    from orchestrator.flows import FLOWS

    views = [
        FlowView(name=name, description=f.description, parameters=f.params_model.model_json_schema())
        for name, f in FLOWS.items()
    ]
    if as_json:
        print_json(views)
        return
    from orchestrator.cli.render import plain, table

    shown = table("flow", "parameters", "what it does", title="flows")
    for name, flow in FLOWS.items():
        fields = ", ".join(f"{k}{'' if v.is_required() else '?'}" for k, v in flow.params_model.model_fields.items())
        shown.add_row(plain(name), plain(fields), plain(flow.description))
    out.print(shown)


@app.command()
def seed(
    vms: Annotated[int, typer.Option(min=0, max=10_000, help="VMs to create")] = 4,
    disks: Annotated[int, typer.Option(min=0, max=64, help="disks per VM")] = 2,
    status: Annotated[str, typer.Option(help="initial VM status: up or down")] = "up",
    pool: Annotated[
        str, typer.Option(help="the storage pool (see 'pools add'); its agent must be a simulator")
    ] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Create VMs with disks in the inventory, and their images on the pool's simulated agent.

    Shows its progress on a terminal. Exit codes: 4 bad option; 5 another seed ran at the same time;
    6 no such pool; 7 the pool's agent cannot be reached or is not a simulator.
    """
    from orchestrator.cli.progress import seed_progress
    from orchestrator.collector import collector_paused
    from orchestrator.documents import as_document

    if status not in ("up", "down"):
        raise InputError("--status must be up or down")
    with open_orchestrator(create=True) as orch, seed_progress(orch, vms, disks), collector_paused():
        result = orch.seed(vms, disks, status, pool=pool)
    if as_json:
        print_json(as_document(result, "seed"))
        return
    for vm in result.vms:
        sys.stdout.write(f"{vm.vm_id}: {', '.join(vm.disk_ids) or 'no disks'}\n")
    sys.stdout.write(f"storage domains: {', '.join(result.storage_domains)}\n")


@app.command()
def submit(
    flow: Annotated[str, typer.Argument(help="flow name (see 'orchestrator flows')")],
    params: ParamsOpt = "{}",
    command_id: Annotated[
        str | None, typer.Option("--id", help="command id (UUID); doubles as idempotency key")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="then wait until the command ends")] = False,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate and durably accept a command with all its expected tasks and locks; print its id.

    The agent is not called: a running engine ('orchestrator run') does the work. Exit codes: 4 invalid
    parameters or unknown flow; 5 refused (validation, an entity locked, the --id used with other
    parameters); with --wait: 11 the command failed, 9 --timeout expired first.
    """
    ident = None
    if command_id is not None:
        try:
            ident = UUID(command_id)
        except ValueError:
            raise InputError(f"--id {command_id[:40]!r} is not a UUID") from None
    if timeout is not None and not wait:
        raise InputError("--timeout goes with --wait")
    raw = read_params(params, flow)
    with open_session("write", create=True) as session:
        result = session.service.submit(flow, raw, ident)
        if not wait:
            _print_submitted(result, as_json)
            return
        if not as_json:
            _print_submitted(result, as_json=False)
        from orchestrator.cli.waiting import exit_code, print_report, wait_for

        report = wait_for(session, [result.command_id], timeout)
    if as_json:
        from orchestrator.documents import SubmitAndWaitReport

        print_json(SubmitAndWaitReport(submitted=result.model_dump(mode="json"), wait=report))
    else:
        print_report(report)
    raise typer.Exit(exit_code(report))


def _print_submitted(result: SubmitResult, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    sys.stdout.write(f"{result.command_id}\n")
    sys.stdout.flush()
    if result.duplicate:
        print("(already accepted with these parameters)", file=sys.stderr)


def read_params(value: str, flow: str) -> str:
    """`--params`: the JSON text itself, `@FILE` (read from a file), or `-` (read from stdin)."""
    from orchestrator.flows.base import MAX_PARAMS_BYTES

    if value == "-":
        where, data = "from stdin", sys.stdin.buffer.read(MAX_PARAMS_BYTES + 1)
    elif value.startswith("@"):
        where = f"in {value[1:]!r}"
        try:
            with Path(value[1:]).expanduser().open("rb") as f:
                data = f.read(MAX_PARAMS_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read the --params file {value[1:]!r}: {exc.strerror or exc}") from None
    else:
        return value
    if len(data) > MAX_PARAMS_BYTES:
        limit = MAX_PARAMS_BYTES
        raise InputError(f"{flow} parameters {where} are over {limit} bytes; the limit is {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{flow} parameters {where} are not UTF-8 text") from None


@app.command("submit-many")
def submit_many(
    file: Annotated[str, typer.Argument(help='JSON Lines: {"flow": NAME, "params": {...}} a line; - for stdin')],
    as_json: JsonOpt = False,
) -> None:
    """Accept the commands of a file, one JSON object a line, validated one after another as if submitted alone.

    Prints, per line, the command id or why the line was refused; the accepted ones are recorded
    together. Exit codes: 0 every line accepted; otherwise the exit code of the first refused line
    (4 invalid, 5 refused).
    """
    from orchestrator.cli.submit_many import parse_lines, report_lines

    requests, refused = parse_lines(_read_lines(file))
    with open_session("write", create=True) as session:
        answers: list[SubmitResult | OrchestratorError] = (
            session.service.submit_many([(flow, params) for _, flow, params in requests]) if requests else []
        )
    report = report_lines(requests, answers, refused)
    if as_json:
        print_json(report)
    else:
        _print_lines(report.lines)
    first_refusal = next((line.exit_code for line in report.lines if not line.accepted), None)
    raise typer.Exit(first_refusal or 0)


def _read_lines(file: str) -> list[str]:
    if file == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(file).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise InputError(f"cannot read {file[:200]!r}: {reason}") from None


def _print_lines(lines: list[SubmitManyLine]) -> None:
    for line in lines:
        if line.accepted:
            again = " (already accepted)" if line.duplicate else ""
            sys.stdout.write(f"line {line.line}: {line.command_id} {line.flow}{again}\n")
        else:
            sys.stdout.write(f"line {line.line}: refused: {printable(line.error or '')}\n")
    accepted = sum(1 for line in lines if line.accepted)
    sys.stdout.write(f"{accepted} accepted, {len(lines) - accepted} refused\n")


@app.command()
def cancel(
    command_id: CommandIdArg,
    reason: Annotated[str, typer.Option(help="why (one line, at most 200 characters)")] = "cancelled by user",
    as_json: JsonOpt = False,
) -> None:
    """Ask the engine to cancel a command: running tasks are stopped, the rest never start; it fails.

    A second cancel records nothing and says what was asked first. Exit codes: 4 bad reason;
    5 too late (its end action has begun, or it has ended); 6 no such command.
    """
    with open_session("write") as session:
        result = session.service.request_cancel(session.resolve_command_id(command_id), reason)
    if as_json:
        print_json(result)
    elif result.requested:
        sys.stdout.write(f"cancel requested for {result.command_id}\n")
    else:
        reason = printable(result.reason)
        sys.stdout.write(f"cancel was already requested for {result.command_id} (reason: {reason})\n")


@app.command()
def retry(command_id: CommandIdArg, as_json: JsonOpt = False) -> None:
    """Accept a new command with the flow and parameters of an ended one; print the new id.

    The two are linked in both histories ('show' lists them). Refused while the original is in
    flight; a terminated command may be retried at once. Exit codes: 4 its parameters are no longer
    valid; 5 refused (in flight, validation, an entity locked); 6 no such command.
    """
    with open_session("write") as session:
        result = session.service.retry(session.resolve_command_id(command_id))
    if as_json:
        print_json(result)
    else:
        sys.stdout.write(f"{result.command_id}\n")
        print(f"(retries {result.retry_of}: {printable(result.summary)})", file=sys.stderr)


@app.command()
def terminate(
    command_id: CommandIdArg,
    reason: Annotated[str, typer.Option(help="why: kept in its history (one line, at most 200 characters)")],
    as_json: JsonOpt = False,
) -> None:
    """End a command at once, failed and flagged, when its agent is gone for good.

    Every unfinished task is marked terminated by the operator and every lock the command holds is
    released, in one transaction; if the agent comes back, the engine stops and clears the tasks it
    had. Exit codes: 4 bad reason; 5 it has ended already; 6 no such command.
    """
    with open_session("write") as session:
        result = session.service.terminate(session.resolve_command_id(command_id), reason)
    if as_json:
        print_json(result)
        return
    stop = f"; {len(result.to_stop)} to stop if the agent comes back" if result.to_stop else ""
    sys.stdout.write(
        f"terminated {result.command_id}: {len(result.terminated_tasks)} task(s) ended as terminated, "
        f"{len(result.released_locks)} lock(s) released{stop}\n"
    )
