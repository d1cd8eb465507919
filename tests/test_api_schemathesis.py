"""Schemathesis against the served OpenAPI document, on a real service process on loopback, on both stores.

The served document must equal docs/openapi.json. Then every operation (but the
endless event stream) gets a bounded number of generated requests, valid and
invalid: no answer is a 5xx, every answer conforms to the document (status,
content type, schema), invalid requests are refused, and every error is an RFC
9457 problem document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from orchestrator.api.openapi import DOCUMENT_PATH
from orchestrator.bootstrap import Orchestrator
from tests.test_api_harness import PROBLEM_TYPE, Service, module_store, running_service

EXAMPLES = 8  # per operation and generation mode: about 300 requests per store
SKIPPED = {"/api/v1/events"}  # a stream that does not end


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with module_store(str(request.param), workdir) as store_url:
        agent_state = workdir / "agent.db"
        with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
            orch.seed(vms=2, disks=1)
        with running_service(workdir, store_url, agent_state) as running:
            yield running


@schemathesis.check
def problem_documents(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is application/problem+json with type, title, status and detail."""
    if response.status_code < 400:
        return None
    media = response.headers.get("content-type", [""])
    media = media[0] if isinstance(media, list) else media
    assert media.startswith(PROBLEM_TYPE), f"{response.status_code} answered as {media!r}"
    problem = json.loads(response.content)
    missing = {"type", "title", "status", "detail"} - problem.keys()
    assert not missing, f"problem document without {sorted(missing)}"
    assert problem["status"] == response.status_code
    return True


def test_served_document_is_the_checked_in_one(service: Service) -> None:
    served = requests.get(service.url + "openapi.json", timeout=10).json()
    assert served == json.loads(Path(DOCUMENT_PATH).read_text()), (
        "docs/openapi.json is out of date: run python -m orchestrator.api --write-openapi"
    )


def exercise(operation: Any, mode: GenerationMode, checks: list[Any], session: requests.Session) -> None:
    """EXAMPLES generated requests to one operation, each checked."""

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode), _=st.just(None))
    def run(case: Any, _: None) -> None:
        case.call_and_validate(session=session, checks=checks, timeout=15)

    run()


def test_generated_requests(service: Service) -> None:
    schema = schemathesis.openapi.from_url(service.url + "openapi.json")
    session = requests.Session()
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        problem_documents,
    ]
    tried = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            used = [*checks, negative_data_rejection] if mode is GenerationMode.NEGATIVE else checks
            try:
                exercise(operation, mode, used, session)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no parameters, no body)
                continue
            tried += 1
    assert tried >= 30
    assert "internal error" not in service.log()
