"""What a poll cycle and a recovery did, for logs, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from orchestrator.domain.recovery import Decision


@dataclass
class CycleReport:
    agent_calls: int = 0
    store_transactions: int = 0
    events: int = 0
    submitted: int = 0
    refused: int = 0
    tasks_ended: int = 0
    commands_ended: int = 0
    cleared: int = 0
    stopped: int = 0
    agent_trouble: str = ""
    seconds: float = 0.0

    @property
    def progressed(self) -> bool:
        """The engine moved something forward (so the next cycle should not wait)."""
        return bool(self.submitted or self.refused or self.commands_ended or self.cleared)

    def add(self, other: CycleReport) -> None:
        """Another pool's cycle into this one's figures."""
        for name in (
            "agent_calls",
            "store_transactions",
            "events",
            "submitted",
            "refused",
            "tasks_ended",
            "commands_ended",
            "cleared",
            "stopped",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.agent_trouble = "; ".join(t for t in (self.agent_trouble, other.agent_trouble) if t)


@dataclass
class RecoveryReport:
    decisions: dict[UUID, Decision] = field(default_factory=dict)
    summaries: dict[UUID, str] = field(default_factory=dict)
    orphans_stopped: int = 0
    swept: int = 0
    seconds: float = 0.0
    agent_waits: int = 0
    gave_up: bool = False  # stopped while every pool waited for its agent: nothing was decided
    waiting: dict[str, str] = field(default_factory=dict)  # pools still waiting for their agent, and why

    def merge(self, other: RecoveryReport | None) -> None:
        """A pool's recovery into the engine's."""
        if other is None:
            return
        self.decisions.update(other.decisions)
        self.summaries.update(other.summaries)
        self.orphans_stopped += other.orphans_stopped
        self.swept += other.swept
