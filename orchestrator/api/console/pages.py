"""The web console: server-rendered pages (Jinja2, autoescaped), live through server-sent events.

Each page is rendered whole on a GET; with `?part=live` only its live part is
rendered, which console.js fetches when `/api/v1/events` says something changed.
The pages read through the same gateway as the API; submitting and cancelling
are the API's own endpoints, called by console.js with the session cookie.
Pages for pools, agents and engines go in NAV and in a module like this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from orchestrator.api.auth import SESSION_COOKIE, SESSION_SECONDS, Principal, Role
from orchestrator.api.console import views
from orchestrator.api.context import ApiContext, context_of
from orchestrator.api.problems import ApiRefusal, problem_response
from orchestrator.domain.model import EntityRef

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")  # autoescape is on for .html
templates.env.filters["clock"] = views.clock
templates.env.filters["full_time"] = views.full_time
templates.env.filters["urlpart"] = lambda text: quote(str(text), safe="")

router = APIRouter(include_in_schema=False)
Context = Annotated[ApiContext, Depends(context_of)]
Part = Annotated[str | None, Query(pattern="^live$")]

NAV = [
    ("overview", "/", "Overview"),
    ("commands", "/commands", "Commands"),
    ("locks", "/locks", "Locks"),
    ("submit", "/submit", "Submit"),
]


class SignedOut(Exception):
    """A console page asked for without a session: go to the sign-in page."""


def console_principal(request: Request) -> Principal:
    try:
        return context_of(request).access.authenticate(request, Role.READ_ONLY)
    except ApiRefusal as refusal:
        if refusal.status == 401:
            raise SignedOut from None
        raise


Who = Annotated[Principal, Depends(console_principal)]


def render(request: Request, name: str, who: Principal | None, part: str | None, **values: Any) -> HTMLResponse:
    context = context_of(request)
    engine = context.engine
    page = {
        "nav": NAV,
        "principal": who,
        "signed_in": who is not None and who.via == "session",
        "may_operate": who is not None and who.may(Role.OPERATOR),
        "store": context.gateway.redacted_url,
        "engine_state": engine.state.value if engine is not None else "separate process",
        **values,
    }
    template = f"parts/{name}_live.html" if part == "live" else f"{name}.html"
    response = templates.TemplateResponse(request, template, page)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, context: Context, who: Who, part: Part = None) -> HTMLResponse:
    return render(request, "overview", who, part, active="overview", live="overview", o=views.overview(context))


@router.get("/commands", response_class=HTMLResponse)
def commands_page(
    request: Request,
    context: Context,
    who: Who,
    part: Part = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    flow: Annotated[str | None, Query(max_length=100)] = None,
    entity: Annotated[str | None, Query(max_length=200)] = None,
    in_flight: bool = False,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> HTMLResponse:
    from projections.queries import CommandPageQuery

    limit = 50
    query = CommandPageQuery(
        statuses=(status,) if status else (),
        command_type=flow or None,
        entity=EntityRef.parse(entity) if entity else None,
        in_flight=in_flight,
        sort="created_at",
        descending=True,
        offset=offset,
        limit=limit + 1,
    )
    fresh, rows = context.gateway.command_page(query)
    filters = {"status": status or "", "flow": flow or "", "entity": entity or "", "in_flight": in_flight}
    return render(
        request, "commands", who, part, active="commands", live="list", rows=rows[:limit], more=len(rows) > limit,
        offset=offset, limit=limit, filters=filters, freshness=fresh, flows=views.flow_names(),
    )  # fmt: skip


@router.get("/commands/{command_id}", response_class=HTMLResponse)
def command_page(
    request: Request,
    context: Context,
    who: Who,
    command_id: str,
    part: Part = None,
    at_version: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
) -> HTMLResponse:
    page = views.command_page(context, command_id, at_version)
    live = "" if at_version is not None else "command"
    return render(
        request, "command", who, part, active="commands", live=live, live_command=page.view.command_id, c=page
    )


@router.get("/entities/{entity_type}/{entity_id}", response_class=HTMLResponse)
def entity_page(
    request: Request, context: Context, who: Who, entity_type: str, entity_id: str, part: Part = None
) -> HTMLResponse:
    page = views.entity_page(context, EntityRef.parse(f"{entity_type}:{entity_id}"))
    return render(request, "entity", who, part, active="", live="entity", e=page, detail_links=views.DETAIL_LINKS)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(
    request: Request,
    context: Context,
    who: Who,
    task_id: str,
    part: Part = None,
    command: Annotated[str | None, Query(max_length=100)] = None,
) -> HTMLResponse:
    page = views.task_page(context, task_id, command)
    return render(request, "task", who, part, active="", live="command", live_command=page.command.command_id, t=page)


@router.get("/locks", response_class=HTMLResponse)
def locks_page(request: Request, context: Context, who: Who, part: Part = None) -> HTMLResponse:
    return render(request, "locks", who, part, active="locks", live="locks", locks=context.gateway.locks(None))


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request, who: Who) -> HTMLResponse:
    return render(request, "submit", who, None, active="submit", forms=views.flow_forms())


# ---- signing in ---------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next_path: Annotated[str, Query(alias="next", max_length=500)] = "/") -> Response:
    if context_of(request).access.open:
        return RedirectResponse("/", status_code=303)
    return render(request, "login", None, None, active="", next_path=_local(next_path))


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


@router.post("/console/session")
def open_session(request: Request, context: Context, body: SessionRequest) -> Response:
    """Trade a token for a session cookie (the cookie names a session held here, never the token)."""
    principal = context.access.login(body.token)
    if principal is None:
        context.access.note_refusal(request, "sign-in with a token not known here")
        return problem_response(401, "the token is not known here", instance=request.url.path)
    response = JSONResponse({"name": principal.name, "role": principal.role.value})
    if not context.access.open:
        session = context.access.sessions.open(principal)
        response.set_cookie(
            SESSION_COOKIE, session, max_age=int(SESSION_SECONDS), httponly=True, samesite="strict",
            secure=context.secure_cookies, path="/",
        )  # fmt: skip
    return response


@router.delete("/console/session")
def close_session(request: Request, context: Context) -> Response:
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        context.access.sessions.close(session)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _local(path: str) -> str:
    """Only paths of this site after signing in (never another site's address)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def signed_out_redirect(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def error_page(request: Request, problem: JSONResponse) -> Response:
    """A console page's error, as a page (the problem document's detail, escaped)."""
    import json

    data = json.loads(bytes(problem.body))
    response = templates.TemplateResponse(
        request,
        "error.html",
        {"nav": NAV, "principal": None, "problem": data, "active": "", "store": "", "engine_state": ""},
        status_code=problem.status_code,
    )
    return response
