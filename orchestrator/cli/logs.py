"""Logging for every command: text for people, or JSON (one object a line) for collectors.

`--log-format json` prints every record the process logs as one JSON object with
stable keys (time, level, logger, message) followed by the structured fields a
caller passed with `extra={...}` (command_id, flow, event, ...). Text lines keep
the format `TIME NAME LEVEL: MESSAGE` and append the same fields as key=value.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# Attributes every LogRecord has: anything else on a record came from `extra={...}`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a caller attached to a record with `extra={...}`."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry.setdefault("exception", self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`TIME NAME LEVEL: MESSAGE key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure_logging(*, verbose: bool, log_format: LogFormat) -> None:
    """Send every log record to stderr in the chosen format (called again when options come later)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "orchestrator_cli", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.orchestrator_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.setLevel(logging.INFO if verbose else logging.WARNING)
