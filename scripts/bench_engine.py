"""Our engine under load: lifecycle throughput, write cost, poll cycle cost, profile.

Throughput is a closed loop in one process: before each engine cycle, new
RemoveVm commands (4 disks each) are accepted (`Orchestrator.submit`, one
transaction each) until `in_flight` commands are held by the engine; the
engine's `cycle()` then submits, polls, runs end actions and clears. The clock
runs from the first accept to the last clear. The agent's tasks finish at once.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.bootstrap import Orchestrator, build_engine
from orchestrator.config import load_engine_settings
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus, TaskStatus
from orchestrator.engine.report import CycleReport
from orchestrator.engine.task_manager import TaskManager
from orchestrator.service import SubmitResult
from orchestrator.testing import SimulatedAgent, check_invariants
from projections.runner import ReadModelRunner
from scripts.bench_sql import SqlTally, TallyWindow, sql_counting
from scripts.bench_support import DISKS_PER_VM, Scratch, Stopwatch, Store, TimedAgent

ROOT_COMMAND_TOPIC = RootCommand.Accepted.__module__ + ":RootCommand."
REPO = Path(__file__).resolve().parent.parent


class LagSamplingRunner(ReadModelRunner):
    """The engine's projection runner, noting how far behind the log it is before each catch-up."""

    max_lag = 0
    catch_up_seconds = 0.0

    def catch_up(self, *, batch_size: int = 1000, max_seconds: float | None = None) -> int:
        lag = min(s.lag for s in self.status())
        self.max_lag = max(self.max_lag, lag)
        started = time.perf_counter()
        try:
            return super().catch_up(batch_size=batch_size, max_seconds=max_seconds)
        finally:
            self.catch_up_seconds += time.perf_counter() - started


@dataclass
class Harness:
    """One store, seeded, with an engine over a timed simulated agent."""

    store: Store
    orch: Orchestrator
    agent: SimulatedAgent
    timed: TimedAgent
    engine: TaskManager
    lag: LagSamplingRunner

    def close(self) -> None:
        self.orch.close()
        self.agent.close()


def open_harness(
    scratch: Scratch, store: Store, vms: int, *, task_seconds: float = 0.0, warm: bool = True, **settings: Any
) -> Harness:
    """A seeded store (`vms` VMs, plus one for a warm-up command run before anything is measured)."""
    orch = Orchestrator.open(store.url, agent_state=scratch.agent_path(store.label), create=True)
    lag = LagSamplingRunner(orch.read_models.tables, orch.store)
    orch.read_models.runner = lag
    orch.seed(vms + 1, DISKS_PER_VM)
    agent = SimulatedAgent.open(orch.agent_state, task_seconds=task_seconds)
    timed = TimedAgent(agent)
    engine = build_engine(orch, timed, load_engine_settings(poll_interval=0.01, **settings))
    engine.recover()
    h = Harness(store, orch, agent, timed, engine, lag)
    if warm:
        warm_up(h, f"vm-{vms + 1:04d}")
    return h


def warm_up(h: Harness, vm_id: str) -> None:
    """One command start to end, so that first-use costs (imports, caches, prepared statements) are not timed."""
    h.orch.submit("RemoveVm", {"vm_id": vm_id})
    h.engine.cycle()
    while not h.engine.idle:
        h.engine.cycle()
    h.lag.max_lag = 0
    h.lag.catch_up_seconds = 0.0
    h.timed.busy_seconds = 0.0


# ---- throughput ------------------------------------------------------------------------


@dataclass
class LoopResult:
    seconds: float
    commands: int
    cycles: int
    accept_seconds: float
    accepted_ids: list[Any] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.commands * DISKS_PER_VM


def run_closed_loop(h: Harness, in_flight: int, commands: int, *, batched: bool = False) -> LoopResult:
    """Keep `in_flight` commands in the engine until `commands` have run; one process, no sleeps.

    `batched`: the commands that fit are accepted with one `submit_many` (one transaction)
    instead of one `submit` (one transaction) each."""
    watch = Stopwatch()
    accepted: list[Any] = []
    accept_seconds = 0.0
    cycles = 0
    while len(accepted) < commands or not h.engine.idle:
        room = min(in_flight - len(h.engine.inflight), commands - len(accepted))
        started = time.perf_counter()
        if batched and room > 0:
            requests = [("RemoveVm", {"vm_id": f"vm-{len(accepted) + n:04d}"}) for n in range(1, room + 1)]
            for result in h.orch.submit_many(requests):
                assert isinstance(result, SubmitResult), result
                accepted.append(result.command_id)
        for _ in range(max(0, room) if not batched else 0):
            vm = f"vm-{len(accepted) + 1:04d}"
            accepted.append(h.orch.submit("RemoveVm", {"vm_id": vm}).command_id)
        accept_seconds += time.perf_counter() - started
        h.engine.cycle()
        cycles += 1
    return LoopResult(watch.seconds, commands, cycles, accept_seconds, accepted)


@dataclass
class ThroughputRun:
    seconds: float
    tasks: int
    agent_seconds: float
    accept_seconds: float
    catch_up_seconds: float
    cycles: int
    max_lag: int
    violations: list[str]
    succeeded: int

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds


def run_throughput(
    scratch: Scratch, backend: str, in_flight: int, commands: int, *, check: bool = True, batched: bool = False
) -> ThroughputRun:
    store = scratch.store(backend, f"tp{in_flight}")
    h = open_harness(scratch, store, commands)
    try:
        loop = run_closed_loop(h, in_flight, commands, batched=batched)
        violations = invariant_violations(h, loop.accepted_ids) if check else []
        succeeded = sum(1 for i in loop.accepted_ids if h.orch.command(i).status is CommandStatus.SUCCEEDED)
        return ThroughputRun(
            seconds=loop.seconds,
            tasks=loop.tasks,
            agent_seconds=h.timed.busy_seconds,
            accept_seconds=loop.accept_seconds,
            catch_up_seconds=h.lag.catch_up_seconds,
            cycles=loop.cycles,
            max_lag=h.lag.max_lag,
            violations=violations,
            succeeded=succeeded,
        )
    finally:
        h.close()
        scratch.drop(store)


def invariant_violations(h: Harness, expected: list[Any]) -> list[str]:
    results = check_invariants(h.orch, h.agent, expected_commands=expected)
    return [f"{r.number}. {r.name}: {r.detail}" for r in results if not r.ok]


# ---- rebuild speed (on a throughput store) ---------------------------------------------------


def run_rebuild(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, dict[str, float]]:
    """Fill a store through the engine, then rebuild each projection from the log."""
    store = scratch.store(backend, "rebuild")
    h = open_harness(scratch, store, commands)
    try:
        run_closed_loop(h, in_flight, commands)
        out: dict[str, dict[str, float]] = {}
        for projection in h.orch.read_models.runner.projections:
            result = h.orch.read_models.runner.rebuild(projection)
            out[projection.name] = {
                "events": float(result.events),
                "seconds": result.seconds,
                "events_per_second": result.events_per_second,
            }
        return out
    finally:
        h.close()
        scratch.drop(store)


# ---- write cost ------------------------------------------------------------------------------


def _events_by_kind(orch: Orchestrator, after: int) -> tuple[int, int]:
    """(root command events, inventory events) recorded after notification `after`."""
    commands = inventory = 0
    position = after
    while True:
        page = orch.store.app.recorder.select_notifications(start=position, limit=1000, inclusive_of_start=False)
        for n in page:
            if n.topic.startswith(ROOT_COMMAND_TOPIC):
                commands += 1
            else:
                inventory += 1
        if len(page) < 1000:
            return commands, inventory
        position = page[-1].id


def run_write_cost(scratch: Scratch, backend: str, in_flight: int, commands: int) -> dict[str, float]:
    """Events, transactions and SQL statements of `commands` RemoveVm commands through the whole lifecycle."""
    store = scratch.store(backend, "wc")
    files = [store.path] if store.path else []
    with sql_counting(files) as tally:
        h = open_harness(scratch, store, commands)
        try:
            return _count_loop(h, tally, in_flight, commands)
        finally:
            h.close()
            scratch.drop(store)


def _count_loop(h: Harness, tally: SqlTally, in_flight: int, commands: int) -> dict[str, float]:
    head0 = h.orch.read_models.runner.head()
    tx0 = h.engine.writer.transactions
    window = TallyWindow(tally)
    window.open()
    run_closed_loop(h, in_flight, commands)
    sql = window.delta()
    command_events, inventory_events = _events_by_kind(h.orch, head0)
    tasks = commands * DISKS_PER_VM
    engine_tx = h.engine.writer.transactions - tx0
    per = {
        "events": float(command_events + inventory_events),
        "command_events": float(command_events),
        "inventory_events": float(inventory_events),
        "accept_transactions": float(commands),
        "engine_transactions": float(engine_tx),
        "projection_transactions": sql["write_transactions"] - commands - engine_tx,
        **sql,
    }
    out = {f"{k}_per_command": v / commands for k, v in per.items()}
    out |= {f"{k}_per_task": v / tasks for k, v in per.items()}
    return out


# ---- poll cycle cost -------------------------------------------------------------------------


@dataclass
class CycleCost:
    tasks_changed: int
    agent_calls: int
    engine_transactions: int
    events: int
    sql_statements: float
    sql_writes: float
    sql_write_transactions: float
    seconds: float


def _counted_cycle(h: Harness, tally: SqlTally) -> tuple[CycleReport, dict[str, float], float]:
    window = TallyWindow(tally)
    window.open()
    watch = Stopwatch()
    report = h.engine.cycle()
    return report, window.delta(), watch.seconds


def _cost(report: CycleReport, sql: dict[str, float], seconds: float, changed: int) -> CycleCost:
    return CycleCost(
        tasks_changed=changed,
        agent_calls=report.agent_calls,
        engine_transactions=report.store_transactions,
        events=report.events,
        sql_statements=sql["statements"],
        sql_writes=sql["writes"],
        sql_write_transactions=sql["write_transactions"],
        seconds=seconds,
    )


def run_cycle_cost(scratch: Scratch, backend: str, commands: int, task_seconds: float) -> list[CycleCost]:
    """An idle cycle (tasks running, nothing changed), then the cycle in which all tasks end."""
    store = scratch.store(backend, "cycle")
    files = [store.path] if store.path else []
    with sql_counting(files) as tally:
        h = open_harness(scratch, store, commands, task_seconds=task_seconds, warm=False, submit_batch=1000)
        try:
            return _idle_then_busy(h, tally, commands, task_seconds)
        finally:
            h.close()
            scratch.drop(store)


def _all_running(h: Harness) -> bool:
    return all(t.status is TaskStatus.RUNNING for c in h.engine.inflight.values() for t in c.tasks.values())


def _idle_then_busy(h: Harness, tally: SqlTally, commands: int, task_seconds: float) -> list[CycleCost]:
    for n in range(1, commands + 1):
        h.orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"})
    while not (h.engine.inflight and _all_running(h)):
        h.engine.cycle()
    all_created = time.monotonic()
    out = [_cost(*_counted_cycle(h, tally), 0) for _ in range(3)]
    if time.monotonic() > all_created + task_seconds:
        raise RuntimeError("tasks ended during the idle cycles; make task_seconds longer")
    time.sleep(max(0.0, all_created + task_seconds + 0.05 - time.monotonic()))
    out.append(_cost(*_counted_cycle(h, tally), commands * DISKS_PER_VM))
    if not h.engine.idle:
        raise RuntimeError(f"{len(h.engine.inflight)} command(s) still in flight after the busy cycle")
    return out


# ---- profile -----------------------------------------------------------------------------------


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
    store = scratch.store(backend, "prof")
    h = open_harness(scratch, store, commands)
    profiler = cProfile.Profile()
    try:
        watch = Stopwatch()
        profiler.enable()
        run_closed_loop(h, in_flight, commands)
        profiler.disable()
        seconds = watch.seconds
    finally:
        h.close()
        scratch.drop(store)
    profiler.dump_stats(out_file)
    stats = pstats.Stats(profiler)
    return seconds, _top(stats, "tottime", 15, lambda _: True), _top(stats, "cumtime", 15, _is_repo_code)


def _is_repo_code(filename: str) -> bool:
    return "/orchestrator/" in filename or "/projections/" in filename


def _top(stats: pstats.Stats, key: str, n: int, keep: Callable[[str], bool]) -> list[Hotspot]:
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    rows = [
        Hotspot(_label(func), nc, tt, ct)
        for func, (_cc, nc, tt, ct, _callers) in raw.items()
        if keep(func[0]) and "bench_engine" not in func[0] and "cProfile" not in func[0]
    ]
    rows.sort(key=lambda r: r.own_seconds if key == "tottime" else r.total_seconds, reverse=True)
    return rows[:n]


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    for marker in ("site-packages/", f"{REPO}/", "/lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})" if line else name
