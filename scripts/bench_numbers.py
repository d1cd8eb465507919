"""The benchmark's arithmetic: medians over runs, percentiles, and a stopwatch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def median_of_fields(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Field by field median of several runs' numeric results."""
    keys = rows[0].keys() if rows else []
    return {k: median([r[k] for r in rows]) for k in keys}


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(share * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def figure(value: float, digits: int = 0) -> str:
    """A figure as the tables print it: thousands separated, `digits` decimals."""
    return f"{value:,.{digits}f}"


@dataclass
class LifecycleRun:
    """A throughput run, ours or DBOS's: its wall time, the tasks it took through, and its time inside agent calls."""

    seconds: float
    tasks: int
    agent_seconds: float

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds

    @property
    def agent_share(self) -> float:
        return self.agent_seconds / self.seconds

    @property
    def tasks_per_second_without_agent(self) -> float:
        return self.tasks / (self.seconds - self.agent_seconds)
