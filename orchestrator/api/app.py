"""The ASGI app: the API's routers, the console, problem documents, and what every response carries.

`create_app(context)` builds the app over a service process's ApiContext;
`create_app(None)` builds the same app without one, which is enough to produce
the OpenAPI document (`python -m orchestrator.api --write-openapi`).
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api import console
from orchestrator.api.context import ApiContext
from orchestrator.api.metrics import ApiMetrics
from orchestrator.api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers, problem_response
from orchestrator.api.routes import ROUTERS

MAX_BODY_BYTES = 1024 * 1024
DESCRIPTION = """\
The orchestrator as a service: everything the command line reads and does.

Answers are the documented models of the CLI's `--json`; errors are RFC 9457
problem documents (`application/problem+json`) whose `detail` is the CLI's
one-line message and whose `exit_code` is the CLI's exit code. With tokens
configured every call needs `Authorization: Bearer <token>`: a `read-only`
token reads, an `operator` token also submits and cancels.
"""
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
]


def package_version() -> str:
    try:
        return version("orchestrator")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(context: ApiContext | None) -> FastAPI:
    app = FastAPI(
        title="orchestrator",
        version=package_version(),
        description=DESCRIPTION,
        docs_url=None,  # the interactive pages would load scripts from elsewhere; the document is at /openapi.json
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.context = context
    app.state.scrub = context.gateway.scrub if context is not None else None
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=console.STATIC_DIR), name="static")
    install_problem_handlers(app, render_html=console.error_page)
    app.add_exception_handler(console.SignedOut, console.signed_out_redirect)
    app.add_middleware(ServiceMiddleware, metrics=context.metrics if context is not None else None)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer declared as application/problem+json, the token optional."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if operation.get("security"):
                operation["security"] = [{}, *operation["security"]]  # an open (loopback) API needs no token
            for status, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return document


class ServiceMiddleware:
    """Security headers on every answer, a cap on request bodies, and request metrics."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        body = await _read_capped(scope, receive)
        if body is None:
            response = problem_response(413, f"request body larger than {MAX_BODY_BYTES} bytes", instance=scope["path"])
            await response(scope, receive, send_with_headers)
        else:
            try:
                await self.app(scope, body, send_with_headers)
            finally:
                self._record(scope, status, time.perf_counter() - started)
            return
        self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        if self.metrics is None:
            return
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(method, template, str(status)).inc()
        self.metrics.request_seconds.labels(method, template).observe(seconds)


async def _read_capped(scope: Scope, receive: Receive) -> Receive | None:
    """A receive that replays the request body, read up to the cap; None if the body is larger."""
    if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return receive
    declared = dict(scope.get("headers", [])).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await receive()

    return replay
