"""The API's pieces without a server: the checked-in OpenAPI document, tokens, cursors, the chart, problems."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.api.auth import TokenSet, hash_token_line, is_loopback_host, load_tokens, parse_token_entries
from orchestrator.api.console.chart import activity_chart, in_flight_series
from orchestrator.api.openapi import document_is_current
from orchestrator.api.problems import STATUS_BY_EXIT_CODE, status_for
from orchestrator.api.routes.commands import decode_cursor, encode_cursor
from orchestrator.errors import (
    AgentUnavailableError,
    CommandRefusedError,
    DuplicateCommandError,
    EntityLockedError,
    InputError,
    InvalidParametersError,
    NotFoundError,
    StoreError,
    UnknownFlowError,
)
from projections.queries import CommandRow
from tests.conftest import REPO, cli_env


def test_the_checked_in_openapi_document_is_current() -> None:
    assert document_is_current(), "docs/openapi.json is out of date: run python -m orchestrator.api --write-openapi"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.api", "--check-openapi"],
        capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_token_entries_are_hashes_with_roles() -> None:
    token = "a-token-of-some-length"
    line = hash_token_line(token, "read-only", "viewer")
    assert token not in line
    tokens = TokenSet(parse_token_entries(f"# comment\n\n{line}\n", "file"))
    found = tokens.identify(token)
    assert found is not None and (found.role.value, found.name) == ("read-only", "viewer")
    assert tokens.identify(token + "x") is None
    both = load_tokens(None, f"{line};{hash_token_line('another-long-token', 'operator')}")
    assert both is not None and len(both.entries) == 2
    assert load_tokens(None, "  ") is None
    with pytest.raises(InputError, match="entry 1: role must be"):
        parse_token_entries(line.replace("read-only", "admin"), "file")
    with pytest.raises(InputError, match="at least 16"):
        hash_token_line("short")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def _row(created: datetime, ended: datetime | None = None) -> CommandRow:
    return CommandRow(
        command_id="c1", root_command_id="c1", parent_id=None, command_type="RemoveVm", status="running",
        summary="", created_at=created, ended_at=ended, outcome=None, reason="", flagged=False, task_count=1,
        uncleared_tasks=1,
    )  # fmt: skip


def test_cursors_round_trip_and_are_checked() -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    cursor = encode_cursor("-created_at", _row(moment))
    assert decode_cursor(cursor, "-created_at") == (moment.isoformat(), "c1")
    assert decode_cursor(encode_cursor("ended_at", _row(moment)), "ended_at") == ("", "c1")
    with pytest.raises(InputError, match="belongs to sort=-created_at"):
        decode_cursor(cursor, "created_at")
    for bad in ("%%%", "bm90IGpzb24", "WzEsMiwzXQ"):
        with pytest.raises(InputError, match="cursor"):
            decode_cursor(bad, "created_at")


def test_chart_counts_commands_in_flight_at_each_minute() -> None:
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    rows = [
        (start.isoformat(), (start + timedelta(minutes=2)).isoformat()),
        ((start + timedelta(minutes=1)).isoformat(), None),
    ]
    ends = [(start + timedelta(minutes=m, seconds=30)).timestamp() for m in range(4)]
    assert in_flight_series(rows, ends) == [1, 2, 1, 1]
    minutes = [(start + timedelta(minutes=m), m) for m in range(4)]
    chart = activity_chart(minutes, [1, 2, 1, 1])
    assert (chart.ended_total, chart.in_flight_now, chart.ended_max) == (6, 1, 3)
    assert len(chart.bars) == 4 and chart.bars[0].height == 0


def test_errors_map_to_http_statuses_by_exit_code() -> None:
    expected = {
        InputError("x"): 400, UnknownFlowError("x"): 400, InvalidParametersError("x"): 400,
        CommandRefusedError("x"): 409, EntityLockedError("x"): 409, DuplicateCommandError("x"): 409,
        NotFoundError("x"): 404, StoreError("x"): 503, AgentUnavailableError("x"): 503,
    }  # fmt: skip
    assert {type(e).__name__: status_for(e) for e in expected} == {type(e).__name__: s for e, s in expected.items()}
    assert set(STATUS_BY_EXIT_CODE.values()) <= {400, 404, 409, 503, 504}
