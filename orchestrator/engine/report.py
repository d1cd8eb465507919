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

    @property
    def progressed(self) -> bool:
        """The engine moved something forward (so the next cycle should not wait)."""
        return bool(self.submitted or self.refused or self.commands_ended or self.cleared)


@dataclass
class RecoveryReport:
    decisions: dict[UUID, Decision] = field(default_factory=dict)
    summaries: dict[UUID, str] = field(default_factory=dict)
    orphans_stopped: int = 0
    swept: int = 0
    seconds: float = 0.0
    agent_waits: int = 0
    gave_up: bool = False  # stopped while waiting for the agent: nothing was decided
