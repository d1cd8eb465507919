"""The API's own documents: requests, and the answers the CLI has no --json model for.

Everything else the API answers is the CLI's model itself (orchestrator/documents.py,
projections/documents.py, orchestrator/inspection.py, orchestrator/service.py).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.problems import Problem
from orchestrator.service import SubmitResult
from projections.documents import CommandListView

MAX_BATCH = 500  # commands in one submit-many request (one transaction; see service.SUBMIT_MANY_BATCH)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRequest(_Request):
    """`POST /api/v1/commands`: what `orchestrator submit FLOW --params JSON [--id UUID]` takes."""

    flow: str = Field(min_length=1, max_length=100, description="a flow name (GET /api/v1/flows)")
    params: dict[str, Any] = Field(default_factory=dict, description="the flow's parameters")
    command_id: UUID | None = Field(
        None, description="the command's id, doubling as idempotency key: the same id with the same parameters "
        "returns the same command; with other parameters the answer is 409"
    )  # fmt: skip


class BatchItem(_Request):
    flow: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class SubmitManyRequest(_Request):
    """`POST /api/v1/command-batches`: many commands accepted in one transaction, each validated in order."""

    commands: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class BatchAnswer(BaseModel):
    """One command of a batch: accepted (`result`) or refused (`problem`)."""

    accepted: bool
    result: SubmitResult | None = None
    problem: Problem | None = None


class SubmitManyView(BaseModel):
    """The answer to a batch: one entry per command asked for, in order."""

    accepted: int
    refused: int
    answers: list[BatchAnswer]


class CancelRequest(_Request):
    """`POST /api/v1/commands/{id}/cancel`: what `orchestrator cancel ID [--reason R]` takes."""

    reason: str = Field("cancelled by user", min_length=1, max_length=500)


class TerminateRequest(_Request):
    """`POST /api/v1/commands/{id}/terminate`: what `orchestrator terminate ID --reason R` takes."""

    reason: str = Field(min_length=1, max_length=500, description="why: kept in the command's history")


class CommandPageView(CommandListView):
    """`GET /api/v1/commands`: `list --json`, one page of it, and where the next page starts."""

    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class CheckView(BaseModel):
    name: str
    ok: bool
    detail: str


class HealthView(BaseModel):
    """`GET /healthz`: the process answers."""

    status: str


class ReadinessView(BaseModel):
    """`GET /readyz` when ready (when not, a 503 problem document with the same `checks`)."""

    ready: bool
    checks: list[CheckView]


class EngineView(BaseModel):
    """`GET /api/v1/engine`: the engine this process runs (`serve --engine`), if any."""

    in_process: bool = Field(description="false: the engine is a separate `orchestrator run`")
    lease: str | None = Field(description="standing_by | held | stopped | failed (null without --engine)")
    since: float | None = Field(description="when the lease state last changed (Unix time)")
    pools: list[str] | None = Field(
        description="pools whose lease this process's engine holds (null: unknown, or the store keeps no lease tables)"
    )
    cycles: int
    error: str
