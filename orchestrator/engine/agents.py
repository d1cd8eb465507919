"""Which agent serves which storage pool, as the engine sees it.

The composition root gives the engine an `AgentDirectory` (orchestrator/bootstrap/agents.py
builds one from the store's pools); a program that has a single agent wraps it in
`SingleAgent`, which serves every pool's tasks to it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator.agent.port import AgentPort


@runtime_checkable
class AgentDirectory(Protocol):
    def agent_for(self, pool: str) -> AgentPort:
        """The pool's agent (one whose every call fails, saying why, if the pool has none)."""

    def refresh(self, pool: str) -> None:
        """The pool's configuration changed (its agent moved): find its agent again."""

    def close(self) -> None: ...


class SingleAgent:
    """One agent for every pool (the in-process simulated agent of tests, benchmarks, a program's own)."""

    def __init__(self, agent: AgentPort) -> None:
        self.agent = agent

    def agent_for(self, pool: str) -> AgentPort:
        return self.agent

    def refresh(self, pool: str) -> None:
        pass

    def close(self) -> None:
        pass
