"""Benchmark of the orchestrator against DBOS Transact, on SQLite and PostgreSQL, in one run.

    .venv/bin/python scripts/bench.py [--quick] [--backends sqlite,postgres] [--runs N]
                                      [--only SECTION,...] [--out bench-results/bench.json]

Needs the `bench` extra (`pip install -e '.[bench]'`, which brings DBOS) and,
for the PostgreSQL half, the server at ORCHESTRATOR_BENCH_PG (default
postgresql://postgres@127.0.0.1:5432/test); each store is a fresh schema there,
dropped at the end. Every figure is the median of `--runs` runs (3 by default;
--quick: 1 run of small sizes, for development). Prints Rich tables, writes
JSON, and exits 1 if an invariant of DESIGN.md section 7 was broken in a
throughput run. How each number is counted is printed with the tables.

Sections: commit, throughput, writecost, cycle, rebuild, recovery, queries, profile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from scripts.bench_report import print_report, targets  # noqa: E402
from scripts.bench_support import FULL, QUICK, Scratch, Sizes, median, postgres_problem, scratch_space  # noqa: E402

SECTIONS = ("commit", "throughput", "writecost", "cycle", "rebuild", "recovery", "queries", "profile")
BACKENDS = ("sqlite", "postgres")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run: a smoke test for development")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median); default 3, --quick 1")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "bench.json")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="print the tables of earlier JSON results (merged) instead of running"
    )
    args = parser.parse_args(argv)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [b for b in args.backend_list if b not in BACKENDS] + [s for s in args.sections if s not in SECTIONS]
    if bad:
        parser.error(f"unknown backend or section: {', '.join(bad)}")
    args.runs = args.runs or (1 if args.quick else 3)
    return args


# ---- one backend ----------------------------------------------------------------------------------


class BackendBench:
    """Every section for one backend; results are plain data for the JSON file and the tables."""

    def __init__(self, scratch: Scratch, backend: str, sizes: Sizes, runs: int, console: Console, out: Path) -> None:
        self.scratch = scratch
        self.backend = backend
        self.sizes = sizes
        self.runs = runs
        self.console = console
        self.out = out
        self.results: dict[str, Any] = {}

    def say(self, text: str) -> None:
        self.console.log(f"[{self.backend}] {text}")

    def run(self, sections: list[str], checkpoint: Callable[[], None]) -> dict[str, Any]:
        """Run the sections; `checkpoint` is called after each (the JSON is rewritten as results come)."""
        for section in sections:
            started = time.perf_counter()
            load_before = os.getloadavg()[0]
            getattr(self, f"section_{section}")()
            self.results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - started, 1)
            self.results.setdefault("load_average_1min", {})[section] = [load_before, os.getloadavg()[0]]
            checkpoint()
        return self.results

    def section_commit(self) -> None:
        from scripts.bench_queries import commit_rate

        rates = [commit_rate(self.scratch, self.backend, self.sizes.commit_samples) for _ in range(self.runs)]
        self.results["commit_rate"] = median(rates)
        self.say(f"raw commit rate {median(rates):,.0f}/s")

    def section_throughput(self) -> None:
        from scripts.bench_throughput import throughput_level

        self.results["throughput"] = [
            throughput_level(self.scratch, self.backend, n, self.sizes.commands[n], self.runs, self.say)
            for n in self.sizes.levels
        ]

    def section_writecost(self) -> None:
        from scripts.bench_throughput import write_cost

        self.results["write_cost"] = write_cost(self.scratch, self.backend, self.sizes.write_cost_commands, self.runs)
        self.say("write cost counted")

    def section_cycle(self) -> None:
        from scripts.bench_engine import run_cycle_cost

        out = []
        for commands in self.sizes.cycle_commands:
            costs = run_cycle_cost(self.scratch, self.backend, commands, task_seconds=1.0 + commands / 100)
            out.append({"commands": commands, "idle": asdict(costs[1]), "busy": asdict(costs[-1])})
        self.results["cycle"] = out
        self.say("poll cycle cost counted")

    def section_rebuild(self) -> None:
        from scripts.bench_engine import run_rebuild

        level = 100
        runs = [run_rebuild(self.scratch, self.backend, level, self.sizes.commands[level]) for _ in range(self.runs)]
        self.results["rebuild"] = {
            name: {k: median([r[name][k] for r in runs]) for k in runs[0][name]} for name in runs[0]
        }
        self.say("rebuild timed")

    def section_recovery(self) -> None:
        from scripts.bench_throughput import recovery

        self.results["recovery"] = recovery(self.scratch, self.backend, self.sizes, self.runs, self.say)

    def section_queries(self) -> None:
        from scripts.bench_queries import run_queries

        result = run_queries(self.scratch, self.backend, self.sizes.query_rows, self.sizes.query_samples, self.runs)
        self.results["queries"] = result
        self.say("entity queries timed")

    def section_profile(self) -> None:
        from scripts.bench_engine import run_profile

        self.out.parent.mkdir(parents=True, exist_ok=True)
        prof = self.out.parent / f"profile-{self.backend}.prof"
        seconds, own, total = run_profile(self.scratch, self.backend, 100, self.sizes.profile_commands, prof)
        self.results["profile"] = {
            "in_flight": 100,
            "commands": self.sizes.profile_commands,
            "seconds": seconds,
            "file": str(prof),
            "by_own_time": [asdict(h) for h in own],
            "repo_by_total_time": [asdict(h) for h in total],
        }
        self.say(f"profiled ({prof})")


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def report_only(console: Console, paths: list[Path]) -> int:
    """Print earlier results; a later file's sections replace an earlier one's."""
    doc: dict[str, Any] = {"backends": {}}
    commands = []
    for path in paths:
        part = json.loads(path.read_text())
        for backend, results in part["backends"].items():
            doc["backends"].setdefault(backend, {}).update(results)
        doc |= {k: v for k, v in part.items() if k != "backends"}
        commands.append(part["command"])
    doc["command"] = " ; ".join(commands)
    doc["targets"] = targets(doc["backends"])
    print_report(console, doc)
    return 0


def _head_commit() -> str:
    """The engine's commit measured (the working tree may hold uncommitted changes besides)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(_plain(doc), indent=2, default=str))


# ---- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 190))
    if args.report:
        return report_only(console, args.report)
    sizes = QUICK if args.quick else FULL
    if "postgres" in args.backend_list and (problem := postgres_problem()):
        console.print(f"[red]PostgreSQL is not reachable ({problem}); run with --backends sqlite[/]")
        return 2
    doc: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "runs": args.runs,
        "sizes": asdict(sizes),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "commit": _head_commit(),
        "backends": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_space() as scratch:
        for backend in args.backend_list:
            bench = BackendBench(scratch, backend, sizes, args.runs, console, args.out)
            doc["backends"][backend] = bench.results
            bench.run(args.sections, lambda: _write(args.out, doc))
    doc["targets"] = targets(doc["backends"])
    _write(args.out, doc)
    print_report(console, doc)
    console.print(f"JSON written to {args.out}")
    broken = [v for b in doc["backends"].values() for level in b.get("throughput", []) for v in level["violations"]]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
