"""Lifecycle throughput with the agent over HTTP beside the agent in this process, at each level of commands in flight.

The same closed loop as the throughput section (scripts/bench_harness.py), once
with the engine calling the simulated agent in this process and once with it
calling the same agent served by `orchestrator agent serve` on loopback
(JSON-RPC over HTTP, every answer validated). The two runs of a pair follow
each other, so they share the machine's load; every run ends with the
invariants checked on its store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scripts.bench_harness import harness, run_closed_loop
from scripts.bench_numbers import LifecycleRun, median
from scripts.bench_plan import SectionRun
from scripts.bench_stores import Scratch
from scripts.bench_throughput import invariant_violations


@dataclass
class NetworkRun(LifecycleRun):
    violations: list[str] = field(default_factory=list)


def run_once(scratch: Scratch, backend: str, in_flight: int, commands: int, *, over_http: bool) -> NetworkRun:
    label = f"net{'http' if over_http else 'local'}{in_flight}"
    with harness(scratch, scratch.store(backend, label), commands, over_http=over_http) as h:
        loop = run_closed_loop(h, in_flight, commands)
        return NetworkRun(loop.seconds, loop.tasks, h.timed.busy_seconds, invariant_violations(h, loop.accepted_ids))


def network_level(run: SectionRun, in_flight: int, commands: int) -> dict[str, Any]:
    local: list[NetworkRun] = []
    http: list[NetworkRun] = []
    for n in range(1, run.runs + 1):
        local.append(run_once(run.scratch, run.backend, in_flight, commands, over_http=False))
        http.append(run_once(run.scratch, run.backend, in_flight, commands, over_http=True))
        run.say(
            f"{in_flight:>5} in flight, run {n}: in-process agent {local[-1].tasks_per_second:,.0f} tasks/s, "
            f"HTTP agent {http[-1].tasks_per_second:,.0f} tasks/s"
        )
    local_rate = median([r.tasks_per_second for r in local])
    http_rate = median([r.tasks_per_second for r in http])
    return {
        "in_flight": in_flight,
        "commands": commands,
        "in_process_tasks_per_second": local_rate,
        "http_tasks_per_second": http_rate,
        "ratio": http_rate / local_rate,
        "paired_ratio": median([h.tasks_per_second / lo.tasks_per_second for h, lo in zip(http, local, strict=True)]),
        "in_process_agent_share": median([r.agent_share for r in local]),
        "http_agent_share": median([r.agent_share for r in http]),
        "violations": sorted({v for r in [*local, *http] for v in r.violations}),
        "runs": {
            "in_process_tasks_per_second": [r.tasks_per_second for r in local],
            "http_tasks_per_second": [r.tasks_per_second for r in http],
        },
    }


def run_section(run: SectionRun) -> list[dict[str, Any]]:
    return [network_level(run, n, run.sizes.commands[n]) for n in run.sizes.levels if n > 1]
