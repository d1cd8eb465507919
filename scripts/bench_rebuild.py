"""Projection rebuild speed: a store filled through the engine, then each read model rebuilt from the log."""

from __future__ import annotations

from scripts.bench_harness import harness, run_closed_loop
from scripts.bench_numbers import median_of_fields
from scripts.bench_plan import SectionRun
from scripts.bench_stores import Scratch

IN_FLIGHT = 100


def run_rebuild(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, dict[str, float]]:
    """Fill a store through the engine, then rebuild each projection from the log."""
    with harness(scratch, scratch.store(backend, "rebuild"), commands) as h:
        run_closed_loop(h, in_flight, commands)
        runner = h.orch.read_models.runner
        out: dict[str, dict[str, float]] = {}
        for projection in runner.projections:
            result = runner.rebuild(projection)
            out[projection.name] = {
                "events": float(result.events),
                "seconds": result.seconds,
                "events_per_second": result.events_per_second,
            }
        return out


def run_section(run: SectionRun) -> dict[str, dict[str, float]]:
    commands = run.sizes.commands[IN_FLIGHT]
    runs = [run_rebuild(run.scratch, run.backend, IN_FLIGHT, commands) for _ in range(run.runs)]
    run.say("rebuild timed")
    return {name: median_of_fields([r[name] for r in runs]) for name in runs[0]}
