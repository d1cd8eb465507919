"""Agent faults switched on at random for a while and off again, through the simulated agent's state file.

The engine subprocess reads the faults from that file on every agent call.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.testing import FaultConfig, SimulatedAgent
from scripts.soak_report import Figures

VERBS = ("delete_image", "create_volume", "copy_image")


@dataclass
class ActiveFault:
    until: float  # epoch seconds
    fields: dict[str, Any]


class Faults:
    """Faults switched on for a while, then off; written to the agent's state file each change."""

    def __init__(
        self, agent: SimulatedAgent, rng: random.Random, figures: Figures, cycle_seconds: float, kinds: tuple[str, ...]
    ) -> None:
        self.agent = agent
        self.rng = rng
        self.figures = figures
        self.cycle_seconds = cycle_seconds
        self.kinds = kinds
        self.active: dict[str, ActiveFault] = {}

    def _fields(self, kind: str, until: float) -> dict[str, Any]:
        r = self.rng
        if kind == "unreachable":
            return {"unreachable_until": until}
        if kind == "slow":
            return {"call_latency": round(r.uniform(0.05, 0.4), 3), "extra_task_seconds": round(r.uniform(0, 2), 2)}
        if kind == "timeout":
            return {"call_latency": 0.3, "timeout_seconds": 0.2}
        if kind == "vanish":
            return {"vanish_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "fail":
            return {"fail_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "refuse":
            return {"refuse_verbs": [r.choice(VERBS)]}
        if kind == "malformed":
            if r.random() < 0.5:
                return {"malformed_until": min(until, time.time() + r.uniform(0.3, 2.0))}
            return {"malformed_share": round(r.uniform(0.1, 0.5), 2)}
        if kind == "phantom":
            return {"phantom_tasks": r.randint(1, 3)}
        if kind == "network":
            return {"network_fault": r.choice(["http_500", "drop", "garbage"]), "network_fault_until": until}
        if kind == "slow_answer":  # the agent makes the tasks, then its answer is slow: cancels race with it
            return {"create_answer_latency": round(r.uniform(0.2, 1.0), 2)}
        raise ValueError(kind)

    def step(self, chance: float) -> None:
        now = time.time()
        changed = False
        for kind in [k for k, f in self.active.items() if f.until <= now]:
            del self.active[kind]
            changed = True
        if self.rng.random() < chance:
            kind = self.rng.choice([k for k in self.kinds if k not in self.active] or list(self.kinds))
            seconds = self.rng.uniform(0.5, 2.0) * self.cycle_seconds
            if kind in ("unreachable", "timeout"):  # the engine can do nothing meanwhile: keep these short
                seconds = min(seconds, self.rng.uniform(0.5, 2.5))
            until = now + seconds
            self.active[kind] = ActiveFault(until, self._fields(kind, until))
            self.figures.faults[kind] += 1
            changed = True
        if changed:
            self.write()

    def write(self) -> None:
        merged: dict[str, Any] = {"seed": self.rng.randrange(2**31)}
        for fault in self.active.values():
            for name, value in fault.fields.items():
                if name == "call_latency":
                    merged[name] = max(value, merged.get(name, 0.0))
                elif name == "timeout_seconds":
                    merged[name] = min(value, merged.get(name, 10.0))
                else:
                    merged[name] = value
        self.agent.backend.set_faults(FaultConfig.model_validate(merged))

    def clear(self) -> None:
        self.active.clear()
        self.agent.backend.set_faults(FaultConfig())

    def blocks_recovery(self) -> bool:
        """While the agent cannot answer, recovery waits for it (it never decides from silence)."""
        return any(k in self.active for k in ("unreachable", "timeout", "malformed"))
