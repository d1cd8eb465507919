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

from orchestrator.cli import main_as

if __name__ == "__main__":
    main_as(["inspect"], sys.argv[1:])
