"""Our engine under load: a seeded store with an engine over a timed agent, and the closed loop that drives it.

The loop runs in one process: before each engine cycle, new RemoveVm commands
(4 disks each) are accepted (`Orchestrator.submit`, one transaction each, or
`submit_many`) until `in_flight` commands are held by the engine; the engine's
`cycle()` then submits, polls, runs end actions and clears. The clock runs from
the first accept to the last clear. The agent's tasks finish at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from orchestrator import DEFAULT_POOL, Orchestrator, SubmitResult, TaskManager, load_engine_settings
from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.port import AgentPort
from orchestrator.testing import AgentProcess, SimulatedAgent
from projections import ReadModelRunner
from scripts.bench_agent import TimedAgent
from scripts.bench_numbers import Stopwatch
from scripts.bench_plan import DISKS_PER_VM
from scripts.bench_stores import Scratch, Store


class LagSamplingRunner(ReadModelRunner):
    """The engine's projection runner, noting how far behind the log it is before each catch-up."""

    max_lag = 0
    catch_up_seconds = 0.0
    events = 0  # events the catch-ups read (every event of the log, inventory events included)
    writes = 0  # catch-ups that applied events (each at least one transaction)

    def catch_up(self, *, batch_size: int | None = None, max_seconds: float | None = None) -> int:
        started = time.perf_counter()
        try:
            # the events a catch-up reads are how far behind the log it was (no extra statement)
            events = super().catch_up(batch_size=batch_size, max_seconds=max_seconds)
        finally:
            self.catch_up_seconds += time.perf_counter() - started
        self.max_lag = max(self.max_lag, events)
        self.events += events
        self.writes += 1 if events else 0
        return events


@dataclass
class Harness:
    """One store, seeded, with an engine over a timed simulated agent."""

    orch: Orchestrator
    agent: SimulatedAgent
    timed: TimedAgent
    engine: TaskManager
    lag: LagSamplingRunner


@contextmanager
def harness(
    scratch: Scratch,
    store: Store,
    vms: int,
    *,
    task_seconds: float = 0.0,
    warm: bool = True,
    over_http: bool = False,
    **settings: Any,
) -> Iterator[Harness]:
    """A seeded store (`vms` VMs, plus one for a warm-up command run before anything is measured), dropped after.

    `over_http`: the engine talks to the agent served by a process of its own (`orchestrator agent
    serve` on loopback) rather than in this process; `agent` is still the state file opened here,
    for the invariants."""
    with ExitStack() as cleanup:
        cleanup.callback(scratch.drop, store)
        orch = Orchestrator.open(store.url, agent_state=scratch.agent_path(store.label), create=True)
        cleanup.callback(orch.close)
        lag = LagSamplingRunner(orch.read_models.tables, orch.store)
        orch.read_models.runner = lag
        orch.seed(vms + 1, DISKS_PER_VM)
        agent = SimulatedAgent.open(orch.agent_state, task_seconds=task_seconds)
        cleanup.callback(agent.close)
        timed = TimedAgent(agent if not over_http else served_agent(cleanup, orch.agent_state, task_seconds))
        engine = orch.engine(timed, load_engine_settings(poll_interval=0.01, **settings))
        engine.recover()
        h = Harness(orch, agent, timed, engine, lag)
        if warm:
            warm_up(h, f"vm-{vms + 1:04d}")
        yield h


def served_agent(cleanup: ExitStack, state: Path, task_seconds: float) -> AgentPort:
    """The agent at `state`, served by a process of its own for as long as `cleanup` runs, and a client of it."""
    server = AgentProcess(state, DEFAULT_POOL, task_seconds=task_seconds).start()
    cleanup.callback(server.kill)
    client = HttpAgent(server.url, expected_pool=DEFAULT_POOL)
    cleanup.callback(client.close)
    return client


def warm_up(h: Harness, vm_id: str) -> None:
    """One command start to end, so that first-use costs (imports, caches, prepared statements) are not timed."""
    h.orch.submit("RemoveVm", {"vm_id": vm_id})
    h.engine.cycle()
    while not h.engine.idle:
        h.engine.cycle()
    h.lag.max_lag = 0
    h.lag.catch_up_seconds = 0.0
    h.lag.events = 0
    h.timed.busy_seconds = 0.0


@dataclass
class LoopResult:
    seconds: float
    commands: int
    cycles: int
    accept_seconds: float
    engine_transactions: int  # the store transactions of the engine's cycles
    accepted_ids: list[UUID] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return self.commands * DISKS_PER_VM


def run_closed_loop(h: Harness, in_flight: int, commands: int, *, batched: bool = False) -> LoopResult:
    """Keep `in_flight` commands in the engine until `commands` have run; one process, no sleeps.

    `batched`: the commands that fit are accepted with one `submit_many` (one transaction)
    instead of one `submit` (one transaction) each."""
    watch = Stopwatch()
    accepted: list[UUID] = []
    accept_seconds = 0.0
    cycles = transactions = 0
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
        transactions += h.engine.cycle().store_transactions
        cycles += 1
    h.orch.read_models.catch_up()  # the engine catches up at most once per interval: the rest is timed here
    return LoopResult(watch.seconds, commands, cycles, accept_seconds, transactions, accepted)
