"""Named crash points: `ORCHESTRATOR_CRASH_AT=NAME[:N]` exits the process at once.

The N-th time (default 1) the process passes the named point it calls
`os._exit(CRASH_EXIT_CODE)`: no cleanup, no flush, no finally blocks, as if
the machine lost power. One line goes to stderr first (unbuffered), so a test
can tell that the crash happened where it asked.
"""

from __future__ import annotations

import os

from orchestrator.errors import InputError

CRASH_ENV = "ORCHESTRATOR_CRASH_AT"
CRASH_EXIT_CODE = 86

CRASH_POINTS: dict[str, str] = {
    "after_accept": "the command and all its expected tasks are recorded (submit, or the library's submit)",
    "after_agent_accept": "the agent accepted a batch of tasks; their agent ids are not recorded",
    "after_agent_id_recorded": "the agent ids of a batch of tasks are recorded",
    "after_task_end_recorded": "the ends of tasks found in one poll cycle are recorded",
    "in_end_action": "inside an end action: agent reverts done, inventory changes not committed",
    "after_end_action": "the end action committed (command ended), tasks not yet cleared",
    "after_agent_clear": "the agent cleared the tasks; the clearing is not recorded",
    "in_recovery": "recovery recorded its verdicts, before the engine resumes work",
}


class _CrashPlan:
    def __init__(self) -> None:
        self.name: str | None = None
        self.nth = 1
        self.seen = 0
        raw = os.environ.get(CRASH_ENV, "").strip()
        if raw:
            name, _, count = raw.partition(":")
            if name not in CRASH_POINTS:
                raise InputError(f"{CRASH_ENV}={raw!r}: unknown crash point; known: {', '.join(CRASH_POINTS)}")
            try:
                self.nth = int(count) if count else 1
            except ValueError:
                raise InputError(f"{CRASH_ENV}={raw!r}: N must be a whole number") from None
            self.name = name


_plan: _CrashPlan | None = None


def crash_plan() -> _CrashPlan:
    global _plan  # noqa: PLW0603 - one plan per process, read from the environment once
    if _plan is None:
        _plan = _CrashPlan()
    return _plan


def crash_point(name: str) -> None:
    """Exit the process here if the environment asks for it."""
    assert name in CRASH_POINTS, name
    plan = crash_plan()
    if plan.name != name:
        return
    plan.seen += 1
    if plan.seen == plan.nth:
        os.write(2, f"orchestrator: crash point {name}:{plan.nth} reached, exiting\n".encode())
        os._exit(CRASH_EXIT_CODE)
