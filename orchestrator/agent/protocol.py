"""The agent protocol: JSON-RPC 2.0 over HTTP POST, one endpoint URL per agent.

Every request's params and every result is one of the pydantic models below
(extra fields are refused), so the models are the contract: the JSON Schema in
`docs/agent-protocol.schema.json` is generated from them (`protocol_schema()`,
or `python -m orchestrator.agent.protocol --schema`), and
`docs/agent-protocol.md` explains them to whoever writes an agent.

`MethodSpec`, `models_schema()`, `method_table()` and `schema_command()` also
serve extensions of the protocol (more methods on the same endpoint and
envelope), which describe themselves in a schema of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic.json_schema import models_json_schema

from orchestrator.agent.port import AgentTaskStatus, CreateResult, StorageView, TaskSpec
from orchestrator.errors import AgentError, AgentProtocolError

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


class ProtocolModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- fencing ----------------------------------------------------------------------------------


_FENCE = "who makes the call; refused with -32001 if older than a fence the agent has seen"


class Fence(ProtocolModel):
    """Who makes a mutating call: the engine and the epoch of its lease (higher is newer)."""

    engine_id: str = Field(min_length=1, max_length=200)
    epoch: StrictInt = Field(ge=0)


# ---- the JSON-RPC envelope ----------------------------------------------------------------------


class RpcRequest(ProtocolModel):
    """One call. `params` may be omitted for methods without params; it must be an object."""

    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr
    method: str = Field(min_length=1)
    params: dict[str, Any] | None = None  # by name only: by-position params are refused with -32602


class RpcErrorObject(ProtocolModel):
    code: StrictInt
    message: str
    data: Any = None


class RpcSuccess(ProtocolModel):
    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr
    result: Any


class RpcFailure(ProtocolModel):
    jsonrpc: Literal["2.0"]
    id: StrictInt | StrictStr | None
    error: RpcErrorObject


# ---- the protocol's methods ---------------------------------------------------------------------


class NoParams(ProtocolModel):
    """Params of a method that takes none: `{}` (or params omitted)."""


class EmptyResult(ProtocolModel):
    """The result of a call that only acknowledges: `{}`."""


class IdentifyResult(ProtocolModel):
    agent_id: str = Field(min_length=1, max_length=200)
    pool_id: str = Field(min_length=1, max_length=200)
    protocol_version: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    software: str = Field(max_length=200)


class CreateTasksParams(ProtocolModel):
    tasks: list[TaskSpec]
    fence: Fence | None = Field(None, description=_FENCE)


class CreateTasksResult(ProtocolModel):
    results: list[CreateResult] = Field(description="one per task, in the order given")


class TaskStatusesResult(ProtocolModel):
    tasks: list[AgentTaskStatus] = Field(description="every task held (created, not cleared), in creation order")


class TaskIdsParams(ProtocolModel):
    agent_task_ids: list[str]
    fence: Fence | None = Field(None, description=_FENCE)


class StopTasksParams(TaskIdsParams):
    """Stop running tasks; ended or unknown ids are ignored."""


class ClearTasksParams(TaskIdsParams):
    """Forget ended tasks; running or unknown ids are ignored."""


class RevertTasksParams(TaskIdsParams):
    """Undo the storage effect of tasks that finished with success."""


class RevertOutcome(ProtocolModel):
    agent_task_id: str
    reverted: bool = Field(description="true: its effect is undone (now, or by an earlier call); false: it had none")
    error: str = Field("", description="why the effect cannot be undone; empty if it can")


class RevertTasksResult(ProtocolModel):
    results: list[RevertOutcome] = Field(description="one per id, in the order given")


# ---- the method table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    mutating: bool  # takes an optional fence
    summary: str

    def models(self) -> tuple[type[BaseModel], type[BaseModel]]:
        return self.params, self.result


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

# ---- validating answers ---------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def parse_result(model: type[M], raw: Any, call: str) -> M:
    """Validate a result; a malformed one raises AgentProtocolError (one line, like the port's parse functions)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise AgentProtocolError(f"agent gave a malformed answer to {call} ({where}: {first['msg']})") from None


def result_field(raw: Any, model: type[BaseModel], call: str) -> Any:
    """The one field of a wrapper result (`{"tasks": [...]}`), left raw for the port's parse functions."""
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


def models_schema(models: Iterable[type[BaseModel]]) -> tuple[Callable[[type[BaseModel]], Any], dict[str, Any]]:
    """A reference to each model's JSON Schema, and the definitions (`$defs`) the references point to."""
    unique = list(dict.fromkeys(models))
    refs, definitions = models_json_schema([(m, "validation") for m in unique], ref_template="#/$defs/{model}")

    def ref(model: type[BaseModel]) -> Any:
        return refs[(model, "validation")]

    return ref, definitions.get("$defs", {})


def method_table(specs: Mapping[str, MethodSpec], ref: Callable[[type[BaseModel]], Any]) -> dict[str, Any]:
    """The schema's description of each method: summary, whether it is fenced, its params and result."""
    return {
        name: {"summary": s.summary, "mutating": s.mutating, "params": ref(s.params), "result": ref(s.result)}
        for name, s in specs.items()
    }


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema of every request and answer model, with the method table and error codes."""
    envelope: dict[str, type[BaseModel]] = {"request": RpcRequest, "success": RpcSuccess, "error": RpcFailure}
    ref, definitions = models_schema(
        [*envelope.values(), Fence, *(model for spec in METHODS.values() for model in spec.models())]
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrator agent protocol",
        "description": "JSON-RPC 2.0 over HTTP POST; see docs/agent-protocol.md",
        "protocol_version": PROTOCOL_VERSION,
        "envelope": {name: ref(model) for name, model in envelope.items()},
        "fence": ref(Fence),
        "methods": method_table(METHODS, ref),
        "error_codes": {str(code): meaning for code, meaning in ERROR_CODES.items()},
        "$defs": definitions,
    }


def schema_json(schema: dict[str, Any]) -> str:
    """A schema as checked in: indented, keys sorted, one final newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_text() -> str:
    """The protocol's schema as checked in."""
    return schema_json(protocol_schema())


def schema_command(
    argv: Sequence[str] | None, *, module: str, description: str, path: Path, text: Callable[[], str]
) -> int:
    """`python -m MODULE --schema` prints a schema, `--write` writes it to its file in docs/."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of every request and answer")
    parser.add_argument("--write", action="store_true", help=f"write it to {path.name} in docs/")
    args = parser.parse_args(argv)
    if args.write:
        path.write_text(text())
        print(f"wrote {path}")
    elif args.schema:
        sys.stdout.write(text())
    else:
        parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return schema_command(
        argv,
        module="orchestrator.agent.protocol",
        description="The agent protocol's JSON Schema.",
        path=SCHEMA_PATH,
        text=schema_text,
    )


if __name__ == "__main__":
    raise SystemExit(main())
