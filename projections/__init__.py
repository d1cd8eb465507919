"""The read models: tables fed from the event log, each a pure function of it.

`entity_tasks` (which tasks run on which entity, G2), `active_tasks` (every task
not yet cleared on the agent) and `commands` (every command, root and child).
They depend on the domain and the store layer only; the composition root wires
them to the service and the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.domain.model import EntityRef
from orchestrator.store import EventStore, StoreConfig, dialect_for
from orchestrator.store.tables import Tables
from projections.queries import ReadModelQueries, ViewFreshness
from projections.read_models import READ_MODELS, ReadModel, select_read_models
from projections.runner import ReadModelRunner, RebuildBusyError


@dataclass
class ReadModels:
    """The read models of one store: their tables, the runner that feeds them, and the queries."""

    tables: Tables
    runner: ReadModelRunner
    queries: ReadModelQueries

    @classmethod
    def open(cls, config: StoreConfig, store: EventStore, *, read_only: bool = False) -> ReadModels:
        tables = dialect_for(config).tables(read_only=read_only)
        return cls(tables, ReadModelRunner(tables, store), ReadModelQueries(tables))

    def catch_up(self) -> int:
        return self.runner.catch_up()

    def running_tasks_on(self, ref: EntityRef) -> list[str]:
        """Tasks planned or running on an entity, after catching up (validation asks this)."""
        self.catch_up()
        return [row.task_id for row in self.queries.tasks_for_entity(ref, running_only=True)]

    def freshness(self, name: str) -> ViewFreshness:
        """Catch up, then say how far the named read model is behind the log."""
        self.catch_up()
        status = {s.name: s for s in self.runner.status()}[name]
        return ViewFreshness(position=status.position, head=status.head, lag=status.lag)

    def close(self) -> None:
        self.tables.close()


__all__ = [
    "READ_MODELS",
    "ReadModel",
    "ReadModelQueries",
    "ReadModelRunner",
    "ReadModels",
    "RebuildBusyError",
    "ViewFreshness",
    "select_read_models",
]
