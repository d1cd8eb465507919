"""Crash-replay inspection: the same code as `orchestrator inspect`.

    .venv/bin/python scripts/crash_replay.py --store URL [--agent-state PATH]
        [--command ID [--at-version N]] [--no-agent] [--json]

Strictly read-only: it shows every command in flight, its tasks, and the
verdict recovery would reach. Exit codes are those of `orchestrator inspect`:
0 nothing needs recovery, 20 something is in flight, 3 the store cannot be
read (unreachable, foreign, empty, or of a newer schema).
"""

from __future__ import annotations

import sys

from orchestrator.cli import main

# Options of the `orchestrator` group (they go before the sub-command), with whether they take a value.
GLOBAL_OPTIONS = {"--store": True, "--agent-state": True, "--verbose": False}


def split_global_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ARGV into the group's options (`--store URL` ...) and the sub-command's own arguments."""
    group: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name]
            if takes_value and "=" not in arg and i + 1 < len(argv):
                group += [arg, argv[i + 1]]
                i += 2
                continue
            group.append(arg)
        else:
            rest.append(arg)
        i += 1
    return group, rest


def run(argv: list[str]) -> None:
    group, rest = split_global_options(argv)
    main([*group, "inspect", *rest])


if __name__ == "__main__":
    run(sys.argv[1:])
