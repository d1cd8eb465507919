"""The engine's log: one line per lifecycle change it records, with stable structured fields."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator.bootstrap.engine_service import build_engine
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import fast_settings, run_until_idle, wait_for

LIFECYCLE = "orchestrator.engine.lifecycle"


def lines_of(caplog: pytest.LogCaptureFixture, command_id: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIFECYCLE and getattr(r, "command_id", None) == str(command_id)]


def test_a_command_start_to_end_logs_each_change_once(
    orch: Orchestrator, agent: SimulatedAgent, caplog: pytest.LogCaptureFixture
) -> None:
    orch.seed(1, 3)
    command_id = orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id
    with caplog.at_level(logging.INFO, logger=LIFECYCLE):
        run_until_idle(orch, agent)
    records = lines_of(caplog, command_id)
    events = [vars(r)["event"] for r in records]
    assert events == [
        "recovery_verdict",
        "tasks_submitted",
        "task_ended",
        "task_ended",
        "task_ended",
        "end_action_started",
        "ended",
        "cleared",
    ]
    assert all(vars(r)["flow"] == "RemoveVm" and vars(r)["pool"] == "default" for r in records)
    submitted = records[1]
    assert vars(submitted)["tasks"] == 3 and "3 task(s) submitted" in submitted.getMessage()
    ended = records[6]
    assert vars(ended)["outcome"] == "succeeded" and ended.levelno == logging.INFO


def test_a_failing_task_and_command_are_warnings(
    orch: Orchestrator, agent: SimulatedAgent, caplog: pytest.LogCaptureFixture, agent_state: Path
) -> None:
    orch.seed(1, 2)
    agent.backend.set_faults(FaultConfig(fail_verbs=["delete_image"]))
    command_id = orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id
    with caplog.at_level(logging.INFO, logger=LIFECYCLE):
        run_until_idle(orch, agent)
    records = lines_of(caplog, command_id)
    failed_tasks = [r for r in records if vars(r)["event"] == "task_ended" and vars(r)["status"] == "failed"]
    assert failed_tasks and all(r.levelno == logging.WARNING for r in failed_tasks)
    assert all(vars(r)["verb"] == "delete_image" for r in failed_tasks)
    (ended,) = [r for r in records if vars(r)["event"] == "ended"]
    assert vars(ended)["outcome"] == "failed" and ended.levelno == logging.WARNING
    assert "failed" in ended.getMessage()


def test_a_write_the_store_refused_is_logged_once_as_it_was_saved(
    orch: Orchestrator, agent: SimulatedAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancel lands while the agent's answer to the create call is on its way: the engine's write
    of the submission is refused, re-read and saved again; the log says it once, as saved."""
    orch.seed(1, 2)
    command_id = orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id
    agent.backend.set_faults(FaultConfig(create_answer_latency=1.0))
    engine = build_engine(orch, agent, fast_settings())
    engine.recover()
    with caplog.at_level(logging.INFO, logger=LIFECYCLE):
        cycle = threading.Thread(target=engine.cycle)
        cycle.start()
        wait_for(lambda: len(agent.backend.journal()) == 2, what="the agent to create both tasks")
        assert orch.request_cancel(command_id, "changed my mind").requested
        cycle.join(timeout=30)
        agent.backend.set_faults(FaultConfig())
        conflicts = sum(w.writer.conflicts for w in engine.workers.values())
        run_until_idle(orch, agent)
    assert conflicts >= 1, "the cancel made the engine's write conflict"
    events = [vars(r)["event"] for r in lines_of(caplog, command_id)]
    assert events.count("tasks_submitted") == 1 and events.count("ended") == 1, events
    (ended,) = [r for r in lines_of(caplog, command_id) if vars(r)["event"] == "ended"]
    assert "cancelled: changed my mind" in vars(ended)["reason"]
