"""Errors as RFC 9457 problem documents (`application/problem+json`).

Every error the API answers is a `Problem`: `type`, `title`, `status`, `detail`
(the same one line the CLI prints after `error: `), `instance` (the path asked
for) and `exit_code` (what the CLI would have exited with). The project's
errors map to HTTP statuses by their exit code; FastAPI's own validation errors
and unknown routes become problem documents too; anything unexpected is a 500
whose detail says only that the server log has more (never a traceback).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from orchestrator.errors import OrchestratorError, StoreError

log = logging.getLogger("orchestrator.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:orchestrator:problem:"

# The CLI's exit codes (README) and the HTTP status of the same error.
STATUS_BY_EXIT_CODE = {
    3: 503,  # store: wrong URL, unreachable, not ours, corrupt
    4: 400,  # invalid input: parameters, unknown flow
    5: 409,  # refused: validation, entity locked, duplicate id with other parameters
    6: 404,  # not found
    7: 503,  # agent unusable
    8: 409,  # another engine runs
    9: 504,  # a timeout expired
    10: 409,  # a verification found a difference
}
TITLES = {
    400: "invalid input",
    401: "authentication required",
    403: "not allowed",
    404: "not found",
    405: "method not allowed",
    409: "refused",
    413: "request too large",
    415: "unsupported media type",
    422: "request does not match the API",
    500: "internal error",
    503: "unavailable",
    504: "timed out",
}


class FieldProblem(BaseModel):
    """One field a request got wrong."""

    location: str = Field(description="where: body.params, query.limit, path.command_id ...")
    message: str


class Problem(BaseModel):
    """An error, as RFC 9457 describes it (application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URN naming the kind of problem, e.g. urn:orchestrator:problem:not-found-error")
    title: str = Field(description="short, the same for every problem of this status")
    status: int
    detail: str = Field(description="one line: what is wrong and what to do (the CLI's error message)")
    instance: str | None = Field(None, description="the path that was asked for")
    exit_code: int | None = Field(None, description="the CLI's exit code for the same error")
    errors: list[FieldProblem] | None = Field(None, description="validation problems, one per field")


def _slug(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def status_for(exc: OrchestratorError) -> int:
    return STATUS_BY_EXIT_CODE.get(exc.exit_code, 400)


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    instance: str | None = None,
    exit_code: int | None = None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=TYPE_PREFIX + (kind or _slug(TITLES.get(status, "error").title().replace(" ", ""))),
        title=TITLES.get(status, "error"),
        status=status,
        detail=detail,
        instance=instance,
        exit_code=exit_code,
        errors=errors,
        **(extra or {}),
    )
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def problem_of(exc: OrchestratorError, instance: str | None = None) -> Problem:
    """The problem document of one of the project's errors (as a model, e.g. inside a batch answer)."""
    return Problem(
        type=TYPE_PREFIX + _slug(type(exc).__name__),
        title=TITLES.get(status_for(exc), "error"),
        status=status_for(exc),
        detail=str(exc),
        instance=instance,
        exit_code=exc.exit_code,
    )


def problem_for(exc: OrchestratorError, instance: str | None = None) -> JSONResponse:
    return problem_response(
        status_for(exc), str(exc), kind=_slug(type(exc).__name__), instance=instance, exit_code=exc.exit_code
    )


class ApiRefusal(Exception):
    """A request refused before it reached the orchestrator (authentication, role, host)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_problems(exc: RequestValidationError) -> list[FieldProblem]:
    # Only where and what: pydantic's `input` would echo whatever was sent.
    return [FieldProblem(location=_location(e.get("loc", ())), message=str(e.get("msg", ""))) for e in exc.errors()]


def install_problem_handlers(app: FastAPI, render_html: Any = None) -> None:
    """Answer every error as a problem document (or, for a console page, as an HTML page via render_html)."""

    def answer(request: Request, response: JSONResponse) -> Response:
        if render_html is not None and wants_html(request):
            rendered: Response = render_html(request, response)
            return rendered
        return response

    async def on_orchestrator_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrchestratorError)
        return answer(request, problem_for(exc, request.url.path))

    async def on_persistence_error(request: Request, exc: Exception) -> Response:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        scrub = getattr(request.app.state, "scrub", None)
        detail = f"the store failed: {scrub(text) if scrub else text}; check the store and try again"
        return answer(request, problem_for(StoreError(detail), request.url.path))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = validation_problems(exc)
        first = errors[0] if errors else FieldProblem(location="request", message="invalid")
        detail = f"{first.location}: {first.message}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        return answer(
            request, problem_response(422, detail, kind="validation", instance=request.url.path, errors=errors)
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "error")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        headers = dict(exc.headers) if exc.headers else None
        return answer(request, problem_response(exc.status_code, detail, instance=request.url.path, headers=headers))

    async def on_refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiRefusal)
        response = problem_response(exc.status, exc.detail, instance=request.url.path, headers=exc.headers)
        return answer(request, response)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        detail = "the server failed to answer; its log says why"
        return answer(request, problem_response(500, detail, instance=request.url.path))

    app.add_exception_handler(OrchestratorError, on_orchestrator_error)
    app.add_exception_handler(PersistenceError, on_persistence_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ApiRefusal, on_refusal)
    app.add_exception_handler(Exception, on_unexpected)


API_PREFIXES = ("/api/", "/metrics", "/healthz", "/readyz", "/openapi.json", "/console/session")


def wants_html(request: Request) -> bool:
    """A console page asked for by a browser (not the API, not a script)."""
    path = request.url.path
    if path.startswith(API_PREFIXES) or path.startswith("/static/"):
        return False
    return "text/html" in request.headers.get("accept", "")
