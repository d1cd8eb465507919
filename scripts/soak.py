"""Soak: many commands of every flow in flight, a real engine SIGKILLed at random, agent faults on and off.

    python scripts/soak.py --cycles 50 --store sqlite:////tmp/soak/store.db [--seed S] [--json out.json]

Each cycle the soak (this process, driving the library) submits new commands of every flow on
VMs that are free, and sometimes deliberately on VMs that are not (a conflicting write must be
refused; a second CreateTemplate of one VM must be accepted). Meanwhile a real engine
subprocess (`python -m orchestrator run`) executes them; at a random moment of a cycle it is
SIGKILLed and restarted, sometimes killed again while it recovers. With `--engines N` (PostgreSQL
only: SQLite runs one engine at a time) N engine subprocesses run at once, sharing the pools under
their fenced leases, and each kill picks one of them at random (a start that dies in recovery
comes after all of them were killed, so that it has something to recover). The simulated agent's
faults are switched on at random and off again (unreachable for a while, slow calls, calls
timing out, a share of tasks vanishing or failing, refused creations, malformed answers,
phantom tasks, answers to create calls held back): the engine subprocess reads them from the
agent's state file on every call. Now and then a user cancels a command in flight, or one just
submitted while the engine is submitting its tasks; an engine start dies at the `in_recovery`
crash point (verdicts recorded, stops not yet made); a rebuild or verification of the read models
runs beside the engine, and is sometimes SIGKILLed midway. Every --truth-every cycles the soak compares
every idle entity (no lock held) with the agent's storage, because a mismatch can be undone by
later commands before the end (the simulated agent will create a volume on a deleted image).

After the last cycle the soak clears the faults, kills the engine one last time, runs
`orchestrator run --until-idle` and checks every invariant of docs/invariants.md through a
fresh Orchestrator, plus what it watched on the way: no conflicting locks granted, no engine
exit it did not cause, no engine traceback, the final run ended, every cancel that returned was
recorded, and its own long-lived Orchestrator sees what the store holds. It prints a table (and
writes JSON with --json), explains each volume the inventory and the agent disagree on (which
agent task, which command), and exits 1 on any violation.

Every random choice comes from one generator seeded by --seed (printed): a run with the same
seed makes the same choices, though the engine's timing makes each run differ in detail.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python scripts/soak.py` from anywhere
    sys.path.insert(0, str(REPO))

import orchestrator  # noqa: E402
from orchestrator.store import parse_store_url  # noqa: E402
from scripts.soak_config import FAULT_KINDS, SoakConfig, default_agent_state  # noqa: E402
from scripts.soak_report import render  # noqa: E402
from scripts.soak_run import Soak  # noqa: E402

# The options that set a SoakConfig field of the same name (their defaults are the field's), with their help.
TUNING = {
    "vms": "VMs to seed (more are seeded as they are used up)",
    "per_flow": "commands of each flow to keep in flight",
    "cycle_seconds": "mean length of a cycle",
    "kill_chance": "chance per cycle to SIGKILL the engine",
    "recovery_kill_chance": "chance to kill a restart at once",
    "fault_chance": "chance per cycle to switch a fault on",
    "conflict_chance": "chance per cycle of a deliberate conflict",
    "cancel_chance": "chance per cycle that a user cancels one",
    "race_cancel_chance": "chance per cycle to cancel a command just submitted",
    "recovery_crash_chance": "chance per cycle of an engine start dying in recovery",
    "rebuild_chance": "chance per cycle to rebuild or verify the read models",
    "agent_kill_chance": "with --agent-server: chance per cycle to SIGKILL the agent server (restarted soon after)",
    "truth_every": "compare idle entities with the agent every N cycles",
    "task_seconds": "how long an agent task takes",
    "final_timeout": "limit for the final run until idle",
    "engines": "engine processes at once, each kill picking one (more than 1: PostgreSQL only; they share the pools)",
}
DEFAULTS = {f.name: f.default for f in fields(SoakConfig)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--cycles", type=int, required=True, help="soak cycles")
    p.add_argument("--store", required=True, help="store URL: sqlite:///PATH or postgresql://...")
    p.add_argument("--agent-state", type=Path, help="agent state file (default: beside a SQLite store)")
    p.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    p.add_argument("--json", type=Path, help="also write the figures here as JSON")
    for name, text in TUNING.items():
        default = DEFAULTS[name]
        p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help=text)
    p.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"fault kinds to switch on, comma-separated (default: all of {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--workdir", type=Path, help="engine logs go here (default: a new temporary directory)")
    p.add_argument(
        "--agent-server", action="store_true", help="serve the agent as a process of its own, reached over HTTP"
    )
    args = p.parse_args(argv)
    if args.cycles < 1:
        p.error("--cycles must be at least 1")
    if args.truth_every < 1:
        p.error("--truth-every must be at least 1")
    if args.vms < 2:
        p.error("--vms must be at least 2")
    if args.engines < 1:
        p.error("--engines must be at least 1")
    if args.engines > 1 and store_kind(args.store) == "sqlite":
        p.error(
            f"--engines {args.engines}: a SQLite store runs one engine at a time (another stands by); "
            "engines share the pools on PostgreSQL only"
        )
    args.fault_kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(args.fault_kinds) - set(FAULT_KINDS))
    if unknown or not args.fault_kinds:
        p.error(f"--faults: unknown kind(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULT_KINDS)}")
    return args


def store_kind(url: str) -> str | None:
    """sqlite or postgresql; None for a URL that does not parse (main says what is wrong with it)."""
    try:
        return parse_store_url(url).kind
    except orchestrator.OrchestratorError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, width=160)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"soak-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        agent_state = args.agent_state or default_agent_state(args.store, workdir)
    except orchestrator.OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tuning = {name: getattr(args, name) for name in TUNING}
    config = SoakConfig(
        args.store,
        args.cycles,
        agent_state,
        workdir,
        seed,
        fault_kinds=args.fault_kinds,
        agent_server=args.agent_server,
        **tuning,
    )
    console.print(f"soak seed {seed} (rerun with --seed {seed}); agent state {agent_state}; engine logs in {workdir}")
    console.print(f"engine code: {Path(orchestrator.__file__).parent}", markup=False)
    try:
        soak = Soak(config, console)
    except orchestrator.OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        figures = soak.run()
    finally:
        soak.close()
    console.print(render(figures))
    if figures.diagnosis:
        console.print("where inventory and agent disagree:", markup=False)
        for line in figures.diagnosis:
            console.print("  " + line, markup=False)
    if args.json:
        args.json.write_text(json.dumps(figures.as_json(), indent=2) + "\n")
    console.print(f"seed {seed}: {figures.violations} violation(s)")
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
