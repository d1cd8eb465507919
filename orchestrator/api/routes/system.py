"""The service itself: flows, inspection, projections, the engine, live events, health and metrics."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from orchestrator.api.context import ApiContext, context_of, reader
from orchestrator.api.gateway import InspectionDocument
from orchestrator.api.metrics import CONTENT_TYPE
from orchestrator.api.models import CheckView, EngineView, HealthView, ReadinessView
from orchestrator.api.problems import Problem, problem_response
from orchestrator.api.routes.common import READ_PROBLEMS, merged
from orchestrator.documents import FlowView
from orchestrator.inspection import InspectionReport
from projections.documents import ProjectionStatusView

log = logging.getLogger("orchestrator.api")
router = APIRouter(tags=["service"])
Context = Annotated[ApiContext, Depends(context_of)]


@router.get(
    "/api/v1/flows",
    response_model=list[FlowView],
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="flows and their parameters",
)
def flows(context: Context) -> list[FlowView]:
    """The flows and the JSON schema of their parameters (`orchestrator flows`)."""
    return context.gateway.flows()


@router.get(
    "/api/v1/inspection",
    response_model=InspectionDocument,
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="what recovery would decide",
)
def inspection(
    context: Context, agent: Annotated[bool, Query(description="reconcile with the agent's tasks")] = True
) -> InspectionReport:
    """Read-only crash replay: every command in flight and the verdict recovery would reach (`inspect`).

    `exit_code` is what `orchestrator inspect` would exit with (20: commands in flight); the answer is 200 either way.
    """
    return context.gateway.inspect(agent)


@router.get(
    "/api/v1/projections",
    response_model=list[ProjectionStatusView],
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="read models' positions and lag",
)
def projections(context: Context) -> list[ProjectionStatusView]:
    """Each read model's position, the log's head, and the lag (`orchestrator projections status`)."""
    return context.gateway.projections()


@router.get(
    "/api/v1/engine",
    response_model=EngineView,
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="the engine in this process",
)
def engine(context: Context) -> EngineView:
    """Whether this process runs the engine (`serve --engine`), and its lease."""
    host = context.engine
    if host is None:
        return EngineView(in_process=False, lease=None, since=None, pools=None, cycles=0, error="")
    state = host.state.value
    return EngineView(
        in_process=True, lease=state, since=host.since, pools=host.pools_held(), cycles=host.cycles, error=host.error
    )


@router.get(
    "/api/v1/events",
    dependencies=[Depends(reader)],
    responses=merged(
        {200: {"content": {"text/event-stream": {}}, "description": "a stream of server-sent events"}}, READ_PROBLEMS
    ),
    summary="live changes (server-sent events)",
)
def events(context: Context) -> StreamingResponse:
    """`hello` once, then `change` ({head, commands: ids of root commands that changed, many}) as the log moves."""
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(context.feed.stream(), media_type="text/event-stream", headers=headers)


@router.get("/healthz", response_model=HealthView, summary="the process answers")
def healthz() -> HealthView:
    return HealthView(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessView,
    responses={503: {"model": Problem, "description": "not ready: the problem's `checks` say why"}},
    summary="ready to serve",
)
def readyz(context: Context) -> Any:
    """Ready when the store answers, the read models are within the lag bound, and (--engine) the lease is held."""
    checks = readiness_checks(context)
    if all(c.ok for c in checks):
        return ReadinessView(ready=True, checks=checks)
    failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
    return problem_response(
        503, f"not ready: {failed}", kind="not-ready", instance="/readyz",
        extra={"checks": [c.model_dump() for c in checks]},
    )  # fmt: skip


def readiness_checks(context: ApiContext) -> list[CheckView]:
    checks = []
    try:
        lag = max((p.lag for p in context.gateway.projections()), default=0)
    except Exception as exc:  # the store is down: that is the answer, not an error
        detail = context.gateway.scrub(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        checks.append(CheckView(name="store", ok=False, detail=detail))
    else:
        checks.append(CheckView(name="store", ok=True, detail=context.gateway.redacted_url))
        ok = lag <= context.max_lag
        checks.append(CheckView(name="projections", ok=ok, detail=f"lag {lag} event(s), bound {context.max_lag}"))
    host = context.engine
    if host is not None:
        held = host.state.value == "held"
        detail = host.state.value + (f": {host.error}" if host.error else "")
        checks.append(CheckView(name="engine lease", ok=held, detail=detail))
    return checks


@router.get(
    "/metrics",
    dependencies=[Depends(reader)],
    response_class=Response,
    responses=merged({200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}}, READ_PROBLEMS),
    summary="Prometheus metrics",
)
def metrics(context: Context) -> Response:
    return Response(context.metrics.render(), media_type=CONTENT_TYPE)
