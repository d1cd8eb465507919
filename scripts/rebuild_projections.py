"""Projection rebuild: the same code as `orchestrator projections rebuild`.

    .venv/bin/python scripts/rebuild_projections.py --store URL [NAME ...] [--verify] [--json]

Rebuilds each read model (default: all) from the whole event log into fresh
tables and swaps them in; with `--verify`, builds a fresh copy, compares it
with the live view row by row, prints every difference and exits 10 if there
is one. Safe to run while the engine runs.
"""

from __future__ import annotations

import sys

from orchestrator.cli import main_as

if __name__ == "__main__":
    main_as(["projections", "rebuild"], sys.argv[1:])
