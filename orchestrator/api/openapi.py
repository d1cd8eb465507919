"""The OpenAPI document the service serves at /openapi.json, checked into the repository.

`python -m orchestrator.api --write-openapi` writes docs/openapi.json;
`python -m orchestrator.api --check-openapi` exits 1 if it differs from what
the code produces (tests/test_api_openapi.py checks the served one too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def build_document() -> dict[str, Any]:
    from orchestrator.api.app import create_app

    return create_app(None).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_document(path: Path = DOCUMENT_PATH) -> Path:
    path.write_text(render(build_document()))
    return path


def document_is_current(path: Path = DOCUMENT_PATH) -> bool:
    try:
        checked_in: object = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return checked_in == build_document()
