"""Commands: submit (one, many), list, show, history with time travel, cancel, retry, terminate."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Response

from orchestrator.api.context import ApiContext, context_of, operator, reader
from orchestrator.api.gateway import HistoryDocument
from orchestrator.api.models import (
    BatchAnswer,
    CancelRequest,
    CommandPageView,
    SubmitManyRequest,
    SubmitManyView,
    SubmitRequest,
    TerminateRequest,
)
from orchestrator.api.problems import problem_of
from orchestrator.api.routes.common import READ_PROBLEMS, WRITE_PROBLEMS, entity_ref, merged
from orchestrator.documents import CommandView
from orchestrator.domain.model import CommandStatus
from orchestrator.errors import InputError
from orchestrator.inspection import CommandHistory
from orchestrator.service import CancelResult, RetryResult, SubmitResult, TerminateResult
from projections.queries import SORTABLE_COLUMNS, CommandPageQuery, CommandRow

router = APIRouter(prefix="/api/v1", tags=["commands"])
Context = Annotated[ApiContext, Depends(context_of)]
CommandId = Annotated[str, Path(min_length=1, max_length=100, description="the command's id (a UUID)")]
SORTS = [*SORTABLE_COLUMNS, *(f"-{c}" for c in SORTABLE_COLUMNS)]


@router.post(
    "/commands",
    status_code=201,
    response_model=SubmitResult,
    dependencies=[Depends(operator)],
    responses=merged(
        {200: {"model": SubmitResult, "description": "already accepted (same id and parameters)"}},
        WRITE_PROBLEMS,
    ),
    summary="submit a command",
)
def submit(context: Context, request: Annotated[SubmitRequest, Body()], response: Response) -> SubmitResult:
    """Validate and durably accept a command with all its expected tasks and locks (`orchestrator submit`)."""
    result = context.gateway.submit(request.flow, request.params, request.command_id)
    if result.duplicate:
        response.status_code = 200
    response.headers["Location"] = f"/api/v1/commands/{result.command_id}"
    return result


@router.post(
    "/command-batches",
    response_model=SubmitManyView,
    dependencies=[Depends(operator)],
    responses=WRITE_PROBLEMS,
    summary="submit many commands in one transaction",
)
def submit_many(context: Context, request: Annotated[SubmitManyRequest, Body()]) -> SubmitManyView:
    """Each command is validated and takes its locks as if submitted alone, in order; each answer says how it went."""
    results = context.gateway.submit_many([(item.flow, item.params) for item in request.commands])
    answers = []
    for result in results:
        if isinstance(result, SubmitResult):
            answers.append(BatchAnswer(accepted=True, result=result))
        else:
            answers.append(BatchAnswer(accepted=False, problem=problem_of(result)))
    accepted = sum(1 for a in answers if a.accepted)
    return SubmitManyView(accepted=accepted, refused=len(answers) - accepted, answers=answers)


@router.get(
    "/commands",
    response_model=CommandPageView,
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="list commands",
)
def list_commands(
    context: Context,
    status: Annotated[
        list[str] | None, Query(description="accepted|running|ending|succeeded|failed (repeatable)")
    ] = None,
    command_type: Annotated[str | None, Query(alias="type", max_length=100, description="flow or child type")] = None,
    parent: Annotated[str | None, Query(max_length=100, description="children of this command")] = None,
    entity: Annotated[str | None, Query(max_length=200, description="commands declaring TYPE:ID")] = None,
    in_flight: Annotated[bool, Query(description="only commands still in flight")] = False,
    children: Annotated[bool, Query(description="include child commands")] = False,
    since: Annotated[datetime | None, Query(description="accepted at or after (ISO 8601; UTC if no zone)")] = None,
    until: Annotated[datetime | None, Query(description="accepted before (ISO 8601; UTC if no zone)")] = None,
    sort: Annotated[str, Query(description=f"one of {', '.join(SORTS)} ('-': newest or last first)")] = "created_at",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000, description="next_cursor of the previous page")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip (instead of a cursor)")] = 0,
) -> CommandPageView:
    """Commands from the commands read model (`orchestrator list`), a page at a time."""
    allowed = [s.value for s in CommandStatus]
    for s in status or []:
        if s not in allowed:
            raise InputError(f"status must be one of {', '.join(allowed)}")
    if sort not in SORTS:
        raise InputError(f"sort must be one of {', '.join(SORTS)}")
    if cursor is not None and offset:
        raise InputError("give a cursor or an offset, not both")
    column, descending = sort.lstrip("-"), sort.startswith("-")
    query = CommandPageQuery(
        statuses=tuple(status or ()),
        command_type=command_type,
        parent=parent,
        entity=entity_ref(entity) if entity else None,
        in_flight=in_flight,
        include_children=children,
        created_from=_iso(since),
        created_before=_iso(until),
        sort=column,
        descending=descending,
        after=decode_cursor(cursor, sort) if cursor else None,
        offset=offset,
        limit=limit,
    )
    fresh, rows = context.gateway.command_page(query)
    next_cursor = encode_cursor(sort, rows[-1]) if len(rows) == limit else None
    return CommandPageView(freshness=fresh, commands=rows, next_cursor=next_cursor)


@router.get(
    "/commands/{command_id}",
    response_model=CommandView,
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="show a command",
)
def show(
    context: Context,
    command_id: CommandId,
    at_version: Annotated[int | None, Query(ge=1, le=10_000_000, description="state after this event")] = None,
) -> CommandView:
    """A command, its children and tasks (engine id, agent id or none, status, entities), outcome (`show`)."""
    return context.gateway.command(command_id, at_version)


@router.get(
    "/commands/{command_id}/history",
    response_model=HistoryDocument,
    dependencies=[Depends(reader)],
    responses=READ_PROBLEMS,
    summary="a command's events, and its state at a version",
)
def history(
    context: Context,
    command_id: CommandId,
    at_version: Annotated[int | None, Query(ge=1, le=10_000_000, description="state after this event")] = None,
) -> CommandHistory:
    """Every event of the command, and its state after event N (`inspect --command ID --at-version N`)."""
    return context.gateway.history(command_id, at_version)


@router.post(
    "/commands/{command_id}/cancel",
    response_model=CancelResult,
    dependencies=[Depends(operator)],
    responses=WRITE_PROBLEMS,
    summary="cancel a command",
)
def cancel(
    context: Context, command_id: CommandId, request: Annotated[CancelRequest | None, Body()] = None
) -> CancelResult:
    """Stop its running tasks, never submit the rest, end with failure (`orchestrator cancel`)."""
    reason = request.reason if request is not None else CancelRequest().reason
    return context.gateway.cancel(command_id, reason)


@router.post(
    "/commands/{command_id}/retry",
    status_code=201,
    response_model=RetryResult,
    dependencies=[Depends(operator)],
    responses=WRITE_PROBLEMS,
    summary="retry an ended command",
)
def retry(context: Context, command_id: CommandId, response: Response) -> RetryResult:
    """Accept a new command doing an ended command's work again, linked both ways (`orchestrator retry`)."""
    result = context.gateway.retry(command_id)
    response.headers["Location"] = f"/api/v1/commands/{result.command_id}"
    return result


@router.post(
    "/commands/{command_id}/terminate",
    response_model=TerminateResult,
    dependencies=[Depends(operator)],
    responses=WRITE_PROBLEMS,
    summary="terminate a command whose agent is gone",
)
def terminate(context: Context, command_id: CommandId, request: Annotated[TerminateRequest, Body()]) -> TerminateResult:
    """End it at once, failed and flagged; release its locks (`orchestrator terminate`)."""
    return context.gateway.terminate(command_id, request.reason)


# ---- paging ------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    """The read model's format for a time (UTC, ISO 8601), so text comparison orders by time."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _sort_value(row: CommandRow, column: str) -> str:
    value = getattr(row, column)
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def encode_cursor(sort: str, row: CommandRow) -> str:
    data = json.dumps([sort, _sort_value(row, sort.lstrip("-")), row.command_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        found_sort, value, command_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InputError("cursor is not one this API gave (pass next_cursor as it came)") from None
    if not (isinstance(value, str) and isinstance(command_id, str)):
        raise InputError("cursor is not one this API gave (pass next_cursor as it came)")
    if found_sort != sort:
        raise InputError(f"this cursor belongs to sort={found_sort}; ask with the same sort")
    return value, command_id
