"""What every router shares: the problem responses each operation documents, entity parsing."""

from __future__ import annotations

from typing import Any

from orchestrator.api.problems import Problem
from orchestrator.domain.model import EntityRef

Responses = dict[int | str, dict[str, Any]]

_AUTH: Responses = {
    401: {"model": Problem, "description": "no token, or one not known here"},
    403: {"model": Problem, "description": "the token's role may not do this"},
}
READ_PROBLEMS: Responses = {
    400: {"model": Problem, "description": "invalid input (the CLI's exit code 4)"},
    **_AUTH,
    404: {"model": Problem, "description": "not found (exit code 6)"},
    422: {"model": Problem, "description": "the request does not match this API"},
    503: {"model": Problem, "description": "the store cannot be used right now (exit code 3)"},
}
WRITE_PROBLEMS: Responses = {
    **READ_PROBLEMS,
    409: {"model": Problem, "description": "refused: validation, entity locked, duplicate id (exit code 5)"},
    415: {"model": Problem, "description": "an open API takes request bodies as application/json only"},
}


def merged(*parts: Responses) -> Responses:
    """Responses of an operation: its own answers and the problems it may answer."""
    out: Responses = {}
    for part in parts:
        out.update(part)
    return out


def entity_ref(text: str) -> EntityRef:
    """TYPE:ID as the CLI takes it (InputError otherwise)."""
    return EntityRef.parse(text)
