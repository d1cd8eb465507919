"""The benchmark's JSON results: written as they come, merged from earlier files, and what was measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from scripts.bench_plan import Sizes
from scripts.bench_targets import targets

REPO = Path(__file__).resolve().parent.parent


def new_document(quick: bool, runs: int, sizes: Sizes) -> dict[str, Any]:
    """The results' frame: the command line, the sizes, the machine and the engine's commit; no backend yet."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": quick,
        "runs": runs,
        "sizes": asdict(sizes),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "commit": head_commit(),
        "backends": {},
    }


def head_commit() -> str:
    """The engine's commit measured (the working tree may hold uncommitted changes besides)."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")


def write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(plain(doc), indent=2, default=str))


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def merged(paths: list[Path]) -> dict[str, Any]:
    """Earlier results as one document; a later file's sections replace an earlier one's."""
    doc: dict[str, Any] = {"backends": {}}
    commands = []
    for path in paths:
        part = json.loads(path.read_text())
        for backend, results in part["backends"].items():
            doc["backends"].setdefault(backend, {}).update(results)
        doc |= {k: v for k, v in part.items() if k != "backends"}
        commands.append(part["command"])
    doc["command"] = " ; ".join(commands)
    doc["targets"] = targets(doc["backends"])
    return doc
