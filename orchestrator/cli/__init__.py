"""The `orchestrator` command line: Typer, with Rich for people and --json for programs.

One module per sub-app; each command parses its options, makes one call and
renders a documented model. Every error is one line on stderr, `error: ...`,
and a documented exit code (README); store URLs are printed with passwords hidden.
"""

from __future__ import annotations

import logging
import sys

import typer
from typer.exceptions import TyperException

from orchestrator.cli import agent, commands, demo, engine, inspect, projections, queries
from orchestrator.cli.context import AgentOpt, G, StoreOpt
from orchestrator.errors import OrchestratorError, StoreError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Event-sourced command orchestrator: long commands run as tasks on a host agent.",
)
for sub in (commands, engine, queries, inspect, demo):
    app.registered_commands += sub.app.registered_commands
app.add_typer(agent.app, name="agent")
app.add_typer(projections.app, name="projections")


@app.callback()
def _main(store: StoreOpt = None, agent_state: AgentOpt = None, verbose: bool = False) -> None:
    G.store, G.agent_state = store, agent_state
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    from eventsourcing.persistence import PersistenceError

    try:
        code = app(args=argv, standalone_mode=False, prog_name="orchestrator")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as exc:  # usage errors: bad option, missing argument
        print(f"error: {exc.format_message()} (see --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except PersistenceError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: the store failed: {_scrub(text)}; check the store and try again", file=sys.stderr)
        sys.exit(StoreError.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


# Options of the `orchestrator` group (they go before the sub-command), with whether they take a value.
GROUP_OPTIONS = {"--store": True, "--agent-state": True, "--verbose": False}


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
