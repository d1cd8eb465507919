"""`decide()` of orchestrator/domain/recovery.py: every row of the recovery table, every branch.

Each command is built through the aggregate's own methods, and the agent's task
list is an `AgentView` of `AgentTaskFact`s, as recovery and the inspection see it.
"""

from __future__ import annotations

import pytest

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import CommandStatus, EndAction, EndKind, FailureCause, TaskStatus
from orchestrator.domain.recovery import AgentTaskFact, Decision, Verdict, decide
from tests.unit.conftest import agent_id, ended, fact, failed, make_command, submit, view

NOT_ASKED = None  # the agent's task list was not asked for (the inspection's --no-agent)


def test_a_command_ended_and_cleared_needs_nothing() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), ended("t2")])
    command.start_end_action()
    command.end()
    command.record_cleared(["t1", "t2"])

    decision = decide(command, view())

    assert decision == Decision(Verdict.NOTHING, "command succeeded and cleared")
    assert not decision.needs_recovery
    assert not command.in_flight


def test_a_command_ended_with_tasks_still_on_the_agent_is_only_cleared() -> None:
    command = make_command(3)
    submit(command, "t1")
    command.record_refused([("t2", "no space")])  # never on the agent: nothing to clear
    command.decide_failure("the agent refused 1 task(s)", ["t3"], FailureCause.REFUSED)  # never submitted
    command.record_ended([failed("t1")])
    command.start_end_action()
    command.end()

    decision = decide(command, view(fact(command, "t1", ended=True)))

    assert command.status is CommandStatus.FAILED
    assert decision == Decision(Verdict.CLEAR_ONLY, "command failed; 1 task(s) still to clear on the agent")
    assert decision.needs_recovery
    # the agent's list plays no part: the same without it, only marked provisional
    assert decide(command, NOT_ASKED) == Decision(
        Verdict.CLEAR_ONLY, "command failed; 1 task(s) still to clear on the agent", provisional=True
    )


def test_a_command_whose_end_action_had_started_runs_it_again() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), ended("t2")])
    command.start_end_action()

    decision = decide(command, view(fact(command, "t1", ended=True), fact(command, "t2", ended=True)))

    assert decision == Decision(Verdict.RUN_END_ACTION_AGAIN, "end_successfully had started and did not finish")


def test_an_end_action_that_fell_back_to_failure_is_the_one_run_again() -> None:
    command = make_command(1)
    submit(command, "t1")
    command.record_ended([ended("t1")])
    command.start_end_action()
    command.record_end_action_failed(3, "RuntimeError: boom", None, EndAction.FAILURE)

    decision = decide(command, NOT_ASKED)

    assert decision.verdict is Verdict.RUN_END_ACTION_AGAIN
    assert decision.reason == "end_with_failure had started and did not finish"
    assert decision.provisional


def test_accepted_with_none_of_its_keys_on_the_agent_starts() -> None:
    command = make_command(2)
    other = make_command(2)  # the agent holds another command's tasks, with the same task ids
    agent = view(fact(other, "t1"), fact(other, "t2", ended=True))

    decision = decide(command, agent)

    assert decision == Decision(Verdict.START, "accepted; none of its tasks is on the agent: submit them")
    assert command.submittable


def test_accepted_without_the_agents_list_starts_provisionally() -> None:
    command = make_command(2)

    decision = decide(command, NOT_ASKED)

    assert decision == Decision(
        Verdict.START,
        "accepted; no agent task id recorded (the agent may hold some: not asked)",
        provisional=True,
    )


def test_accepted_with_a_task_found_on_the_agent_by_key_fails_and_names_the_orphan() -> None:
    """The crash fell between the agent accepting a task and its id being recorded (G1)."""
    command = make_command(2)

    decision = decide(command, view(fact(command, "t1", agent_task_id="a-77")))

    assert decision == Decision(
        Verdict.FAIL,
        "2 of 2 expected tasks have no agent task id; 1 found on the agent by key: stop and clear them",
        orphans=[("t1", "a-77")],
        unsubmitted=["t2"],
    )


def test_a_planned_task_found_by_key_after_others_were_submitted_is_an_orphan() -> None:
    command = make_command(3)
    submit(command, "t1")
    agent = view(fact(command, "t1"), fact(command, "t2", agent_task_id="a-2", ended=True))

    decision = decide(command, agent)

    assert decision.verdict is Verdict.FAIL
    assert decision.orphans == [("t2", "a-2")]
    assert decision.unsubmitted == ["t3"]
    assert decision.reason == (
        "2 of 3 expected tasks have no agent task id; 1 found on the agent by key: stop and clear them"
    )
    assert decision.vanished == [] and decision.finished_while_down == [] and decision.to_stop == []


def test_a_planned_task_the_agent_never_got_fails_the_command() -> None:
    """The seed's example: submission cut short, the submitted ones still run."""
    command = make_command(4)
    submit(command, "t1", "t2")
    agent = view(fact(command, "t1"), fact(command, "t2", ended=True))

    decision = decide(command, agent)

    assert decision == Decision(
        Verdict.FAIL,
        "2 of 4 expected tasks have no agent task id",
        unsubmitted=["t3", "t4"],
        finished_while_down=["t2"],
    )


def test_a_running_task_the_agent_no_longer_knows_has_vanished_and_fails_the_command() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")

    decision = decide(command, view(fact(command, "t2")))

    assert decision == Decision(Verdict.FAIL, "1 task(s) no longer known to the agent", vanished=["t1"])


def test_a_task_known_by_key_under_another_agent_id_has_vanished() -> None:
    """The agent id recorded is what counts; the key of a running task is not looked up."""
    command = make_command(1)
    submit(command, "t1")

    decision = decide(command, view(fact(command, "t1", agent_task_id="someone-else")))

    assert decision.verdict is Verdict.FAIL
    assert decision.vanished == ["t1"]


def test_without_the_agents_list_nothing_is_said_to_have_vanished() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")

    decision = decide(command, NOT_ASKED)

    assert decision == Decision(Verdict.RESUME, "2 task(s) running on the agent", provisional=True)


def test_every_task_known_to_the_agent_resumes_polling() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")

    decision = decide(command, view(fact(command, "t1"), fact(command, "t2")))

    assert decision == Decision(Verdict.RESUME, "2 task(s) running on the agent")


def test_a_task_that_ended_on_the_agent_while_the_engine_was_down_resumes_polling() -> None:
    command = make_command(3)
    submit(command, "t1", "t2", "t3")
    command.record_ended([ended("t3")])  # recorded before the crash
    agent = view(fact(command, "t1", ended=True), fact(command, "t2"), fact(command, "t3", ended=True))

    decision = decide(command, agent)

    assert decision == Decision(
        Verdict.RESUME,
        "2 task(s) running on the agent, 1 ended while the engine was down",
        finished_while_down=["t1"],
    )


@pytest.mark.parametrize("outcome", ["succeeded", "one failed"])
def test_every_task_ended_runs_the_end_action(outcome: str) -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.record_ended([ended("t1"), failed("t2") if outcome == "one failed" else ended("t2")])

    decision = decide(command, view(fact(command, "t1", ended=True), fact(command, "t2", ended=True)))

    assert decision == Decision(Verdict.RUN_END_ACTION, "every task had ended; the end action is due")
    expected = EndAction.SUCCESS if outcome == "succeeded" else EndAction.FAILURE
    assert command.due_end_action is expected


def test_every_task_ended_and_cleared_by_the_agent_meanwhile_still_runs_the_end_action() -> None:
    """The agent's list is empty, but ended tasks are not polled: nothing has vanished."""
    command = make_command(1)
    submit(command, "t1")
    command.record_ended([ended("t1")])

    assert decide(command, view()).verdict is Verdict.RUN_END_ACTION


def test_a_cancelled_command_fails_and_its_running_tasks_are_to_stop_without_a_second_reason() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    assert command.request_cancel("asked by alice")

    decision = decide(command, view(fact(command, "t1"), fact(command, "t2")))

    assert decision == Decision(Verdict.FAIL, "cancelled: asked by alice", to_stop=["t1", "t2"])


def test_a_cancelled_command_never_submitted_fails_rather_than_starts() -> None:
    command = make_command(2)
    command.request_cancel("changed my mind")

    decision = decide(command, view())

    assert decision == Decision(
        Verdict.FAIL,
        "cancelled: changed my mind; 2 of 2 expected tasks have no agent task id",
        unsubmitted=["t1", "t2"],
    )


def test_an_orphan_adopted_earlier_and_still_running_is_to_stop_and_fails_the_command() -> None:
    command = make_command(2)
    submit(command, "t1")
    command.adopt_orphans([("t2", "a-orphan")])
    command.record_ended([ended("t1")])

    decision = decide(command, view(fact(command, "t1", ended=True), fact(command, "t2", agent_task_id="a-orphan")))

    assert decision == Decision(Verdict.FAIL, "1 task(s) still to stop (orphans or zombies)", to_stop=["t2"])


def test_a_zombie_whose_stop_was_decided_is_to_stop_and_fails_the_command() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.decide_stops([("t2", "zombie")])

    decision = decide(command, view(fact(command, "t1"), fact(command, "t2")))

    assert decision == Decision(Verdict.FAIL, "1 task(s) still to stop (orphans or zombies)", to_stop=["t2"])


def test_a_task_to_stop_that_ended_on_the_agent_meanwhile_is_no_longer_to_stop() -> None:
    command = make_command(2)
    submit(command, "t1", "t2")
    command.decide_stops([("t2", "zombie")])

    decision = decide(command, view(fact(command, "t1"), fact(command, "t2", ended=True)))

    assert decision == Decision(
        Verdict.RESUME,
        "2 task(s) running on the agent, 1 ended while the engine was down",
        finished_while_down=["t2"],
    )


def test_reasons_add_up_when_several_things_went_wrong() -> None:
    command = make_command(4)
    submit(command, "t1", "t2", "t3")
    command.decide_stops([("t3", "zombie")])

    decision = decide(command, view(fact(command, "t2"), fact(command, "t3")))

    assert decision == Decision(
        Verdict.FAIL,
        "1 of 4 expected tasks have no agent task id; 1 task(s) still to stop (orphans or zombies); "
        "1 task(s) no longer known to the agent",
        unsubmitted=["t4"],
        vanished=["t1"],
        to_stop=["t3"],
    )


def test_a_failure_already_decided_fails_with_its_own_reason() -> None:
    command = make_command(3)
    submit(command, "t1")
    command.record_refused([("t2", "no space left")])
    command.decide_failure("the agent refused 1 task(s)", ["t3"], FailureCause.REFUSED)

    decision = decide(command, view(fact(command, "t1")))

    assert decision == Decision(Verdict.FAIL, "the agent refused 1 task(s)")
    assert not command.submittable


def test_a_failure_decided_while_every_task_ended_says_fail_not_run_end_action() -> None:
    """The verdict names the outcome: the end action that follows is end_with_failure."""
    command = make_command(2)
    submit(command, "t1")
    command.decide_failure("1 of 2 expected tasks have no agent task id", ["t2"], FailureCause.SUBMISSION_CUT_SHORT)
    command.record_ended([ended("t1")])
    assert command.all_tasks_ended

    decision = decide(command, view(fact(command, "t1", ended=True)))

    assert decision == Decision(Verdict.FAIL, "1 of 2 expected tasks have no agent task id")
    assert command.due_end_action is EndAction.FAILURE


def test_recording_the_verdicts_recovery_reaches_makes_the_next_recovery_resume() -> None:
    """What recovery records (orchestrator/engine/recovery.py) settles the command: decided once, not again."""
    command = make_command(3)
    submit(command, "t1")
    agent = view(fact(command, "t1"), fact(command, "t2", agent_task_id="a-2"))
    first = decide(command, agent)
    assert first.verdict is Verdict.FAIL

    command.adopt_orphans(first.orphans)
    command.decide_failure(first.reason, first.unsubmitted, FailureCause.SUBMISSION_CUT_SHORT)
    command.record_recovery(first.verdict.value, first.reason)

    second = decide(command, agent)
    assert second == Decision(Verdict.FAIL, "1 task(s) still to stop (orphans or zombies)", to_stop=["t2"])
    assert command.tasks["t3"].status is TaskStatus.FAILED
    assert command.tasks["t3"].end_kind is EndKind.NOT_SUBMITTED
    assert command.recoveries[-1][1:] == ("fail", first.reason)


def test_the_agent_view_indexes_by_key_and_by_agent_id() -> None:
    command = make_command(1)
    one = AgentTaskFact(agent_id("t1"), command.task_key("t1"), False)
    agent = view(one)

    assert agent.by_key == {f"{command.id}/t1": one}
    assert agent.by_id == {"agent-t1": one}


def test_decide_changes_nothing_on_the_command() -> None:
    command: RootCommand = make_command(3)
    submit(command, "t1")
    command.collect_events()
    before = command.version

    decide(command, view(fact(command, "t2")))
    decide(command, NOT_ASKED)

    assert command.version == before
    assert command.pending_events == []
    assert [t.status for t in command.tasks.values()] == [TaskStatus.RUNNING, TaskStatus.PLANNED, TaskStatus.PLANNED]
