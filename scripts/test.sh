#!/usr/bin/env bash
# Set everything up (virtualenv, package with dev extras) and run the whole suite:
# ruff, mypy (strict), then pytest on SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "== ruff"; .venv/bin/ruff check orchestrator projections scripts tests
.venv/bin/ruff format --check orchestrator projections scripts tests
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
