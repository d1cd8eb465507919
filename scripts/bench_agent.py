"""The simulated agent as the benchmark uses it: every call timed, and bare storage to delete."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from orchestrator import AgentTaskStatus, CreateResult, StorageView, TaskSpec
from orchestrator.agent.port import AgentPort
from orchestrator.testing import SimulatedAgent
from scripts.bench_plan import DISKS_PER_VM

T = TypeVar("T")


class TimedAgent:
    """The simulated agent with every call timed (calls are serialised, as the agent's own lock does)."""

    def __init__(self, agent: AgentPort) -> None:
        self.inner = agent
        self.name = agent.name
        self.busy_seconds = 0.0
        self._lock = threading.Lock()

    def _timed(self, call: Callable[[], T]) -> T:
        with self._lock:
            started = time.perf_counter()
            try:
                return call()
            finally:
                self.busy_seconds += time.perf_counter() - started

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        return self._timed(lambda: self.inner.create_tasks(specs))

    def task_statuses(self) -> list[AgentTaskStatus]:
        return self._timed(self.inner.task_statuses)

    def stop_task(self, agent_task_id: str) -> None:
        self._timed(lambda: self.inner.stop_task(agent_task_id))

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        self._timed(lambda: self.inner.clear_tasks(agent_task_ids))

    def revert_task(self, agent_task_id: str) -> bool:
        return self._timed(lambda: self.inner.revert_task(agent_task_id))

    def storage(self) -> StorageView:
        return self._timed(self.inner.storage)


def seed_agent_images(agent: SimulatedAgent, commands: int) -> None:
    """Give a bare agent the images the RemoveVm-like work of `commands` commands deletes."""
    volumes = [
        ("sd-1", f"img-{n:04d}-{k}", f"vol-{n:04d}-{k}-base")
        for n in range(1, commands + 1)
        for k in range(1, DISKS_PER_VM + 1)
    ]
    agent.backend.seed_storage(["sd-1", "sd-2"], volumes)
