"""What the engine tells whoever watches it (metrics, a console): cycles, agent calls, recoveries.

The engine calls these hooks and does not care what they do; `NO_OBSERVER` does
nothing. An observer must be quick and must not raise.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.engine.report import CycleReport, RecoveryReport


class EngineObserver(Protocol):
    def cycle_done(self, report: CycleReport, seconds: float) -> None:
        """One poll cycle ended."""

    def agent_called(self, pool: str, method: str, seconds: float, error: str | None) -> None:
        """One call to a pool's agent answered (error: its kind of failure, or None)."""

    def recovered(self, report: RecoveryReport) -> None:
        """Recovery decided for every command in flight (or gave up waiting for an agent)."""


class NoObserver:
    def cycle_done(self, report: CycleReport, seconds: float) -> None:
        pass

    def agent_called(self, pool: str, method: str, seconds: float, error: str | None) -> None:
        pass

    def recovered(self, report: RecoveryReport) -> None:
        pass


NO_OBSERVER: EngineObserver = NoObserver()
