"""One soak run: the cycles (submit, cancel, kill, crash, fault, rebuild, check), then the final run and checks."""

from __future__ import annotations

import random
import time

from rich.console import Console

from orchestrator import DEFAULT_POOL, Orchestrator
from orchestrator.pools import set_pool_agent
from orchestrator.store import parse_store_url
from orchestrator.testing import SimulatedAgent, check_invariants
from scripts.soak_checks import TruthCheck, compare_views, diagnose, scan_logs
from scripts.soak_config import EARLY_KILL_SECONDS, SoakConfig
from scripts.soak_engine import AgentServer, Engines, Rebuilder
from scripts.soak_faults import Faults
from scripts.soak_report import Figures, tally_outcomes
from scripts.soak_workload import Workload


class Soak:
    def __init__(self, config: SoakConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.rng = random.Random(config.seed)
        self.figures = Figures(
            seed=config.seed,
            store=parse_store_url(config.store).redacted,
            agent_state=str(config.agent_state),
            workdir=str(config.workdir),
        )
        self.orch = Orchestrator.open(config.store, agent_state=config.agent_state, create=True)
        self.agent = SimulatedAgent.open(config.agent_state)  # the state file: faults, journal, storage
        self.server: AgentServer | None = None
        if config.agent_server:
            self.server = AgentServer(config, self.figures)
            self.server.start()
            set_pool_agent(self.orch, DEFAULT_POOL, self.server.url)
        self.engines = Engines(config, self.rng, self.figures)
        self.rebuilder = Rebuilder(config, self.rng, self.figures, self.engines.first)
        self.faults = Faults(self.agent, self.rng, self.figures, config.cycle_seconds, config.fault_kinds)
        self.workload = Workload(self.orch, config, self.rng, self.figures)
        self.truth = TruthCheck(self.agent, self.figures)

    def close(self) -> None:
        self.engines.kill()
        if self.server is not None:
            self.server.kill(counted=False)
        self.agent.close()
        self.orch.close()

    def run(self) -> Figures:
        started = time.monotonic()
        self.faults.clear()
        self.workload.seed_vms(self.config.vms)
        self.engines.start()
        for cycle in range(1, self.config.cycles + 1):
            self.cycle(cycle)
        self.finish()
        self.figures.seconds = time.monotonic() - started
        return self.figures

    def cycle(self, cycle: int) -> None:
        c, rng, work = self.config, self.rng, self.workload
        self.figures.cycles = cycle
        cycle_end = time.monotonic() + rng.uniform(0.5, 1.5) * c.cycle_seconds
        self.engines.check_alive(cycle)
        if cycle % c.truth_every == 0:
            self.truth.run(self.orch, work.in_flight, cycle)
        self.faults.step(c.fault_chance)
        self.rebuilder.step(cycle)
        fresh = work.submit_round()
        if rng.random() < c.race_cancel_chance:
            work.cancel_racing(fresh)
        if rng.random() < c.recovery_crash_chance and not self.faults.blocks_recovery():
            self.engines.crash_in_recovery(cycle)
        cancel_at = time.monotonic() + rng.uniform(0, c.cycle_seconds)
        cancel = rng.random() < c.cancel_chance
        if rng.random() < c.kill_chance:
            _sleep_until(min(cycle_end, time.monotonic() + rng.uniform(0, c.cycle_seconds)))
            engine = self.engines.pick()  # with several engines, any one of them
            engine.kill()
            _sleep_until(min(cycle_end, time.monotonic() + rng.uniform(0, 0.5)))
            engine.start()
            if rng.random() < c.recovery_kill_chance:
                _sleep_until(time.monotonic() + rng.uniform(0.05, EARLY_KILL_SECONDS - 0.1))
                engine.kill()
                engine.start()
        if cancel:
            _sleep_until(min(cancel_at, cycle_end))
            work.cancel_one()
        if self.server is not None and rng.random() < c.agent_kill_chance:
            self.server.kill()  # the engine waits for it, deciding nothing meanwhile
            _sleep_until(min(cycle_end, time.monotonic() + rng.uniform(0.2, 1.0)))
            self.server.start()
        _sleep_until(cycle_end)
        self.console.print(
            f"cycle {cycle}/{c.cycles}: {len(work.in_flight)} in flight, "
            f"faults: {', '.join(sorted(self.faults.active)) or 'none'}; kills {self.figures.kills}",
            highlight=False,
            markup=False,
        )

    def finish(self) -> None:
        """Faults off, every engine killed once more and one run until idle; then every check, on a fresh
        Orchestrator."""
        self.engines.check_alive(self.config.cycles)
        self.rebuilder.finish()
        self.faults.clear()
        self.engines.kill()
        drain_started = time.monotonic()
        self.console.print("last cycle done: faults cleared, engines killed; running one until idle", highlight=False)
        self.engines.drain()
        self.figures.drain_seconds = time.monotonic() - drain_started
        # The invariants are read by a fresh Orchestrator, as a new process would; the soak's own
        # long-lived one (which cancelled and submitted all along) must see the same thing.
        accepted = self.workload.accepted
        with Orchestrator.open(self.config.store, agent_state=self.config.agent_state, create=False) as truth:
            tally_outcomes(self.figures, truth, accepted)
            self.figures.invariants = check_invariants(truth, self.agent, expected_commands=list(accepted))
            compare_views(self.figures, truth, self.orch, accepted, self.workload.cancelled)
            scan_logs(self.figures, self.config.workdir)
            if not all(r.ok for r in self.figures.invariants):
                self.figures.diagnosis += diagnose(truth, self.agent)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
