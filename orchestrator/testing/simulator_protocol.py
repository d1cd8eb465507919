"""The simulated agent's extension of the agent protocol: its `Simulator.*` administration.

A real agent does not have these methods: they are the simulated agent's
journal, faults and seeding, answered on the same endpoint and in the same
JSON-RPC envelope as the protocol (orchestrator/agent/protocol.py), for tests,
the demo and the CLI. Simulated network faults never apply to them, so they
can always switch the faults off.

The models are the contract, as the protocol's are: the JSON Schema in
`docs/simulator-extension.schema.json` is generated from them
(`simulator_schema()`, or `python -m orchestrator.testing.simulator_protocol
--schema`), and docs/agent-protocol.md explains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from orchestrator.agent.port import StorageView
from orchestrator.agent.protocol import (
    PROTOCOL_VERSION,
    SCHEMA_PATH,
    EmptyResult,
    MethodSpec,
    NoParams,
    ProtocolModel,
    method_table,
    models_schema,
    schema_command,
    schema_json,
)
from orchestrator.testing.faults import FaultConfig
from orchestrator.testing.fences import LOG_LIMIT

SIMULATOR_SCHEMA_PATH = SCHEMA_PATH.with_name("simulator-extension.schema.json")


class JournalEntry(ProtocolModel):
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


class JournalResult(ProtocolModel):
    entries: list[JournalEntry]


class SetFaultsParams(ProtocolModel):
    faults: FaultConfig


class SeedVolume(ProtocolModel):
    storage_domain_id: str = Field(min_length=1)
    image_id: str = Field(min_length=1)
    volume_id: str = Field(min_length=1)


class SeedParams(ProtocolModel):
    domains: list[str]
    volumes: list[SeedVolume]
    token: str | None = Field(None, description="with a token: all or nothing, undone by Simulator.unseed")


class SeedResult(ProtocolModel):
    clashes: list[str] = Field(description="with a token: volume ids already present (then nothing was added)")


class UnseedParams(ProtocolModel):
    token: str = Field(min_length=1)
    volume_ids: list[str]


class UnseedResult(ProtocolModel):
    removed: int


class FenceLogEntry(ProtocolModel):
    """A fenced call the agent decided on: admitted, or refused as stale (-32001), in the order decided."""

    method: str
    engine_id: str
    epoch: int
    at: float = Field(description="epoch seconds (the agent's wall clock) of the decision")
    admitted: bool = Field(description="false: refused as stale")


class FenceLogResult(ProtocolModel):
    entries: list[FenceLogEntry] = Field(description=f"oldest first; the agent keeps the last {LOG_LIMIT:,} in memory")
    dropped: int = Field(description="older decisions no longer kept")


SIMULATOR_METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("Simulator.journal", NoParams, JournalResult, False, "every task ever created"),
        MethodSpec("Simulator.faults", NoParams, FaultConfig, False, "the faults in force"),
        MethodSpec("Simulator.set_faults", SetFaultsParams, EmptyResult, False, "replace the faults"),
        MethodSpec("Simulator.seed", SeedParams, SeedResult, False, "add storage domains and base volumes"),
        MethodSpec("Simulator.unseed", UnseedParams, UnseedResult, False, "remove volumes a seed added"),
        MethodSpec("Simulator.storage", NoParams, StorageView, False, "the storage, without simulated faults"),
        MethodSpec(
            "Simulator.fence_log", NoParams, FenceLogResult, False, "every fenced call admitted or refused as stale"
        ),
    )
}


def simulator_schema() -> dict[str, Any]:
    """The JSON Schema of the extension's params and results, with its method table."""
    ref, definitions = models_schema(model for spec in SIMULATOR_METHODS.values() for model in spec.models())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orchestrator simulated agent extension",
        "description": (
            "Simulator.* methods of the project's simulated agent, not part of the agent protocol; the endpoint "
            "and the envelope are the protocol's; see docs/agent-protocol.md"
        ),
        "extends": SCHEMA_PATH.name,
        "protocol_version": PROTOCOL_VERSION,
        "methods": method_table(SIMULATOR_METHODS, ref),
        "$defs": definitions,
    }


def simulator_schema_text() -> str:
    """The extension's schema as checked in."""
    return schema_json(simulator_schema())


def main(argv: Sequence[str] | None = None) -> int:
    return schema_command(
        argv,
        module="orchestrator.testing.simulator_protocol",
        description="The JSON Schema of the simulated agent's Simulator.* extension of the agent protocol.",
        path=SIMULATOR_SCHEMA_PATH,
        text=simulator_schema_text,
    )


if __name__ == "__main__":
    raise SystemExit(main())
