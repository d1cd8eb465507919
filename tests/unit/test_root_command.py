"""The root command aggregate: replay, the stored form, and the queries the engine relies on.

Replay is the library's: the pending events are collected and folded with
`mutate`, first straight from memory, then after a round trip through the
application's own mapper (`CheckedMapper`, `JSONTranscoder` with the
transcodings `Application.register_transcodings` adds), on an in-memory
(POPO) `OrchestratorApp`: no database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import (
    CommandStatus,
    EndAction,
    EndKind,
    FailureCause,
    TaskStatus,
)
from orchestrator.domain.payloads import TaskEndRecord
from orchestrator.errors import CommandRefusedError, StoreError
from orchestrator.store.event_store import CheckedMapper, OrchestratorApp
from tests.unit.conftest import agent_id, ended, failed, make_command, submit

RETRY_AT = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture(scope="module")
def mapper() -> Iterator[Mapper[UUID]]:
    app = OrchestratorApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        yield app.mapper
    finally:
        app.close()


def replay(events: Sequence[Any]) -> RootCommand:
    command: Any = None
    for event in events:
        command = event.mutate(command)
    assert isinstance(command, RootCommand)
    return command


def through_store(mapper: Mapper[UUID], events: Sequence[Any]) -> list[Any]:
    """Each event as stored (bytes, as a recorder would keep them), then read back."""
    stored = [mapper.to_stored_event(e) for e in events]
    copies = [StoredEvent(s.originator_id, s.originator_version, s.topic, bytes(s.state)) for s in stored]
    return [mapper.to_domain_event(s) for s in copies]


# ---- one history per event kind: the last event triggered is of that kind -----------------------


def accepted() -> RootCommand:
    return make_command(3)


def tasks_submitted() -> RootCommand:
    command = make_command(3)
    submit(command, "t1", "t2")
    return command


def tasks_refused() -> RootCommand:
    command = tasks_submitted()
    command.record_refused([("t3", "no space left on sd-1")])
    return command


def orphans_adopted() -> RootCommand:
    command = tasks_submitted()
    command.adopt_orphans([("t3", "a-orphan")])
    return command


def tasks_ended() -> RootCommand:
    command = tasks_submitted()
    command.record_ended([ended("t1", message="done", bytes_freed=1024), failed("t2", "disk busy")])
    return command


def failure_decided() -> RootCommand:
    command = tasks_submitted()
    command.decide_failure("1 of 3 expected tasks have no agent task id", ["t3"], FailureCause.SUBMISSION_CUT_SHORT)
    return command


def stops_decided() -> RootCommand:
    command = tasks_submitted()
    command.decide_stops([("t2", "zombie")])
    return command


def recovered() -> RootCommand:
    command = tasks_submitted()
    command.record_recovery("resume polling", "2 task(s) running on the agent")
    return command


def cancel_requested() -> RootCommand:
    command = tasks_submitted()
    command.request_cancel("asked by alice")
    return command


def _all_ended() -> RootCommand:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), ended("t2", agent_succeeded=True)])
    return command


def end_action_started() -> RootCommand:
    command = _all_ended()
    command.start_end_action()
    return command


def end_action_failed() -> RootCommand:
    command = end_action_started()
    command.record_end_action_failed(1, "RuntimeError: inventory busy", RETRY_AT, None)
    return command


def end_action_failed_with_fallback() -> RootCommand:
    command = end_action_failed()
    command.record_end_action_failed(3, "RuntimeError: still busy", None, EndAction.FAILURE)
    return command


def command_ended() -> RootCommand:
    command = end_action_started()
    command.end(reverted=["t2"])
    return command


def tasks_cleared() -> RootCommand:
    command = command_ended()
    command.record_cleared(["t1", "t2"])
    return command


def submission_started_legacy() -> RootCommand:
    """Written by versions before 0.1; no method writes it now, so it is triggered as they did."""
    command = make_command(2)
    command.trigger_event(RootCommand.SubmissionStarted)
    return command


HISTORIES: list[tuple[str, Callable[[], RootCommand]]] = [
    ("Accepted", accepted),
    ("TasksSubmitted", tasks_submitted),
    ("TasksRefused", tasks_refused),
    ("OrphansAdopted", orphans_adopted),
    ("TasksEnded", tasks_ended),
    ("FailureDecided", failure_decided),
    ("StopsDecided", stops_decided),
    ("Recovered", recovered),
    ("CancelRequested", cancel_requested),
    ("EndActionStarted", end_action_started),
    ("EndActionFailed", end_action_failed),
    ("EndActionFailed", end_action_failed_with_fallback),
    ("Ended", command_ended),
    ("TasksCleared", tasks_cleared),
    ("SubmissionStarted", submission_started_legacy),
]
HISTORY_IDS = [build.__name__ for _, build in HISTORIES]


@pytest.mark.parametrize(("kind", "build"), HISTORIES, ids=HISTORY_IDS)
def test_a_command_replayed_from_its_events_equals_the_live_one(kind: str, build: Callable[[], RootCommand]) -> None:
    live = build()
    events = live.collect_events()
    assert type(events[-1]).__name__ == kind
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))

    replayed = replay(events)

    assert replayed == live
    if len(events) > 1:
        assert replay(events[:-1]) != live  # the last event's effect is there, and compared
    assert replayed.version == live.version == len(events)


@pytest.mark.parametrize(("kind", "build"), HISTORIES, ids=HISTORY_IDS)
def test_a_command_read_back_from_its_stored_events_equals_the_live_one(
    mapper: Mapper[UUID], kind: str, build: Callable[[], RootCommand]
) -> None:
    live = build()
    events = live.collect_events()

    read_back = through_store(mapper, events)

    assert [type(e) for e in read_back] == [type(e) for e in events]
    assert replay(read_back) == live


def test_the_mapper_is_the_applications_own(mapper: Mapper[UUID]) -> None:
    assert isinstance(mapper, CheckedMapper)
    assert isinstance(mapper.transcoder, JSONTranscoder)


def test_replay_stops_at_any_version_with_the_state_of_that_moment(mapper: Mapper[UUID]) -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), ended("t2")])
    command.start_end_action()
    command.end()
    events = through_store(mapper, command.collect_events())

    assert replay(events[:1]).status is CommandStatus.ACCEPTED
    assert replay(events[:2]).status is CommandStatus.RUNNING
    assert replay(events[:3]).all_tasks_ended
    assert replay(events[:4]).status is CommandStatus.ENDING
    assert replay(events).status is CommandStatus.SUCCEEDED


def test_what_each_event_records_reads_back_as_recorded(mapper: Mapper[UUID]) -> None:
    command = end_action_failed()
    command.record_recovery("run end action again", "end_successfully had started and did not finish")
    read = replay(through_store(mapper, command.collect_events()))

    assert read.tasks["t1"].agent_task_id == agent_id("t1")
    assert read.tasks["t2"].result == {"agent_succeeded": True}
    assert read.tasks["t1"].submitted_at is not None and read.tasks["t1"].submitted_at.tzinfo is not None
    assert read.end_attempt is not None
    assert read.end_attempt.retry_at == RETRY_AT
    assert read.end_attempt.last_error == "RuntimeError: inventory busy"
    (when, verdict, reason) = read.recoveries[0]
    assert when.tzinfo is not None
    assert (verdict, reason) == ("run end action again", "end_successfully had started and did not finish")


def test_the_legacy_submission_started_marks_the_command_running_and_keeps_it_submittable() -> None:
    command = submission_started_legacy()

    assert command.status is CommandStatus.RUNNING
    assert command.started_at is not None
    assert [t.status for t in command.tasks.values()] == [TaskStatus.PLANNED, TaskStatus.PLANNED]
    assert command.submittable


def test_an_event_kind_this_version_does_not_know_stops_the_read_with_one_clear_error(mapper: Mapper[UUID]) -> None:
    stored = mapper.to_stored_event(accepted().collect_events()[0])
    unknown = StoredEvent(stored.originator_id, 1, "orchestrator.domain.commands:RootCommand.Renamed", stored.state)

    with pytest.raises(
        StoreError, match=r"cannot be read \(aggregate .*, event 1, RootCommand\.Renamed: an event kind"
    ):
        mapper.to_domain_event(unknown)


def test_an_unreadable_stored_state_stops_the_read_with_one_clear_error(mapper: Mapper[UUID]) -> None:
    stored = mapper.to_stored_event(accepted().collect_events()[0])
    damaged = StoredEvent(stored.originator_id, 1, stored.topic, stored.state[:40])

    with pytest.raises(StoreError, match="nothing was changed; restore the store from a backup"):
        mapper.to_domain_event(damaged)


# ---- FailureDecided version 1 ---------------------------------------------------------------------


def _as_version_1(mapper: Mapper[UUID], event: Any) -> StoredEvent:
    """The event as version 1 stored it: no `cause` field, no class version."""
    stored = mapper.to_stored_event(event)
    state = mapper.transcoder.decode(stored.state)
    assert state.pop("class_version") == 2
    del state["cause"]
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, mapper.transcoder.encode(state))


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("cancelled: asked by alice; 2 of 2 expected tasks have no agent task id", FailureCause.CANCELLED),
        ("1 of 3 expected tasks have no agent task id", FailureCause.SUBMISSION_CUT_SHORT),
        ("the agent refused 1 task(s)", FailureCause.REFUSED),
    ],
)
def test_failure_decided_version_1_gets_its_cause_from_its_reason(
    mapper: Mapper[UUID], reason: str, cause: FailureCause
) -> None:
    command = tasks_submitted()
    command.decide_failure(reason, ["t3"], FailureCause.REFUSED)  # the cause given here is dropped below
    events = command.collect_events()
    stored = [*(mapper.to_stored_event(e) for e in events[:-1]), _as_version_1(mapper, events[-1])]

    read: list[Any] = [mapper.to_domain_event(s) for s in stored]

    assert read[-1].cause == cause.value
    replayed = replay(read)
    assert replayed.failure_reason == reason
    assert replayed.tasks["t3"].end_kind is EndKind.NOT_SUBMITTED
    assert not replayed.submittable


def test_failure_decided_version_2_keeps_the_cause_it_was_given(mapper: Mapper[UUID]) -> None:
    command = tasks_submitted()
    command.decide_failure("cancelled: but refused really", [], FailureCause.REFUSED)

    (event,) = through_store(mapper, command.collect_events()[-1:])

    assert event.cause == "refused"


# ---- cancel -----------------------------------------------------------------------------------------


def test_a_cancel_is_recorded_once_and_a_second_one_says_so() -> None:
    command = tasks_submitted()
    command.collect_events()

    assert command.request_cancel("asked by alice") is True
    assert command.request_cancel("asked by bob") is False

    assert [type(e).__name__ for e in command.collect_events()] == ["CancelRequested"]
    assert command.cancel_reason == "asked by alice"
    assert command.failure_summary() == "cancelled: asked by alice"
    assert not command.submittable


def test_a_command_not_yet_submitted_can_be_cancelled() -> None:
    command = make_command(2)

    assert command.request_cancel("too slow")
    assert command.status is CommandStatus.ACCEPTED
    assert not command.submittable


@pytest.mark.parametrize(("second", "outcome"), [(ended, "succeeded"), (failed, "failed")])
def test_a_cancel_is_refused_once_the_end_action_has_begun(
    second: Callable[[str], TaskEndRecord], outcome: str
) -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), second("t2")])
    command.start_end_action()
    command.collect_events()

    with pytest.raises(CommandRefusedError, match=f"its end action has begun; it will end as {outcome}$"):
        command.request_cancel("too late")

    assert command.cancel_reason is None
    assert command.collect_events() == []


def test_a_cancel_is_refused_once_the_command_has_ended() -> None:
    command = command_ended()
    command.collect_events()

    with pytest.raises(CommandRefusedError, match=r"has already ended \(succeeded\); nothing to cancel"):
        command.request_cancel("much too late")

    assert command.collect_events() == []


def test_a_cancel_before_the_end_action_makes_it_a_failure_even_if_every_task_succeeded() -> None:
    command = _all_ended()
    assert command.due_end_action is EndAction.SUCCESS

    command.request_cancel("asked by alice")
    command.start_end_action()
    command.end()

    assert command.end_attempt is not None and command.end_attempt.action is EndAction.FAILURE
    assert command.status is CommandStatus.FAILED
    assert command.outcome_reason == "cancelled: asked by alice"


# ---- due_end_action ---------------------------------------------------------------------------------


def _succeeded(tasks: int) -> RootCommand:
    command = make_command(tasks)
    ids = [f"t{i}" for i in range(1, tasks + 1)]
    submit(command, *ids)
    command.record_ended([ended(t) for t in ids])
    return command


def _one_failed() -> RootCommand:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), failed("t2")])
    return command


def _zombie_whose_work_was_done() -> RootCommand:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.decide_stops([("t2", "zombie")])
    command.record_ended(
        [ended("t1"), ended("t2", TaskStatus.FAILED, EndKind.ZOMBIE, "ran long", agent_succeeded=True)]
    )
    return command


def _failure_decided_though_all_succeeded() -> RootCommand:
    command = _succeeded(2)
    command.decide_failure("the agent refused 1 task(s)", [], FailureCause.REFUSED)
    return command


def _cancelled_though_all_succeeded() -> RootCommand:
    command = _succeeded(2)
    command.request_cancel("asked by alice")
    return command


def _success_gave_up() -> RootCommand:
    command = _succeeded(1)
    command.start_end_action()
    command.record_end_action_failed(3, "RuntimeError: boom", None, EndAction.FAILURE)
    return command


@pytest.mark.parametrize(
    ("build", "action"),
    [
        (lambda: _succeeded(3), EndAction.SUCCESS),
        (lambda: _succeeded(0), EndAction.SUCCESS),
        (_one_failed, EndAction.FAILURE),
        (_zombie_whose_work_was_done, EndAction.FAILURE),
        (_failure_decided_though_all_succeeded, EndAction.FAILURE),
        (_cancelled_though_all_succeeded, EndAction.FAILURE),
        (_success_gave_up, EndAction.FAILURE),
    ],
    ids=[
        "all succeeded",
        "no tasks",
        "one failed",
        "zombie did the work",
        "failure decided",
        "cancelled",
        "success gave up",
    ],
)
def test_the_end_action_due_is_success_only_if_every_task_succeeded_and_nothing_failed(
    build: Callable[[], RootCommand], action: EndAction
) -> None:
    assert build().due_end_action is action


def test_a_command_whose_tasks_all_succeeded_ends_succeeded_with_each_child() -> None:
    command = _succeeded(2)
    command.start_end_action()
    assert command.due_end_action is EndAction.SUCCESS
    command.end()
    assert command.status is CommandStatus.SUCCEEDED
    assert command.outcome_reason == "all tasks succeeded"
    assert command.child_outcomes() == {"c1": "succeeded", "c2": "succeeded"}


def test_an_end_action_that_gave_up_ends_the_command_failed_flagged_with_why() -> None:
    command = _success_gave_up()
    command.end()

    assert command.status is CommandStatus.FAILED
    assert command.flagged
    assert command.outcome_reason == "end_successfully gave up after 3 attempt(s): RuntimeError: boom"


def test_a_failed_end_with_failure_that_gives_up_says_why_in_the_outcome() -> None:
    command = _one_failed()
    command.start_end_action()
    command.record_end_action_failed(3, "RuntimeError: boom", None, None)
    command.end(flagged=True)

    assert command.status is CommandStatus.FAILED
    assert command.flagged
    assert command.outcome_reason.endswith("; end_with_failure gave up: RuntimeError: boom")
    assert command.child_outcomes() == {"c1": "succeeded", "c2": "failed"}


# ---- tasks_to_stop, submittable, in_flight -------------------------------------------------------


def _stop_ids(command: RootCommand) -> list[str]:
    return [t.task_id for t in command.tasks_to_stop]


def test_tasks_to_stop_are_running_orphans_and_zombies() -> None:
    command = make_command(4)
    submit(command, "t1", "t2")
    command.adopt_orphans([("t3", "a-3")])
    command.decide_stops([("t2", "zombie")])

    assert _stop_ids(command) == ["t2", "t3"]
    assert command.tasks["t3"].orphan

    command.record_ended([ended("t2", TaskStatus.FAILED, EndKind.ZOMBIE, "ran long")])
    assert _stop_ids(command) == ["t3"]


def test_every_running_task_of_a_cancelled_command_is_to_stop_but_not_its_planned_ones() -> None:
    command = make_command(3)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1")])
    command.request_cancel("asked by alice")

    assert _stop_ids(command) == ["t2"]


def test_nothing_is_to_stop_once_the_command_has_ended() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.decide_stops([("t2", "zombie")])
    command.start_end_action()  # forced, as a give-up would
    command.end()

    assert command.running_tasks != []
    assert command.tasks_to_stop == []


def test_submittable_until_something_decides_that_the_command_fails() -> None:
    command = make_command(3)
    assert command.submittable  # accepted
    submit(command, "t1")
    assert command.submittable  # running, t2 and t3 still to submit
    command.record_refused([("t2", "no space")])
    assert not command.submittable  # the rest is never submitted
    assert command.failure_reason == "the agent refused 1 task(s)"


def test_not_submittable_once_ending_or_ended() -> None:
    command = _all_ended()
    assert command.submittable
    command.start_end_action()
    assert not command.submittable
    command.end()
    assert not command.submittable


def test_in_flight_until_ended_and_every_task_cleared_on_the_agent() -> None:
    command = make_command(3)
    assert command.in_flight
    submit(command, "t1", "t2")
    command.record_refused([("t3", "no space")])
    command.record_ended([ended("t1"), failed("t2")])
    command.start_end_action()
    command.end()
    assert command.ended
    assert command.in_flight
    assert [t.task_id for t in command.uncleared_tasks] == ["t1", "t2"]  # the refused one was never there

    command.record_cleared(["t1"])
    assert command.in_flight
    command.record_cleared(["t2"])
    assert not command.in_flight


def test_a_command_ended_with_no_task_ever_on_the_agent_is_not_in_flight() -> None:
    command = make_command(2)
    command.decide_failure("cancelled: asked", ["t1", "t2"], FailureCause.CANCELLED)
    command.start_end_action()
    command.end()

    assert not command.in_flight


def test_commands_that_record_nothing_trigger_no_event() -> None:
    command = tasks_submitted()
    command.collect_events()

    command.record_submitted([])
    command.record_refused([])
    command.adopt_orphans([])
    command.record_ended([])
    command.decide_stops([])
    command.record_cleared([])
    command.start_end_action()  # once: the second is nothing
    command.start_end_action()

    assert [type(e).__name__ for e in command.collect_events()] == ["EndActionStarted"]
