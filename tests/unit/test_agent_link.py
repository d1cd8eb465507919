"""The engine's link to an agent: backoff while it fails, none once it answers again."""

from __future__ import annotations

import pytest

from orchestrator.engine.agent_link import AgentLink
from orchestrator.errors import AgentUnavailableError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyAgent:
    """An agent port's one method, down until told otherwise (only what the link calls)."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    def task_statuses(self) -> list[object]:
        self.calls += 1
        if self.down:
            raise AgentUnavailableError("agent at http://127.0.0.1:9/rpc is unreachable: connection refused")
        return []


def link_to(agent: FlakyAgent, clock: Clock) -> AgentLink:
    return AgentLink(agent, poll_interval=0.1, backoff_max=30.0, clock=clock)  # type: ignore[arg-type]


def test_the_backoff_grows_while_the_agent_fails_and_ends_when_it_answers() -> None:
    clock, agent = Clock(), FlakyAgent()
    link = link_to(agent, clock)
    waits = []
    for _ in range(8):
        assert link.ready()
        with pytest.raises(AgentUnavailableError):
            link.call(agent.task_statuses)
        waits.append(link.retry_at - clock.now)
        assert not link.ready(), "no call while backing off"
        clock.now = link.retry_at
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    with pytest.raises(AgentUnavailableError):
        link.call(agent.task_statuses)
    clock.now += 1.0  # 29 s of backoff left when the agent answers a call made anyway (the fence's)
    agent.down = False
    assert link.call(agent.task_statuses) == []
    assert link.ready() and link.trouble == "", "an answer ends the backoff at once"
    with pytest.raises(AgentUnavailableError):
        agent.down = True
        link.call(agent.task_statuses)
    assert link.retry_at - clock.now == 0.5, "the next outage backs off from the start again"
