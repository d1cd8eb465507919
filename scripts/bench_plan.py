"""What a benchmark run measures: the sizes of each section, and what a section is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scripts.bench_stores import Scratch

DISKS_PER_VM = 4  # every command measured is a RemoveVm of a VM with this many disks: one task per disk


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; `QUICK` is the development smoke mode."""

    levels: tuple[int, ...]  # commands in flight
    commands: dict[int, int]  # commands run per level
    write_cost_commands: int
    cycle_commands: tuple[int, ...]  # commands whose tasks all end in one measured cycle
    recovery_in_flight: int
    recovery_history: int
    query_rows: int
    query_samples: int
    profile_commands: int
    commit_samples: int
    fleet_agents: int
    fleet_tasks_per_agent: int  # a multiple of DISKS_PER_VM
    takeover_trials: int  # per row (kill, freeze): engine processes, PostgreSQL only
    engine_counts: tuple[int, ...]  # engine processes on one database, for the engines section
    engines_commands: int  # RemoveVm commands per engines run, spread over its pools
    lease_cost_seconds: float  # idle engines watched, to count the lease's statements
    single_commands: int = 30  # RemoveVm commands run one at a time (single)
    retention_history_events: int = 2_000_000  # events of ended history, 90% of it pruned (retention)
    retention_in_flight: int = 1000  # commands in flight beside it, tasks running on the agent (retention)


FULL = Sizes(
    levels=(1, 100, 1000),
    commands={1: 30, 100: 400, 1000: 2000},
    write_cost_commands=100,
    cycle_commands=(1, 25, 250),
    recovery_in_flight=10_000,
    recovery_history=100_000,
    query_rows=1_000_000,
    query_samples=5000,
    profile_commands=400,
    commit_samples=500,
    fleet_agents=100,
    fleet_tasks_per_agent=1000,
    takeover_trials=20,
    engine_counts=(1, 2, 3),
    engines_commands=400,
    lease_cost_seconds=30.0,
)
QUICK = Sizes(
    levels=(1, 100),
    commands={1: 5, 100: 100},
    write_cost_commands=20,
    cycle_commands=(1, 10),
    recovery_in_flight=200,
    recovery_history=2000,
    query_rows=50_000,
    query_samples=500,
    profile_commands=100,
    commit_samples=100,
    fleet_agents=5,
    fleet_tasks_per_agent=100,
    takeover_trials=3,
    engine_counts=(1, 2, 3),
    engines_commands=40,
    lease_cost_seconds=8.0,
    retention_history_events=20_000,
    single_commands=5,
    retention_in_flight=50,
)


@dataclass
class SectionRun:
    """What each section's `run_section` is handed: one backend, its sizes, and where to say and write things."""

    scratch: Scratch
    backend: str  # "sqlite" | "postgres"
    sizes: Sizes
    runs: int  # each figure is the median of this many runs
    say: Callable[[str], None]
    out_dir: Path  # beside the JSON results (the profile's .prof file goes here)
