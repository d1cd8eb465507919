"""Projection rebuild: the same code as `orchestrator projections rebuild`.

    .venv/bin/python scripts/rebuild_projections.py --store URL [NAME ...] [--verify] [--json]

Rebuilds each read model (default: all) from the whole event log into fresh
tables and swaps them in; with `--verify`, builds a fresh copy, compares it
with the live view row by row, prints every difference and exits 10 if there
is one. Safe to run while the engine runs.
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
    main([*group, "projections", "rebuild", *rest])


if __name__ == "__main__":
    run(sys.argv[1:])
