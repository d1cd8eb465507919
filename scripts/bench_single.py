"""One RemoveVm of 4 disks on its own, instant agent, from accept to cleared: each step and its transactions.

The command is accepted (`Orchestrator.submit`), then the engine cycles until it
is idle. Each step is timed: the accept, each phase of the engine's cycles
(discovery, submission, polling, stopping, deciding and running end actions,
clearing), and the catch-up; so is every store transaction that records events
(`EventStore.save`), labelled with the step it belongs to. Figures are medians
over `single_commands` commands run one after another on one store, after a
warm-up command, and the mean of the whole command beside them.

The engine brings the read models up to date at most once per
`catch_up_interval`, so over commands run back to back one command in many
carries a catch-up of those before it: the median shows a command without one,
the mean (with a last catch-up after the commands, timed) the cost with the
catch-ups shared out.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.engine.worker import PoolWorker
from orchestrator.store.event_store import EventStore
from scripts.bench_harness import Harness, harness
from scripts.bench_numbers import median
from scripts.bench_plan import SectionRun

PHASES = (
    ("submission", "submitter", "run"),
    ("polling", "poller", "run"),
    ("stopping", "stopper", "run"),
    ("end action decided", "end_actions", "decide"),
    ("end action", "end_actions", "run"),
    ("clearing", "clearer", "run"),
)


@dataclass
class Timeline:
    """What one command's steps and saves took, in seconds, by step."""

    step: str = "accept"
    steps: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    saves: list[tuple[str, int, float]] = field(default_factory=list)  # (step, events, seconds)

    @contextmanager
    def timing(self, step: str) -> Iterator[None]:
        outer, self.step = self.step, step
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[step] += time.perf_counter() - started
            self.step = outer


def _timed(timeline: Callable[[], Timeline], step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with timeline().timing(step):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def instrumented(h: Harness, current: list[Timeline]) -> Iterator[None]:
    """Time the phases of every pool worker, the discovery and every save, into `current[0]`."""
    workers: list[PoolWorker] = list(h.engine.workers.values())
    originals: list[tuple[Any, str, Any]] = []
    for worker in workers:
        for step, part, method in PHASES:
            target = getattr(worker, part)
            originals.append((target, method, getattr(target, method)))
            setattr(target, method, _timed(lambda: current[0], step, getattr(target, method)))
    for target, method, step in (
        (h.engine.discovery, "run", "discovery"),
        (h.orch.read_models.runner, "catch_up", "read-model catch-up"),
    ):
        originals.append((target, method, getattr(target, method)))
        setattr(target, method, _timed(lambda: current[0], step, getattr(target, method)))
    save = EventStore.save

    def timed_save(store: EventStore, *aggregates: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        events = save(store, *aggregates, **kwargs)
        current[0].saves.append((current[0].step, events, time.perf_counter() - started))
        return events

    EventStore.save = timed_save  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        EventStore.save = save  # type: ignore[method-assign]
        for target, method, original in originals:
            setattr(target, method, original)


def run_one(h: Harness, vm_id: str, current: list[Timeline]) -> tuple[float, Timeline]:
    timeline = current[0] = Timeline()
    started = time.perf_counter()
    with timeline.timing("accept"):
        h.orch.submit("RemoveVm", {"vm_id": vm_id})
    while True:
        with timeline.timing("engine cycle"):
            h.engine.cycle()
        if h.engine.idle:
            break
    total = time.perf_counter() - started
    return total, timeline


def run_single(run: SectionRun) -> dict[str, Any]:
    commands = run.sizes.single_commands
    current = [Timeline()]
    with harness(run.scratch, run.scratch.store(run.backend, "single"), commands) as h, instrumented(h, current):
        runs = [run_one(h, f"vm-{n:04d}", current) for n in range(1, commands + 1)]
        started = time.perf_counter()
        h.orch.read_models.catch_up()  # what the engine had not caught up yet is part of the cost
        last_catch_up = time.perf_counter() - started
    steps = sorted({s for _, t in runs for s in t.steps}, key=_step_order)
    by_step: dict[str, dict[str, float]] = {}
    for step in steps:
        saves = [[s for s in t.saves if s[0] == step] for _, t in runs]
        by_step[step] = {
            "seconds": median([t.steps.get(step, 0.0) for _, t in runs]),
            "transactions": median([len(s) for s in saves]),
            "events": median([sum(e for _, e, _ in s) for s in saves]),
            "transaction_seconds": median([sum(x for _, _, x in s) for s in saves]),
        }
    return {
        "commands": commands,
        "seconds": median([total for total, _ in runs]),
        "mean_seconds": (sum(total for total, _ in runs) + last_catch_up) / commands,
        "transactions": median([len(t.saves) for _, t in runs]),
        "events": median([sum(e for _, e, _ in t.saves) for _, t in runs]),
        "steps": by_step,
        "runs": [total for total, _ in runs],
    }


def _step_order(step: str) -> int:
    order = ["accept", "engine cycle", "discovery", *[p[0] for p in PHASES], "read-model catch-up"]
    return order.index(step) if step in order else len(order)


def run_section(run: SectionRun) -> dict[str, Any]:
    out = run_single(run)
    run.say(
        f"one RemoveVm, accept to cleared: median {out['seconds'] * 1000:.2f} ms, mean {out['mean_seconds'] * 1000:.2f}"
        f" ms ({out['transactions']:.0f} transactions)"
    )
    return out
