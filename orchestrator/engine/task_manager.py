"""The task manager: the engine, as one worker per storage pool under a coordinator.

The coordinator recovers (it loads every command in flight and hands each to
its pool's worker, which recovers once its agent answers), then discovers what
other processes accepted, cancelled or terminated and hands it to the workers,
and keeps the read models current. Each worker runs its pool's cycle
(orchestrator/engine/worker.py) against its own agent, in a thread of its own
when the engine runs, so a slow or dead agent delays only its own pool's
commands. Every event is stamped with this engine's id, its epoch and the
phase (recovery or cycle) that wrote it.

With leases (orchestrator/engine/leases.py), as `orchestrator run` always has,
the engine runs only the pools whose lease it holds: it takes its fair share
of the pools, recovers each one it takes (that pool's commands only), lets a
worker go at once when its lease is lost or the store cannot be reached, and
stands by for pools held by others, taking them when their lease expires.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from uuid import UUID

from orchestrator.agent.port import AgentPort
from orchestrator.config import EngineSettings
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.engine.agents import AgentDirectory, SingleAgent
from orchestrator.engine.discovery import Discovery
from orchestrator.engine.leases import PoolLease, PoolLeases, share
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.engine.recovery import load_in_flight
from orchestrator.engine.report import CycleReport, RecoveryReport
from orchestrator.engine.worker import PoolWorker
from orchestrator.errors import LeaseLostError
from orchestrator.store.event_store import STORE_OUTAGES, EventStore

log = logging.getLogger("orchestrator.engine")

RECOVERY_WAIT = 0.05  # seconds between recovery attempts while every pool waits for its agent
# Threads of one `cycle()` call: enough to keep many agents' calls in flight at once; the
# work that needs the interpreter (parsing, deciding, writing) is serialised anyway.
MAX_CYCLE_THREADS = 32
REBALANCE_SECONDS = 1.0  # how often an engine looks for pools to take or give (at most)
STORE_RETRY_MAX = 5.0  # the longest wait between two tries of a store that does not answer

T = TypeVar("T")


def side_by_side(call: Callable[[PoolWorker], T], workers: list[PoolWorker]) -> list[T]:
    """`call` on every worker, in threads of their own when there are several."""
    if len(workers) <= 1:
        return [call(w) for w in workers]
    with ThreadPoolExecutor(min(len(workers), MAX_CYCLE_THREADS), thread_name_prefix="pool") as pool:
        return list(pool.map(call, workers))


def new_engine_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class TaskManager:
    def __init__(
        self,
        store: EventStore,
        agents: AgentDirectory | AgentPort,
        settings: EngineSettings,
        *,
        clock: Callable[[], float] = time.time,
        catch_up: Callable[[], object] | None = None,
        engine_id: str | None = None,
        epoch: int = 0,
        observer: EngineObserver = NO_OBSERVER,
        leases: PoolLeases | None = None,
        exit_on_lease_loss: bool = False,
    ) -> None:
        self.store = store
        self.agents: AgentDirectory = agents if isinstance(agents, AgentDirectory) else SingleAgent(agents)
        self.settings = settings
        self.leases = leases
        self.engine_id = leases.engine_id if leases is not None else (engine_id or new_engine_id())
        self.epoch = epoch
        self.clock = clock
        self.catch_up = catch_up
        self.observer = observer
        self.exit_on_lease_loss = exit_on_lease_loss
        self.lock = threading.RLock()
        self.workers: dict[str, PoolWorker] = {}
        self.pools: set[str] = {DEFAULT_POOL}  # every pool there is (with leases: to share)
        self.discovery = Discovery(store, self._hand, self._pool_changed, self.lock)
        self.store_trouble = ""
        self._store_retry_at = 0.0
        self._store_backoff = 0.0
        self._next_rebalance = 0.0
        self._behind = False  # the engine wrote since the read models were last brought up to date
        self._caught_up_at = float("-inf")
        if leases is not None:
            leases.health = self.agent_health

    def agent_health(self) -> dict[str, Any]:
        """Per pool this engine runs: how its agent answers, and the tasks its commands hold there."""
        return {
            pool: {**w.link.health(), "tasks_held": sum(len(c.uncleared_tasks) for c in list(w.held.values()))}
            for pool, w in list(self.workers.items())
        }

    def stamp(self, phase: str) -> dict[str, Any]:
        """Who writes: stored with every event this engine records (a worker adds its lease's epoch)."""
        return {"engine": self.engine_id, "epoch": self.epoch, "phase": phase}

    # ---- the workers ---------------------------------------------------------------------------

    def worker(self, pool: str, lease: PoolLease | None = None) -> PoolWorker:
        found = self.workers.get(pool)
        if found is None:
            with self.lock:  # the directory reads the store (the pool's agent)
                agent = self.agents.agent_for(pool)
            found = PoolWorker(
                pool,
                self.store,
                agent,
                self.settings,
                stamp=self.stamp,
                lock=self.lock,
                clock=self.clock,
                observer=self.observer,
                lease=lease,
            )
            self.workers[pool] = found
        return found

    def _hand(self, pool: str, arrival: RootCommand | UUID) -> None:
        if self.leases is None:
            self.worker(pool).hand(arrival)
        elif pool in self.workers:  # a pool of another engine is that engine's business
            self.workers[pool].hand(arrival)

    def _pool_changed(self, pool: str) -> None:
        self.pools.add(pool)
        self.agents.refresh(pool)
        if pool in self.workers:
            self.workers[pool].retarget(self.agents.agent_for(pool))

    @property
    def held(self) -> dict[UUID, RootCommand]:
        """Every command in flight this engine holds, of every pool."""
        return {i: c for w in list(self.workers.values()) for i, c in w.held.items()}

    @property
    def inflight(self) -> dict[UUID, RootCommand]:
        return self.held

    @property
    def idle(self) -> bool:
        return all(w.idle for w in list(self.workers.values()))

    @property
    def agent_trouble(self) -> str:
        troubles = [(w.pool, w.link.trouble) for w in self.workers.values() if w.link.trouble]
        if len(troubles) == 1 and len(self.workers) == 1:
            return troubles[0][1]
        return "; ".join(f"pool {pool}: {trouble}" for pool, trouble in troubles)

    @property
    def waiting_pools(self) -> dict[str, str]:
        """Pools whose recovery waits for their agent, and why."""
        return {w.pool: w.link.trouble or "not asked yet" for w in self.workers.values() if not w.recovered}

    @property
    def held_pools(self) -> dict[str, int]:
        """The pools this engine runs, with the epoch of each one's lease (0 without leases)."""
        return {p: (w.lease.epoch if w.lease is not None else self.epoch) for p, w in sorted(self.workers.items())}

    @property
    def transactions(self) -> int:
        return sum(w.writer.transactions for w in self.workers.values())

    # ---- recovery ------------------------------------------------------------------------------

    def recover(self, stop: Callable[[], bool] = lambda: False) -> RecoveryReport:
        """Find every command in flight and hand it to its pool's worker; each pool decides once its
        agent answers. Returns once some pool could decide (the others go on waiting in the cycles),
        or when `stop()` says so while every pool still waits. With leases, only the pools this
        engine takes are recovered (none, if others hold them all: it stands by)."""
        if self.catch_up is not None:
            self.catch_up()
        started = time.monotonic()
        for worker in self.workers.values():
            worker.held.clear()
        with self.lock:
            head, commands = load_in_flight(self.store)
        if self.leases is None:
            for command in commands:
                self.worker(command.pool_id).hand(command)
            self.worker(DEFAULT_POOL)  # the default pool's worker at least, so its agent's leftovers are swept
        else:
            self.pools |= self.discovery.known_pools() | {c.pool_id for c in commands}
            self.leases.start()
            self._rebalance(commands)
        self.discovery.position = head
        self.discovery.run()
        report = self._recover_some(stop)
        report.seconds = time.monotonic() - started
        report.waiting = self.waiting_pools
        report.agent_waits = sum(w.recovery.waits for w in self.workers.values())
        self.observer.recovered(report)
        return report

    def _recover_some(self, stop: Callable[[], bool]) -> RecoveryReport:
        report = RecoveryReport()
        while True:
            for attempt in side_by_side(_recover_of, [w for w in self.workers.values() if not w.recovered]):
                report.merge(attempt)
            if self.leases is not None:
                self._reap()  # a lease lost while recovering: stand by for that pool, as in the cycles
            if any(w.recovered for w in self.workers.values()) or not self.workers:
                return report
            if stop():
                report.gave_up = True
                return report
            time.sleep(RECOVERY_WAIT)

    # ---- leases: taking a fair share of the pools, letting go of lost ones -----------------------

    def _rebalance(self, preloaded: Sequence[RootCommand] | None = None) -> None:
        """Take the pools this engine should run and give up those it should not (its fair share)."""
        assert self.leases is not None
        snapshot = self.leases.snapshot()
        pinned = self.leases.engine.pinned
        plan = share(snapshot, self.engine_id, pinned, sorted(self.pools), self.leases.timeout, set(self.workers))
        for pool in plan.give:
            if pool in self.workers:
                log.info("giving pool %s up to another engine (a fair share)", pool, extra={"pool": pool})
                self._let_go(pool)
                self.leases.release(pool)
        taken = [(pool, epoch) for pool in plan.take if (epoch := self.leases.acquire(pool, snapshot.dead)) is not None]
        if not taken:
            return
        commands = preloaded
        if commands is None:
            with self.lock:
                _, commands = load_in_flight(self.store)
        for pool, epoch in taken:
            worker = self.worker(pool, PoolLease(self.leases, pool, epoch))
            mine = [c for c in commands if c.pool_id == pool]
            for command in mine:
                worker.hand(command)
            log.info(
                "took the lease of pool %s at epoch %d; recovering its %d command(s) in flight",
                pool,
                epoch,
                len(mine),
                extra={"event": "lease_taken", "pool": pool, "epoch": epoch},
            )

    def _let_go(self, pool: str) -> None:
        """Stop a pool's worker and forget what it held (another engine, or this one later, recovers it)."""
        worker = self.workers.pop(pool, None)
        if worker is None:
            return
        worker.stopping.set()
        worker.wake.set()
        if worker.thread is not None and worker.thread is not threading.current_thread():
            worker.thread.join()
        with self.lock:
            self.store.forget(list(worker.held))
        worker.held.clear()

    def _reap(self) -> None:
        """Let go of every worker whose lease is lost (said once, in one line); with
        --exit-on-lease-loss, raise instead."""
        assert self.leases is not None
        lost = {w.pool: w.lost for w in list(self.workers.values()) if w.lost}
        for pool in list(self.workers):
            if pool not in lost and self.leases.epoch(pool) is None:
                lost[pool] = self.leases.store_trouble or "it expired or another engine took it over"
        for pool, why in lost.items():
            epoch = self.held_pools.get(pool)
            self._let_go(pool)
            self.leases.forget(pool)
            log.warning(
                "lost the lease of pool %s (epoch %s): %s; stopped acting for it, standing by to take it again",
                pool,
                epoch,
                why,
                extra={"event": "lease_lost", "pool": pool, "epoch": epoch},
            )
            if self.exit_on_lease_loss:
                raise LeaseLostError(f"lost the lease of pool {pool} (epoch {epoch}): {why}")

    def _coordinate(self) -> None:
        """The coordinator's own store work (leases, discovery), riding through store outages."""
        if time.monotonic() < self._store_retry_at:
            return
        try:
            if self.leases is not None:
                self._reap()
                if time.monotonic() >= self._next_rebalance:
                    self._rebalance()
                    self._next_rebalance = time.monotonic() + min(REBALANCE_SECONDS, self.leases.renew_interval)
            self.discovery.run()
        except STORE_OUTAGES as exc:
            if self.leases is None:
                raise
            self._store_down(exc)
            return
        if self.store_trouble:
            log.warning("the store answers again", extra={"event": "store_back"})
            self.store_trouble = ""
            self._store_backoff = 0.0

    def _store_down(self, exc: BaseException) -> None:
        first = not self.store_trouble
        self.store_trouble = (str(exc).strip().splitlines() or ["?"])[0][:300]
        self._store_backoff = min(STORE_RETRY_MAX, max(0.2, self._store_backoff * 2))
        self._store_retry_at = time.monotonic() + self._store_backoff
        if first:
            log.warning(
                "the store cannot be reached (%s); deciding nothing, retrying with backoff",
                self.store_trouble,
                extra={"event": "store_down"},
            )

    # ---- the cycle (every pool's at once, once: for tests, benchmarks and a caller's own loop) ----

    def cycle(self) -> CycleReport:
        """One cycle of every pool, the pools side by side (a slow agent delays only its own pool's
        share, though this call returns when the slowest is done)."""
        started = time.monotonic()
        self._coordinate()
        report = CycleReport()
        for done in side_by_side(_cycle_of, list(self.workers.values())):
            report.add(done)
        self._behind = self._behind or bool(report.store_transactions)
        self._catch_up_if_due(raise_outages=True)
        self.observer.cycle_done(report, time.monotonic() - started)
        return report

    # ---- running: one thread per pool ------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> None:
        # The engine holds many long-lived aggregates; collecting the young generation less
        # often keeps the collector from rescanning them (about 10% of a busy cycle).
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50_000), 50, 50)

        def observed(report: CycleReport) -> None:
            if report.store_transactions:
                self._behind = True
            self.observer.cycle_done(report, report.seconds)
            if on_cycle is not None:
                on_cycle(report)

        try:
            while not stop.is_set():
                self._coordinate()
                for worker in list(self.workers.values()):
                    if worker.thread is None:
                        worker.thread = threading.Thread(
                            target=worker.loop, args=(observed,), name=f"pool-{worker.pool}", daemon=True
                        )
                        worker.thread.start()
                failed = next((w.failure for w in self.workers.values() if w.failure is not None), None)
                if failed is not None:
                    raise failed
                self._catch_up_if_due(raise_outages=self.leases is None)
                if until_idle and self.idle and (self.leases is None or self.workers):
                    break
                stop.wait(self.settings.poll_interval)
        finally:
            self._stop_threads()
            self._behind = True
            self._catch_up_if_due(raise_outages=self.leases is None, now=True)
            gc.set_threshold(*thresholds)

    def _stop_threads(self) -> None:
        """Stop every worker's thread; the workers keep what they hold (a later run goes on)."""
        workers = list(self.workers.values())
        for worker in workers:
            worker.stopping.set()
            worker.wake.set()
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join()
            worker.thread = None
            worker.stopping.clear()

    def _catch_up_if_due(self, *, raise_outages: bool, now: bool = False) -> None:
        """Bring the read models up to date if the engine wrote since they were, at most once per
        `catch_up_interval`, busy or idle: a catch-up of a hundred cycles, or of the fifty commands
        run one after another meanwhile, costs about what one costs. Readers never depend on it:
        every query catches the read models up first."""
        if self.catch_up is None or not self._behind:
            return
        if not (now or time.monotonic() >= self._caught_up_at + self.settings.catch_up_interval):
            return
        self._behind = False
        self._caught_up_at = time.monotonic()
        try:
            self.catch_up()
        except STORE_OUTAGES as exc:
            self._behind = True
            if raise_outages:
                raise
            self._store_down(exc)


def _recover_of(worker: PoolWorker) -> RecoveryReport | None:
    """A worker's recovery attempt; one that finds its lease gone says so in `lost`, as in a cycle."""
    try:
        return worker.recover()
    except LeaseLostError as exc:
        worker.lost = str(exc)
        return None


def _cycle_of(worker: PoolWorker) -> CycleReport:
    """A worker's cycle; one that finds its lease gone says so in `lost` (the coordinator lets it go)."""
    try:
        return worker.cycle()
    except LeaseLostError as exc:
        worker.lost = str(exc)
        return CycleReport()
