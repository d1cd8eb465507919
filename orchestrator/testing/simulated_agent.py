"""The simulated host agent, in process: `SimulatedAgent`, the engine's `AgentPort` over its backend.

The backend (simulator_backend.py) answers with plain data, as a remote agent
would over the wire; `SimulatedAgent` validates every answer with the port's
parse functions before the engine sees it, so a garbled answer (a simulated
fault) is refused here as it would be over the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.agent.port import (
    AgentTaskStatus,
    CreateResult,
    StorageView,
    TaskSpec,
    parse_create_results,
    parse_statuses,
    parse_storage,
)
from orchestrator.errors import AgentProtocolError
from orchestrator.testing.simulator_backend import SimulatedAgentBackend, task_seconds_from_env


class SimulatedAgent:
    """The engine's client for the simulated agent: validates every answer; `calls` counts them by method."""

    def __init__(self, backend: SimulatedAgentBackend, name: str = "spm") -> None:
        self.backend = backend
        self.name = name
        self.calls: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path, *, task_seconds: float | None = None) -> SimulatedAgent:
        seconds = task_seconds if task_seconds is not None else task_seconds_from_env()
        return cls(SimulatedAgentBackend(path, task_seconds=seconds))

    def close(self) -> None:
        self.backend.close()

    def _count(self, call: str) -> None:
        self.calls[call] = self.calls.get(call, 0) + 1

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        self._count("create_tasks")
        raw = self.backend.create_tasks([s.model_dump() for s in specs])
        return parse_create_results(raw, specs)

    def task_statuses(self) -> list[AgentTaskStatus]:
        self._count("task_statuses")
        return parse_statuses(self.backend.task_statuses())

    def stop_task(self, agent_task_id: str) -> None:
        self._count("stop_task")
        self.backend.stop_task(agent_task_id)

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        if agent_task_ids:
            self._count("clear_tasks")
            self.backend.clear_tasks(list(agent_task_ids))

    def revert_task(self, agent_task_id: str) -> bool:
        self._count("revert_task")
        answer = self.backend.revert_task(agent_task_id)
        if not isinstance(answer, dict) or not isinstance(answer.get("reverted"), bool):
            raise AgentProtocolError("agent gave a malformed answer to revert_task")
        if answer.get("error"):
            raise AgentProtocolError(f"agent could not revert task {agent_task_id}: {answer['error']}")
        return bool(answer["reverted"])

    def storage(self) -> StorageView:
        self._count("storage")
        return parse_storage(self.backend.storage())
