"""The agent protocol: JSON-RPC 2.0 over HTTP POST, one endpoint URL per agent.

Every request's params and every result is one of the pydantic models below
(extra fields are refused), so the models are the contract: the JSON Schema in
`docs/agent-protocol.schema.json` is generated from them (`protocol_schema()`,
or `python -m orchestrator.agent.protocol --schema`), and
`docs/agent-protocol.md` explains them to whoever writes an agent.

The `Simulator.*` methods are not part of the protocol proper: they are the
simulated agent's administration (journal, faults, seeding), which a real
agent does not have.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic.json_schema import models_json_schema

from orchestrator.agent.port import AgentTaskStatus, CreateResult, StorageView, TaskSpec
from orchestrator.errors import AgentError, AgentProtocolError
from orchestrator.testing.simulated_agent import FaultConfig

PROTOCOL_VERSION = "1.0"  # major.minor: a client refuses an agent of another major version
JSONRPC_VERSION = "2.0"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "agent-protocol.schema.json"

# Standard JSON-RPC 2.0 error codes, and the two of this protocol (in the server-defined range).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AGENT_UNAVAILABLE = -32000
STALE_EPOCH = -32001

ERROR_CODES: dict[int, str] = {
    PARSE_ERROR: "parse error: the body is not JSON",
    INVALID_REQUEST: "invalid request: not a single JSON-RPC 2.0 request object with an id (batches are refused)",
    METHOD_NOT_FOUND: "method not found",
    INVALID_PARAMS: "invalid params: the params do not validate against the method's params model",
    INTERNAL_ERROR: "internal error: the agent failed to carry out the call",
    AGENT_UNAVAILABLE: "agent unavailable: it cannot serve calls right now; retry later",
    STALE_EPOCH: "stale epoch: the fence's epoch is lower than one the agent has seen; the caller was deposed",
}


class StaleEpochError(AgentError):
    """The agent refused a call whose fence is older than one it has seen: this engine was deposed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- fencing ----------------------------------------------------------------------------------


_FENCE = "who makes the call; refused with -32001 if older than a fence the agent has seen"


class Fence(_Model):
    """Who makes a mutating call: the engine and the epoch of its lease (higher is newer)."""

    engine_id: str = Field(min_length=1, max_length=200)
    epoch: StrictInt = Field(ge=0)


# ---- the JSON-RPC envelope ----------------------------------------------------------------------


class RpcRequest(_Model):
    """One call. `params` may be omitted for methods without params; it must be an object."""

    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr
    method: str = Field(min_length=1)
    params: dict[str, Any] | None = None  # by name only: by-position params are refused with -32602


class RpcErrorObject(_Model):
    code: StrictInt
    message: str
    data: Any = None


class RpcSuccess(_Model):
    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr
    result: Any


class RpcFailure(_Model):
    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr | None
    error: RpcErrorObject


# ---- the protocol's methods ---------------------------------------------------------------------


class NoParams(_Model):
    """Params of a method that takes none: `{}` (or params omitted)."""


class EmptyResult(_Model):
    """The result of a call that only acknowledges: `{}`."""


class IdentifyResult(_Model):
    agent_id: str = Field(min_length=1, max_length=200)
    pool_id: str = Field(min_length=1, max_length=200)
    protocol_version: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    software: str = Field(max_length=200)


class CreateTasksParams(_Model):
    tasks: list[TaskSpec]
    fence: Fence | None = Field(None, description=_FENCE)


class CreateTasksResult(_Model):
    results: list[CreateResult] = Field(description="one per task, in the order given")


class TaskStatusesResult(_Model):
    tasks: list[AgentTaskStatus] = Field(description="every task held (created, not cleared), in creation order")


class TaskIdsParams(_Model):
    agent_task_ids: list[str]
    fence: Fence | None = Field(None, description=_FENCE)


class StopTasksParams(TaskIdsParams):
    """Stop running tasks; ended or unknown ids are ignored."""


class ClearTasksParams(TaskIdsParams):
    """Forget ended tasks; running or unknown ids are ignored."""


class RevertTasksParams(TaskIdsParams):
    """Undo the storage effect of tasks that finished with success."""


class RevertOutcome(_Model):
    agent_task_id: str
    reverted: bool = Field(description="true: its effect is undone (now, or by an earlier call); false: it had none")
    error: str = Field("", description="why the effect cannot be undone; empty if it can")


class RevertTasksResult(_Model):
    results: list[RevertOutcome] = Field(description="one per id, in the order given")


# ---- the simulator's administration (not part of the protocol proper) -------------------------


class JournalEntry(_Model):
    """A task the simulated agent was ever given, and what became of it."""

    agent_task_id: str
    key: str
    verb: str
    args: str = Field(description="the task's args, as JSON text")
    state: str
    result: str
    message: str
    created_at: float = Field(description="epoch seconds, like every time here")
    ended_at: float | None
    effect_applied: int
    reverted: int
    cleared_at: float | None
    vanished: int


class JournalResult(_Model):
    entries: list[JournalEntry]


class SetFaultsParams(_Model):
    faults: FaultConfig


class SeedVolume(_Model):
    storage_domain_id: str = Field(min_length=1)
    image_id: str = Field(min_length=1)
    volume_id: str = Field(min_length=1)


class SeedParams(_Model):
    domains: list[str]
    volumes: list[SeedVolume]
    token: str | None = Field(None, description="with a token: all or nothing, undone by Simulator.unseed")


class SeedResult(_Model):
    clashes: list[str] = Field(description="with a token: volume ids already present (then nothing was added)")


class UnseedParams(_Model):
    token: str = Field(min_length=1)
    volume_ids: list[str]


class UnseedResult(_Model):
    removed: int


# ---- the method table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    mutating: bool  # takes an optional fence
    summary: str


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("Agent.identify", NoParams, IdentifyResult, False, "who the agent is and which protocol it speaks"),
        MethodSpec("Tasks.create", CreateTasksParams, CreateTasksResult, True, "create tasks; idempotent by key"),
        MethodSpec("Tasks.statuses", NoParams, TaskStatusesResult, False, "every task held, with key and status"),
        MethodSpec("Tasks.stop", StopTasksParams, EmptyResult, True, "stop running tasks"),
        MethodSpec("Tasks.clear", ClearTasksParams, EmptyResult, True, "forget ended tasks"),
        MethodSpec("Tasks.revert", RevertTasksParams, RevertTasksResult, True, "undo successful tasks' effects"),
        MethodSpec("Storage.view", NoParams, StorageView, False, "every storage domain and volume"),
    )
}

SIMULATOR_METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("Simulator.journal", NoParams, JournalResult, False, "every task ever created"),
        MethodSpec("Simulator.faults", NoParams, FaultConfig, False, "the faults in force"),
        MethodSpec("Simulator.set_faults", SetFaultsParams, EmptyResult, False, "replace the faults"),
        MethodSpec("Simulator.seed", SeedParams, SeedResult, False, "add storage domains and base volumes"),
        MethodSpec("Simulator.unseed", UnseedParams, UnseedResult, False, "remove volumes a seed added"),
        MethodSpec("Simulator.storage", NoParams, StorageView, False, "the storage, without simulated faults"),
    )
}


# ---- validating answers ---------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def parse_result(model: type[M], raw: Any, call: str) -> M:
    """Validate a result; a malformed one raises AgentProtocolError (one line, like interface.py)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise AgentProtocolError(f"agent gave a malformed answer to {call} ({where}: {first['msg']})") from None


def result_field(raw: Any, model: type[BaseModel], call: str) -> Any:
    """The one field of a wrapper result (`{"tasks": [...]}`), left raw for interface.py's parsers."""
    (name,) = model.model_fields
    if not isinstance(raw, dict) or set(raw) != {name}:
        raise AgentProtocolError(f"agent gave a malformed answer to {call} (expected an object with only {name!r})")
    return raw[name]


def protocol_major(version: str) -> int:
    """The major number of a "major.minor" version; anything else is a protocol error."""
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise AgentProtocolError(f"agent reported protocol version {version!r}, not major.minor")
    return int(major)


# ---- the schema -------------------------------------------------------------------------------------


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema of every request and answer model, with the method table and error codes."""
    envelope: dict[str, type[BaseModel]] = {"request": RpcRequest, "success": RpcSuccess, "error": RpcFailure}
    models: list[type[BaseModel]] = [*envelope.values(), Fence]
    for spec in (*METHODS.values(), *SIMULATOR_METHODS.values()):
        models += [spec.params, spec.result]
    unique = list(dict.fromkeys(models))
    refs, definitions = models_json_schema([(m, "validation") for m in unique], ref_template="#/$defs/{model}")

    def ref(model: type[BaseModel]) -> Any:
        return refs[(model, "validation")]

    def table(specs: dict[str, MethodSpec]) -> dict[str, Any]:
        return {
            name: {"summary": s.summary, "mutating": s.mutating, "params": ref(s.params), "result": ref(s.result)}
            for name, s in specs.items()
        }

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrator agent protocol",
        "description": "JSON-RPC 2.0 over HTTP POST; see docs/agent-protocol.md",
        "protocol_version": PROTOCOL_VERSION,
        "envelope": {name: ref(model) for name, model in envelope.items()},
        "fence": ref(Fence),
        "methods": table(METHODS),
        "simulator_methods": table(SIMULATOR_METHODS),
        "error_codes": {str(code): meaning for code, meaning in ERROR_CODES.items()},
        "$defs": definitions.get("$defs", {}),
    }


def schema_text() -> str:
    """The schema as checked in: indented, keys sorted, one final newline."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.agent.protocol", description="The agent protocol's JSON Schema."
    )
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of every request and answer")
    parser.add_argument("--write", action="store_true", help=f"write it to {SCHEMA_PATH.name} in docs/")
    args = parser.parse_args(argv)
    if args.write:
        SCHEMA_PATH.write_text(schema_text())
        print(f"wrote {SCHEMA_PATH}")
    elif args.schema:
        sys.stdout.write(schema_text())
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
