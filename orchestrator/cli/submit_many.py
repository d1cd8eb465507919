"""`submit-many`: a JSON Lines file read into requests, and the service's answers reported per line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from orchestrator.errors import InputError, OrchestratorError

if TYPE_CHECKING:
    from orchestrator.documents import SubmitManyLine, SubmitManyReport
    from orchestrator.service import SubmitResult

# (line number, flow, parameters as JSON text: the 16 KiB cap of `submit` applies to each line)
Request = tuple[int, str, str]
EXPECTED = 'expected {"flow": NAME, "params": {...}}'


def parse_lines(lines: list[str]) -> tuple[list[Request], dict[int, InputError]]:
    """The requests of the non-blank lines, and why each other line is refused (by line number)."""
    requests: list[Request] = []
    refused: dict[int, InputError] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            requests.append(_request(number, text))
        except InputError as exc:
            refused[number] = exc
    return requests, refused


def _request(number: int, text: str) -> Request:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg} at column {exc.colno}); {EXPECTED}") from None
    if not isinstance(item, dict):
        raise InputError(f"not a JSON object; {EXPECTED}")
    unknown = sorted(set(item) - {"flow", "params"})
    if unknown:
        raise InputError(f"unknown field {unknown[0][:40]!r}; {EXPECTED}")
    flow = item.get("flow")
    if not isinstance(flow, str) or not flow:
        raise InputError(f"no flow name; {EXPECTED}")
    params = item.get("params", {})
    return number, flow, params if isinstance(params, str) else json.dumps(params)


def report_lines(
    requests: list[Request], answers: list[SubmitResult | OrchestratorError], refused: dict[int, InputError]
) -> SubmitManyReport:
    from orchestrator.documents import SubmitManyLine, SubmitManyReport

    lines: dict[int, SubmitManyLine] = {
        number: SubmitManyLine(
            line=number, accepted=False, command_id=None, flow=None, error=str(exc), exit_code=exc.exit_code
        )
        for number, exc in refused.items()
    }
    for (number, flow, _), answer in zip(requests, answers, strict=True):
        if isinstance(answer, OrchestratorError):
            lines[number] = SubmitManyLine(
                line=number, accepted=False, command_id=None, flow=flow, error=str(answer), exit_code=answer.exit_code
            )
        else:
            lines[number] = SubmitManyLine(
                line=number,
                accepted=True,
                command_id=str(answer.command_id),
                flow=answer.flow,
                summary=answer.summary,
                duplicate=answer.duplicate,
            )
    ordered = [lines[n] for n in sorted(lines)]
    accepted = sum(1 for line in ordered if line.accepted)
    return SubmitManyReport(accepted=accepted, refused=len(ordered) - accepted, lines=ordered)
