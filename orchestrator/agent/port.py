"""The host agent interface (VDSM acting as SPM, in the reference engine).

Every answer from an agent crosses this boundary as a pydantic model; an
answer that does not validate raises `AgentProtocolError`, and the engine then
decides nothing from it. An unreachable or timed-out agent raises
`AgentUnavailableError`, and the engine waits and retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from orchestrator.domain.recovery import AgentTaskFact, AgentView
from orchestrator.errors import AgentProtocolError


class AgentTaskState(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # ended by itself: see result
    ABORTED = "aborted"  # stopped before it finished


class AgentTaskResult(StrEnum):
    NONE = ""  # still running
    SUCCESS = "success"
    FAILURE = "failure"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Strict):
    """A task the engine asks the agent to create; `key` is the idempotency key."""

    key: str = Field(min_length=1, max_length=200)
    verb: str = Field(min_length=1, max_length=64)
    args: dict[str, str | int] = Field(default_factory=dict)


class CreateResult(_Strict):
    key: str
    accepted: bool
    agent_task_id: str | None = None
    error: str = ""


class AgentTaskStatus(_Strict):
    agent_task_id: str = Field(min_length=1, max_length=200)
    key: str
    verb: str
    state: AgentTaskState
    result: AgentTaskResult
    message: str = ""
    created_at: datetime

    @property
    def ended(self) -> bool:
        return self.state is not AgentTaskState.RUNNING

    @property
    def succeeded(self) -> bool:
        return self.state is AgentTaskState.FINISHED and self.result is AgentTaskResult.SUCCESS


class VolumeView(_Strict):
    storage_domain_id: str
    image_id: str
    volume_id: str
    parent_id: str | None = None


class StorageView(_Strict):
    storage_domains: list[str]
    volumes: list[VolumeView]

    def triples(self) -> set[tuple[str, str, str]]:
        return {(v.storage_domain_id, v.image_id, v.volume_id) for v in self.volumes}


T = TypeVar("T")

_CREATE_RESULTS = TypeAdapter(list[CreateResult])
_STATUSES = TypeAdapter(list[AgentTaskStatus])


def parse_create_results(raw: Any, specs: Sequence[TaskSpec]) -> list[CreateResult]:
    results = _validated(_CREATE_RESULTS, raw, "create_tasks")
    if [r.key for r in results] != [s.key for s in specs]:
        raise AgentProtocolError("agent answered create_tasks for other keys than it was given")
    for r in results:
        if r.accepted and not r.agent_task_id:
            raise AgentProtocolError(f"agent accepted task {r.key} without giving a task id")
    return results


def parse_statuses(raw: Any) -> list[AgentTaskStatus]:
    statuses = _validated(_STATUSES, raw, "task_statuses")
    ids = [s.agent_task_id for s in statuses]
    if len(set(ids)) != len(ids):
        raise AgentProtocolError("agent reported the same task id twice in one answer")
    return statuses


def parse_storage(raw: Any) -> StorageView:
    return _validated(TypeAdapter(StorageView), raw, "storage")


def _validated(adapter: TypeAdapter[T], raw: Any, call: str) -> T:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise AgentProtocolError(f"agent gave a malformed answer to {call} ({where}: {first['msg']})") from None


def view_of(statuses: Iterable[AgentTaskStatus]) -> AgentView:
    """What recovery and the inspection read of the agent's answer: key, id and whether it ended."""
    return AgentView(AgentTaskFact(s.agent_task_id, s.key, s.ended) for s in statuses)


@runtime_checkable
class AgentPort(Protocol):
    """What the engine needs of a host agent. Every method is one call to the agent."""

    name: str

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        """Create tasks; a key the agent already has returns that task (idempotent)."""

    def task_statuses(self) -> list[AgentTaskStatus]:
        """Every task the agent holds, with its key and status, in one call."""

    def stop_task(self, agent_task_id: str) -> None:
        """Stop a running task; no effect on an ended or unknown task."""

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        """Forget ended tasks; unknown ids are ignored (clearing twice is safe)."""

    def revert_task(self, agent_task_id: str) -> bool:
        """Undo the storage effect of a task that finished with success (idempotent).

        True if its effect is undone (now, or by an earlier call); False if it had none."""

    def storage(self) -> StorageView:
        """The agent's storage: every volume, by storage domain and image."""
