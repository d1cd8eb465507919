#!/usr/bin/env bash
# Set everything up (virtualenv, package) and run the main job on the embedded default (SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/orchestrator demo "$@"
