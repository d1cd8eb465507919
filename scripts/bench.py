"""Benchmark of the orchestrator against DBOS Transact, on SQLite and PostgreSQL, in one run.

    .venv/bin/python scripts/bench.py [--quick] [--backends sqlite,postgres] [--runs N]
                                      [--only SECTION,...] [--out bench-results/bench.json]

Needs the `bench` extra (`pip install -e '.[bench]'`, which brings DBOS) for
the throughput and writecost sections and, for the PostgreSQL half, the server
at ORCHESTRATOR_BENCH_PG (default postgresql://postgres@127.0.0.1:5432/test);
each store is a fresh schema there, dropped at the end. Every figure is the
median of `--runs` runs (3 by default; --quick: 1 run of small sizes, for
development). Prints Rich tables, writes JSON, and exits 1 if an invariant of
docs/invariants.md was broken in a throughput run. How each number is counted
is printed with the tables.

Sections: commit, throughput, network, writecost, cycle, rebuild, recovery, queries, profile, fleet;
each is the module scripts/bench_SECTION.py.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from scripts.bench_plan import FULL, QUICK, SectionRun  # noqa: E402
from scripts.bench_report import print_report  # noqa: E402
from scripts.bench_results import merged, new_document, write  # noqa: E402
from scripts.bench_stores import postgres_problem, scratch_space  # noqa: E402
from scripts.bench_targets import targets  # noqa: E402

# Each section, and the key of its results. A section's module is imported only when it runs
# (throughput and writecost import DBOS).
SECTIONS = {
    "commit": "commit_rate",
    "throughput": "throughput",
    "network": "network",
    "writecost": "write_cost",
    "cycle": "cycle",
    "single": "single_command",
    "insert": "insert_rate",
    "rebuild": "rebuild",
    "recovery": "recovery",
    "queries": "queries",
    "profile": "profile",
    "fleet": "fleet",
    "retention": "retention",
    "takeover": "takeover",
    "engines": "engines",
}
BACKENDS = ("sqlite", "postgres")


class Section(Protocol):
    def __call__(self, run: SectionRun) -> Any: ...


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


def section(name: str) -> Section:
    run_section: Section = importlib.import_module(f"scripts.bench_{name}").run_section
    return run_section


def run_sections(run: SectionRun, sections: list[str], results: dict[str, Any], checkpoint: Callable[[], None]) -> None:
    """Run the sections on one backend into `results`; `checkpoint` after each (the JSON is rewritten as they come)."""
    for name in sections:
        started = time.perf_counter()
        load_before = os.getloadavg()[0]
        results[SECTIONS[name]] = section(name)(run)
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
        results.setdefault("load_average_1min", {})[name] = [load_before, os.getloadavg()[0]]
        checkpoint()


def sayer(console: Console, backend: str) -> Callable[[str], None]:
    return lambda text: console.log(f"[{backend}] {text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 190))
    if args.report:
        print_report(console, merged(args.report))
        return 0
    sizes = QUICK if args.quick else FULL
    if "postgres" in args.backend_list and (problem := postgres_problem()):
        console.print(f"[red]PostgreSQL is not reachable ({problem}); run with --backends sqlite[/]")
        return 2
    doc = new_document(args.quick, args.runs, sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_space() as scratch:
        for backend in args.backend_list:
            run = SectionRun(scratch, backend, sizes, args.runs, sayer(console, backend), args.out.parent)
            run_sections(run, args.sections, doc["backends"].setdefault(backend, {}), lambda: write(args.out, doc))
    doc["targets"] = targets(doc["backends"])
    write(args.out, doc)
    print_report(console, doc)
    console.print(f"JSON written to {args.out}")
    broken = [v for b in doc["backends"].values() for level in b.get("throughput", []) for v in level["violations"]]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
