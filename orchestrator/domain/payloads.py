"""The shapes of the events' payloads, typed.

They are stored as the JSON the library's transcoder writes (lists and objects),
so every event already in a store still reads; these types say what each field
holds. A pair or triple is a JSON array, typed here as a list of strings.
"""

from __future__ import annotations

from typing import Any, TypedDict

EntityRecord = list[str]  # [entity type, entity id, mode]: "read" takes a shared lock, "write" an exclusive one
AgentIdPair = list[str]  # [task id, agent task id]
RefusalPair = list[str]  # [task id, the agent's message]
StopPair = list[str]  # [task id, why the engine stops it]
VolumeTriple = list[str]  # [storage domain id, image id, volume id]


class TaskRecord(TypedDict):
    """A task a command expects, as recorded by its `Accepted` event."""

    task_id: str
    verb: str
    args: dict[str, str | int]
    entities: list[EntityRecord]


class ChildRecord(TypedDict):
    """A child command and the tasks it expects."""

    child_id: str
    command_type: str
    tasks: list[TaskRecord]


class TaskEndRecord(TypedDict):
    """How a task ended, as recorded by `TasksEnded`."""

    task_id: str
    status: str  # a TaskStatus: succeeded or failed
    kind: str  # an EndKind
    message: str
    result: dict[str, Any]
