"""The `orchestrator` command line: Typer, with Rich for people and --json for programs.

One module per sub-app; each command parses its options, makes one call and
renders a documented model (docs/cli.md). Every error is one line on stderr,
`error: ...`, and a documented exit code; store URLs are printed with passwords
hidden.

Start-up is kept short: a command's module is imported only when that command
runs (or its help is asked for), so `orchestrator --help` loads Typer alone and
`orchestrator show` never loads the engine, the agents or psycopg. To add a
command or a sub-app, register it here with one line (`lazy(...)`).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperGroup
from typer.exceptions import TyperException

from orchestrator.cli.context import AgentOpt, G, StoreOpt
from orchestrator.cli.logs import LOG_FORMATS, LogFormat, configure_logging
from orchestrator.cli.terminal import printable
from orchestrator.errors import OrchestratorError, StoreError

PROG = "orchestrator"


@dataclass(frozen=True)
class LazyCommand:
    """A command (or sub-app) known by name and one line of help until it is used."""

    target: str  # "module:function" for a command, "module:app" for a sub-app (a Typer)
    help: str
    group: bool = False


COMMANDS: dict[str, LazyCommand] = {}


def lazy(name: str, target: str, help: str, *, group: bool = False) -> None:
    COMMANDS[name] = LazyCommand(target, help, group)


lazy("flows", "orchestrator.cli.commands:flows", "List the flows and their parameters.")
lazy("seed", "orchestrator.cli.commands:seed", "Create VMs with disks in the inventory and on the simulated agent.")
lazy("submit", "orchestrator.cli.commands:submit", "Validate and durably accept a command; print its id.")
lazy("submit-many", "orchestrator.cli.commands:submit_many", "Accept a file of commands, one JSON object a line.")
lazy("cancel", "orchestrator.cli.commands:cancel", "Ask the engine to cancel a command.")
lazy("retry", "orchestrator.cli.commands:retry", "Accept a new command doing an ended command's work again.")
lazy("terminate", "orchestrator.cli.commands:terminate", "End a command at once, failed (its agent is gone).")
lazy("wait", "orchestrator.cli.waiting:wait", "Wait until commands end; the exit code says how.")
lazy("run", "orchestrator.cli.engine:run", "Run the engine: recover, then execute and poll.")
lazy("list", "orchestrator.cli.queries:list_commands", "List commands, filtered by status, type, parent or entity.")
lazy("show", "orchestrator.cli.queries:show", "A command, its children, tasks and outcome.")
lazy("tasks", "orchestrator.cli.queries:tasks", "Which tasks run on an entity.")
lazy("entities", "orchestrator.cli.queries:entities", "Which entities a task touches.")
lazy("active", "orchestrator.cli.queries:active", "Every task not yet cleared on the agent.")
lazy("locks", "orchestrator.cli.queries:locks", "Entity locks held now.")
lazy("inventory", "orchestrator.cli.queries:inventory", "The engine-side inventory.")
lazy("inspect", "orchestrator.cli.inspect:inspect", "Read-only crash replay: what recovery would decide.")
lazy("schema", "orchestrator.cli.schema:schema", "The JSON Schema of a command's --json output.")
lazy("demo", "orchestrator.cli.demo:demo", "The main job: two pools, four flows, SIGKILLed engine and agent, recovery.")
lazy("agent", "orchestrator.cli.agent:app", "The simulated host agent.", group=True)
lazy("projections", "orchestrator.cli.projections:app", "Read models: status, rebuild, verify, follow.", group=True)
lazy("serve", "orchestrator.cli.serve:serve", "Serve the REST API and the web console.")
lazy("pools", "orchestrator.cli.pools:app", "Storage pools and their agents.", group=True)
lazy("agents", "orchestrator.cli.pools:agents", "Each pool's agent: does it answer, how fast, how many tasks.")
lazy("engines", "orchestrator.cli.engines:engines", "Every engine on the store, its pools and epochs, its heartbeat.")
lazy("prune", "orchestrator.cli.prune:prune", "Archive, then remove, commands that ended before a date.")
lazy("archive", "orchestrator.cli.prune:app", "Archives written by prune: list what they hold.", group=True)


# ---- global options, accepted before and after the sub-command ------------------------------

VerboseOpt = Annotated[bool, typer.Option("--verbose", help="log what the process does (INFO)")]
LogFormatOpt = Annotated[
    str, typer.Option("--log-format", help="text, or json: one object a line (time, level, logger, message, ...)")
]


def _remember(name: str) -> Any:
    def set_global(value: Any) -> None:
        if value is None or value is False:
            return  # not given after the sub-command: what the group's options said stands
        if name == "log_format":
            value = _checked_log_format(value)
        setattr(G, name, value)
        if name in ("verbose", "log_format"):
            configure_logging(verbose=G.verbose, log_format=G.log_format)

    return set_global


def _checked_log_format(value: str) -> LogFormat:
    for known in LOG_FORMATS:
        if value == known:
            return known
    raise typer.BadParameter(f"must be one of {', '.join(LOG_FORMATS)}", param_hint="'--log-format'")


def _global_options_template(
    store: Annotated[
        str | None,
        typer.Option(
            "--store", expose_value=False, callback=_remember("store"), help="store URL (or ORCHESTRATOR_STORE)"
        ),
    ] = None,
    agent_state: Annotated[
        Path | None,
        typer.Option("--agent-state", expose_value=False, callback=_remember("agent_state"), help="agent state file"),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", expose_value=False, callback=_remember("verbose"), help="log more (INFO)")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", expose_value=False, callback=_remember("log_format"), help="text or json"),
    ] = None,
) -> None:
    """The group's options, repeated on every command so that they may follow the sub-command."""


def _global_params() -> list[click.Parameter]:
    holder = typer.Typer(add_completion=False)
    holder.command()(_global_options_template)
    return list(typer.main.get_command(holder).params)


def _prepared(command: click.Command) -> click.Command:
    """Plain (fast) help, and the global options on the command and on every sub-command."""
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    taken = {opt for p in command.params for opt in p.opts}
    command.params += [p for p in _global_params() if not taken & set(p.opts)]
    for sub in getattr(command, "commands", {}).values():
        _prepared(sub)
    return command


class LazyGroup(TyperGroup):
    """The root group: commands imported when used; `--help` lists them from one line each."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in COMMANDS if n not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        known = self.commands.get(cmd_name)
        if known is not None:
            return known
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = _prepared(_load(cmd_name, entry))
        self.commands[cmd_name] = command
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.UsageError as exc:  # suggest among every command, not only those loaded
            matches = difflib.get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(80)) for name, cmd in self.commands.items() if not cmd.hidden]
        rows += [(name, entry.help) for name, entry in COMMANDS.items() if name not in self.commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _load(name: str, entry: LazyCommand) -> click.Command:
    module_name, attribute = entry.target.split(":")
    found = getattr(importlib.import_module(module_name), attribute)
    if entry.group:
        command = typer.main.get_command(found)
        command.name = name
        # Completion is the root's (`orchestrator --install-completion`), not each sub-app's.
        command.params = [p for p in command.params if p.name not in ("install_completion", "show_completion")]
        return command
    holder = typer.Typer(add_completion=False)
    holder.command(name)(found)
    return typer.main.get_command(holder)


app = typer.Typer(
    cls=LazyGroup,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Event-sourced command orchestrator: long commands run as tasks on a host agent. "
    "Global options may also follow the command. Exit codes: see 'orchestrator COMMAND --help' and docs/cli.md.",
)


@app.callback()
def _main(
    store: StoreOpt = None, agent_state: AgentOpt = None, verbose: VerboseOpt = False, log_format: LogFormatOpt = "text"
) -> None:
    G.store, G.agent_state, G.verbose, G.log_format = store, agent_state, verbose, _checked_log_format(log_format)
    configure_logging(verbose=verbose, log_format=G.log_format)


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False, prog_name=PROG)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `orchestrator`, `orchestrator projections`: the help
        print(exc.format_message(), file=sys.stderr)
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: bad option, missing argument
        print(f"error: {printable(exc.format_message())} (see --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OrchestratorError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `orchestrator list | head`: the reader has gone, nothing to say
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:
        from eventsourcing.persistence import PersistenceError

        if not isinstance(exc, PersistenceError):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: the store failed: {printable(_scrub(text))}; check the store and try again", file=sys.stderr)
        sys.exit(StoreError.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


# Options of the `orchestrator` group, with whether they take a value (for scripts that wrap one command).
GROUP_OPTIONS = {"--store": True, "--agent-state": True, "--verbose": False, "--log-format": True}


def split_group_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ARGV into the group's options (`--store URL` ...) and the sub-command's own arguments."""
    group: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GROUP_OPTIONS:
            if GROUP_OPTIONS[name] and "=" not in arg and i + 1 < len(argv):
                group += [arg, argv[i + 1]]
                i += 2
                continue
            group.append(arg)
        else:
            rest.append(arg)
        i += 1
    return group, rest


def main_as(subcommand: list[str], argv: list[str]) -> None:
    """Run one sub-command as a script of its own: `script --store URL ARGS` = `orchestrator --store URL SUB ARGS`."""
    group, rest = split_group_options(argv)
    main([*group, *subcommand, *rest])


def _scrub(text: str) -> str:
    try:
        from orchestrator.store import parse_store_url, store_url_from_env

        return parse_store_url(store_url_from_env(G.store)).scrub(text)
    except OrchestratorError:
        return text
