"""A profile of one throughput loop (100 in flight) under cProfile: the top functions by own and by total time."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scripts.bench_harness import harness, run_closed_loop
from scripts.bench_numbers import Stopwatch
from scripts.bench_plan import SectionRun
from scripts.bench_results import REPO
from scripts.bench_stores import Scratch

IN_FLIGHT = 100
TOP = 15


@dataclass
class Hotspot:
    function: str
    calls: int
    own_seconds: float
    total_seconds: float


def run_profile(
    scratch: Scratch, backend: str, in_flight: int, commands: int, out_file: Path
) -> tuple[float, list[Hotspot], list[Hotspot]]:
    """cProfile one throughput loop; (seconds, top by own time, top repo functions by total time)."""
    profiler = cProfile.Profile()
    with harness(scratch, scratch.store(backend, "prof"), commands) as h:
        watch = Stopwatch()
        profiler.enable()
        run_closed_loop(h, in_flight, commands)
        profiler.disable()
        seconds = watch.seconds
    profiler.dump_stats(out_file)
    stats = pstats.Stats(profiler)
    return seconds, top(stats, "tottime", lambda _: True), top(stats, "cumtime", is_project_code)


def is_project_code(filename: str) -> bool:
    return "/orchestrator/" in filename or "/projections/" in filename


def top(stats: pstats.Stats, key: str, keep: Callable[[str], bool]) -> list[Hotspot]:
    """The TOP functions by `key` (tottime or cumtime) that `keep` keeps, the benchmark's own excepted."""
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    rows = [
        Hotspot(label(func), nc, tt, ct)
        for func, (_cc, nc, tt, ct, _callers) in raw.items()
        if keep(func[0]) and "/scripts/bench_" not in func[0] and "cProfile" not in func[0]
    ]
    rows.sort(key=lambda r: r.own_seconds if key == "tottime" else r.total_seconds, reverse=True)
    return rows[:TOP]


def label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    for marker in ("site-packages/", f"{REPO}/", "/lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})" if line else name


def run_section(run: SectionRun) -> dict[str, Any]:
    run.out_dir.mkdir(parents=True, exist_ok=True)
    prof = run.out_dir / f"profile-{run.backend}.prof"
    commands = run.sizes.profile_commands
    seconds, own, total = run_profile(run.scratch, run.backend, IN_FLIGHT, commands, prof)
    run.say(f"profiled ({prof})")
    return {
        "in_flight": IN_FLIGHT,
        "commands": commands,
        "seconds": seconds,
        "file": str(prof),
        "by_own_time": [asdict(h) for h in own],
        "repo_by_total_time": [asdict(h) for h in total],
    }
