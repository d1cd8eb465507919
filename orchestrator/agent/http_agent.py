"""The engine's agent port over the network: `HttpAgent` (docs/agent-protocol.md).

`HttpAgent` implements `AgentPort` over JSON-RPC 2.0 on HTTP (`RpcClient`).
Before its first call, and again after the agent was out of reach, it asks the
agent who it is. Every answer crosses the same validating boundary as the
simulated agent's (the models and parse functions of port.py and protocol.py),
and every failure is one of two errors, each one line naming the agent's URL:
`AgentUnavailableError` (no usable answer now: the engine waits and retries)
or `AgentProtocolError` (an answer that is not a valid answer, a malformed
result, another protocol major version, another pool: the engine decides
nothing from it; `StaleEpochError` says another engine has taken over).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from orchestrator.agent.port import (
    AgentTaskStatus,
    CreateResult,
    StorageView,
    TaskSpec,
    parse_create_results,
    parse_statuses,
    parse_storage,
)
from orchestrator.agent.protocol import (
    PROTOCOL_VERSION,
    CreateTasksResult,
    EmptyResult,
    Fence,
    IdentifyResult,
    RevertOutcome,
    RevertTasksResult,
    TaskStatusesResult,
    parse_result,
    protocol_major,
    result_field,
)
from orchestrator.agent.rpc import CALL_TIMEOUT, CONNECT_TIMEOUT, MAX_ANSWER_BYTES, READ_TIMEOUT, RpcClient, one_line
from orchestrator.errors import AgentProtocolError, AgentUnavailableError

__all__ = ["HttpAgent"]


class HttpAgent:
    """The engine's `AgentPort` over the agent protocol, with identity checks and fencing."""

    def __init__(
        self,
        url: str,
        *,
        expected_pool: str | None = None,
        name: str | None = None,
        fence: Fence | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.rpc = RpcClient(
            url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            call_timeout=call_timeout,
            max_answer_bytes=max_answer_bytes,
        )
        self.url = url
        self.name = name or self.rpc.shown_url
        self.expected_pool = expected_pool
        self.fence = fence  # sent with every mutating call while set
        self.identity: IdentifyResult | None = None
        self.calls: dict[str, int] = {}
        self._identity_lock = threading.Lock()

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> HttpAgent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- identity -------------------------------------------------------------------------------

    def identify(self) -> IdentifyResult:
        """Ask the agent who it is; refuse another protocol major version or another pool."""
        where = f"agent at {self.rpc.shown_url}"
        self._count("Agent.identify")
        identity = parse_result(IdentifyResult, self.rpc.call("Agent.identify", {}), "Agent.identify")
        theirs, ours = protocol_major(identity.protocol_version), protocol_major(PROTOCOL_VERSION)
        if theirs != ours:
            upgrade = "the engine" if theirs > ours else "the agent"
            raise AgentProtocolError(
                f"{where} speaks protocol {identity.protocol_version}; this engine speaks {ours}.x; "
                f"upgrade {upgrade} so that both speak the same major version"
            )
        if self.expected_pool is not None and identity.pool_id != self.expected_pool:
            raise AgentProtocolError(
                f"{where} serves pool {identity.pool_id!r}, not pool {self.expected_pool!r}; "
                f"check the agent URL configured for pool {self.expected_pool!r}"
            )
        self.identity = identity
        return identity

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        with self._identity_lock:
            if self.identity is None:  # on first use, and again after the agent was out of reach
                self.identify()
        self._count(method)
        try:
            return self.rpc.call(method, params)
        except AgentUnavailableError:
            self.identity = None  # whatever answers next at this URL may be another agent
            raise

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def _fenced(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "fence": self.fence.model_dump()} if self.fence is not None else params

    def announce(self, fence: Fence) -> None:
        """Act under this fence from now on, and tell the agent at once (an empty, fenced
        `Tasks.clear`): from then on it refuses the calls of any engine with an older fence."""
        self.fence = fence
        raw = self._call("Tasks.clear", self._fenced({"agent_task_ids": []}))
        with self.rpc.naming_agent():
            parse_result(EmptyResult, raw, "clear_tasks")

    # ---- the engine's AgentPort ---------------------------------------------------------------

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        """Create tasks; a key the agent already holds returns that task (idempotent)."""
        if not specs:
            return []
        raw = self._call("Tasks.create", self._fenced({"tasks": [s.model_dump() for s in specs]}))
        with self.rpc.naming_agent():
            return parse_create_results(result_field(raw, CreateTasksResult, "create_tasks"), specs)

    def task_statuses(self) -> list[AgentTaskStatus]:
        """Every task the agent holds, with its key and status, in one call."""
        raw = self._call("Tasks.statuses", {})
        with self.rpc.naming_agent():
            return parse_statuses(result_field(raw, TaskStatusesResult, "task_statuses"))

    def stop_task(self, agent_task_id: str) -> None:
        self.stop_tasks([agent_task_id])

    def stop_tasks(self, agent_task_ids: Sequence[str]) -> None:
        """Stop running tasks; ended or unknown ids are no-ops."""
        if agent_task_ids:
            raw = self._call("Tasks.stop", self._fenced({"agent_task_ids": list(agent_task_ids)}))
            with self.rpc.naming_agent():
                parse_result(EmptyResult, raw, "stop_tasks")

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        """Forget ended tasks; unknown ids are ignored (clearing twice is safe)."""
        if agent_task_ids:
            raw = self._call("Tasks.clear", self._fenced({"agent_task_ids": list(agent_task_ids)}))
            with self.rpc.naming_agent():
                parse_result(EmptyResult, raw, "clear_tasks")

    def revert_task(self, agent_task_id: str) -> bool:
        """Undo the storage effect of a task that finished with success (idempotent).

        True if its effect is undone (now, or by an earlier call); False if it had none."""
        (outcome,) = self.revert_tasks([agent_task_id])
        if outcome.error:
            raise AgentProtocolError(
                f"agent at {self.rpc.shown_url} could not revert task {agent_task_id}: {one_line(outcome.error)}"
            )
        return outcome.reverted

    def revert_tasks(self, agent_task_ids: Sequence[str]) -> list[RevertOutcome]:
        """Undo the storage effects of tasks, one outcome per id in the order given."""
        if not agent_task_ids:
            return []
        raw = self._call("Tasks.revert", self._fenced({"agent_task_ids": list(agent_task_ids)}))
        with self.rpc.naming_agent():
            outcomes = parse_result(RevertTasksResult, raw, "revert_tasks").results
            if [o.agent_task_id for o in outcomes] != list(agent_task_ids):
                raise AgentProtocolError("agent answered revert_tasks for other tasks than it was given")
        return outcomes

    def storage(self) -> StorageView:
        """The agent's storage: every volume, by storage domain and image."""
        raw = self._call("Storage.view", {})
        with self.rpc.naming_agent():
            return parse_storage(raw)
