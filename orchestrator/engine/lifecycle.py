"""One log line per lifecycle change the engine records, read from the events it has just saved.

The lines come from what was committed, not from what a phase meant to do, so a
write the store refused logs nothing and a line always names a recorded fact.
Every line carries structured fields (`extra`) with stable keys: `event`,
`command_id`, `flow`, `pool`, and what the event says (`tasks`, `task_id`,
`outcome`, `verdict`, `reason`, ...); `--log-format json` prints them as keys.
Accepts, cancels and terminations are logged by the service that records them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from orchestrator.domain.commands import RootCommand

log = logging.getLogger("orchestrator.engine.lifecycle")

Line = tuple[int, str, dict[str, Any]]  # level, message, fields
Describe = Callable[[RootCommand, Any], list[Line]]

# An event with many tasks gets one line per task up to this many, then one line for the rest.
TASK_LINES = 20


def _submitted(command: RootCommand, event: Any) -> list[Line]:
    n = len(event.submitted)
    return [(logging.INFO, f"{n} task(s) submitted to the agent", {"tasks": n})]


def _refused(command: RootCommand, event: Any) -> list[Line]:
    n, first = len(event.refused), event.refused[0][1] if event.refused else ""
    return [(logging.WARNING, f"the agent refused {n} task(s): {first}", {"tasks": n, "reason": first})]


def _adopted(command: RootCommand, event: Any) -> list[Line]:
    n = len(event.orphans)
    return [(logging.INFO, f"{n} task(s) found running on the agent adopted", {"tasks": n})]


def _tasks_ended(command: RootCommand, event: Any) -> list[Line]:
    lines: list[Line] = []
    for record in event.ended[:TASK_LINES]:
        task = command.tasks.get(record["task_id"])
        verb = task.verb if task is not None else "?"
        text = f"task {record['task_id']} ({verb}) ended: {record['status']}"
        if record["message"]:
            text += f" ({record['message']})"
        level = logging.INFO if record["status"] == "succeeded" else logging.WARNING
        lines.append((level, text, {"task_id": record["task_id"], "verb": verb, "status": record["status"]}))
    if len(event.ended) > TASK_LINES:
        rest = len(event.ended) - TASK_LINES
        lines.append((logging.INFO, f"{rest} more task(s) ended", {"tasks": rest}))
    return lines


def _failure(command: RootCommand, event: Any) -> list[Line]:
    return [(logging.WARNING, f"failing: {event.reason}", {"reason": event.reason, "cause": event.cause})]


def _stops(command: RootCommand, event: Any) -> list[Line]:
    n, why = len(event.stops), event.stops[0][1] if event.stops else ""
    return [(logging.INFO, f"{n} task(s) to stop: {why}", {"tasks": n, "reason": why})]


def _recovered(command: RootCommand, event: Any) -> list[Line]:
    text = f"recovery verdict {event.verdict}: {event.reason}"
    return [(logging.INFO, text, {"verdict": event.verdict, "reason": event.reason})]


def _end_started(command: RootCommand, event: Any) -> list[Line]:
    return [(logging.INFO, f"end action {event.action} started", {"action": event.action})]


def _end_failed(command: RootCommand, event: Any) -> list[Line]:
    then = f"next: {event.fallback}" if event.fallback else ("retrying" if event.retry_at else "giving up")
    text = f"end action {event.action} failed (attempt {event.attempt}): {event.error}; {then}"
    return [(logging.WARNING, text, {"action": event.action, "attempt": event.attempt, "reason": event.error})]


def _ended(command: RootCommand, event: Any) -> list[Line]:
    text = f"ended: {event.outcome}" + (f" ({event.reason})" if event.reason else "")
    level = logging.INFO if event.outcome == "succeeded" else logging.WARNING
    return [(level, text, {"outcome": event.outcome, "reason": event.reason, "flagged": event.flagged})]


def _cleared(command: RootCommand, event: Any) -> list[Line]:
    n = len(event.task_ids)
    return [(logging.INFO, f"{n} task(s) cleared on the agent", {"tasks": n})]


DESCRIBE: dict[type, tuple[str, Describe]] = {
    RootCommand.TasksSubmitted: ("tasks_submitted", _submitted),
    RootCommand.TasksRefused: ("tasks_refused", _refused),
    RootCommand.OrphansAdopted: ("orphans_adopted", _adopted),
    RootCommand.TasksEnded: ("task_ended", _tasks_ended),
    RootCommand.FailureDecided: ("failure_decided", _failure),
    RootCommand.StopsDecided: ("stops_decided", _stops),
    RootCommand.Recovered: ("recovery_verdict", _recovered),
    RootCommand.EndActionStarted: ("end_action_started", _end_started),
    RootCommand.EndActionFailed: ("end_action_failed", _end_failed),
    RootCommand.Ended: ("ended", _ended),
    RootCommand.TasksCleared: ("cleared", _cleared),
}


def pending_of(commands: Sequence[RootCommand]) -> list[tuple[RootCommand, list[Any]]]:
    """What these commands are about to save, taken before saving empties it (nothing if nobody listens)."""
    if not log.isEnabledFor(logging.INFO):
        return []
    return [(c, list(c.pending_events)) for c in commands]


def log_saved(saved: Iterable[tuple[RootCommand, list[Any]]]) -> None:
    """The lines of events that were committed."""
    for command, events in saved:
        base = {"command_id": str(command.id), "flow": command.flow, "pool": command.pool_id}
        for event in events:
            found = DESCRIBE.get(type(event))
            if found is None:
                continue
            name, describe = found
            for level, text, fields in describe(command, event):
                log.log(
                    level, "%s command %s: %s", command.flow, command.id, text, extra={"event": name, **base, **fields}
                )
