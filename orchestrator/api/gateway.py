"""The one orchestrator a service process opens, made safe for many request threads.

FastAPI answers sync endpoints from a thread pool. The read models' queries are
safe there (SQLite connections are per thread; PostgreSQL's come from a pool),
and so are the event store's reads. The service's aggregate cache is not: it
hands out aggregates without a copy, and `submit`/`cancel` change cached ones in
place before saving them (see orchestrator/store/event_store.py), so every call
that loads aggregates holds one lock. The read-only store behind the history and
the inspection is opened once too, like the service's.

On PostgreSQL the read models' tables are used by one request thread at a time:
their pool is opened with `open(wait=True)` on every use
(orchestrator/store/postgres.py, PostgresTables._connection), and psycopg_pool's
`wait()` asserts when two threads wait at once (and closes the pool when a wait
times out). Until that is fixed there, this lock keeps it from happening.

Each answer is what the CLI prints with --json for the same question (the same
models, built the same way).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from orchestrator.bootstrap import Orchestrator, read_agent_tasks
from orchestrator.documents import CommandView, FlowView, InventoryItemView, LockView, as_document, versioned
from orchestrator.domain.model import DEFAULT_POOL, EntityRef
from orchestrator.errors import OrchestratorError
from orchestrator.inspection import (
    NOT_CONSULTED,
    CommandHistory,
    InspectionReport,
    ReadOnlyStore,
    command_history,
    inspect_store,
)
from orchestrator.service import CancelResult, RetryResult, SubmitResult, TerminateResult
from projections.documents import ActiveTasksView, EntityTasksView, ProjectionStatusView, TaskEntitiesView
from projections.queries import CommandPageQuery, CommandRow, ViewFreshness
from projections.runner import ProjectionStatus

# The versioned documents `inspect --json` and `inspect --command --json` print (orchestrator/cli/schema.py).
INSPECTION_KIND, HISTORY_KIND = "inspection", "command-history"
InspectionDocument = versioned(InspectionReport, INSPECTION_KIND)
HistoryDocument = versioned(CommandHistory, HISTORY_KIND)


class StoreGateway:
    """The service, the read models and the read-only store of one process, for request threads."""

    def __init__(self, orch: Orchestrator, readonly: ReadOnlyStore, agent_state: Path | None) -> None:
        self.orch = orch
        self.readonly = readonly
        self.agent_state = agent_state
        self._aggregates = threading.RLock()
        self._pg_tables = threading.RLock() if orch.config.kind == "postgresql" else None

    @classmethod
    def open(cls, store: str | None, agent_state: Path | None) -> StoreGateway:
        orch = Orchestrator.open(store, agent_state=agent_state, create=True)
        try:
            readonly = ReadOnlyStore(store)
        except BaseException:
            orch.close()
            raise
        return cls(orch, readonly, agent_state)

    def close(self) -> None:
        self.readonly.close()
        self.orch.close()

    @property
    def redacted_url(self) -> str:
        return self.orch.config.redacted

    def scrub(self, text: str) -> str:
        return self.orch.config.scrub(text)

    @contextmanager
    def aggregates(self) -> Iterator[None]:
        """Hold while loading, changing or rendering cached aggregates (taken before `tables`, never after)."""
        with self._aggregates:
            yield

    @contextmanager
    def tables(self) -> Iterator[None]:
        """Hold while using the read models' tables (PostgreSQL only; see the module's docstring)."""
        if self._pg_tables is None:
            yield
            return
        with self._pg_tables:
            yield

    # ---- the log and the read models ---------------------------------------------------------

    def head(self) -> int:
        return self.orch.store.head()

    def freshness(self, name: str) -> ViewFreshness:
        """Like the CLI's: catch the read models up (only if behind), then say how far behind they are."""
        with self.tables():
            status = self._status(name)
            if status.lag > 0:
                self.orch.read_models.catch_up()
                status = self._status(name)
            return status

    def _status(self, name: str) -> ViewFreshness:
        found = {s.name: s for s in self.orch.read_models.runner.status()}[name]
        return ViewFreshness(position=found.position, head=found.head, lag=found.lag)

    def projections(self) -> list[ProjectionStatusView]:
        with self.tables():
            statuses = self.orch.read_models.runner.status()
        return [ProjectionStatusView(name=s.name, position=s.position, head=s.head, lag=s.lag) for s in statuses]

    def command_page(self, query: CommandPageQuery) -> tuple[ViewFreshness, list[CommandRow]]:
        with self.tables():
            fresh = self.freshness("commands")
            return fresh, self.orch.read_models.queries.command_page(query)

    def tasks_of_entity(self, ref: EntityRef, running_only: bool) -> EntityTasksView:
        queries = self.orch.read_models.queries
        with self.tables():
            fresh = self.freshness("entity_tasks")
            rows = queries.tasks_for_entity(ref, running_only=running_only)
            busy = queries.has_running_tasks(ref)
        return EntityTasksView(
            entity_type=ref.type.value, entity_id=ref.id, has_running_tasks=busy, freshness=fresh, tasks=rows
        )

    def entities_of_task(self, task_id: str) -> TaskEntitiesView:
        with self.tables():
            fresh = self.freshness("entity_tasks")
            rows = self.orch.read_models.queries.entities_for_task(task_id)
        return TaskEntitiesView(task_id=task_id, freshness=fresh, entities=rows)

    def active_tasks(self) -> ActiveTasksView:
        with self.tables():
            fresh = self.freshness("active_tasks")
            rows = self.orch.read_models.queries.active_tasks()
        return ActiveTasksView(freshness=fresh, tasks=rows)

    def commands_alive_since(self, since: str) -> list[tuple[str, str | None]]:
        """(accepted, ended) of root commands not ended before `since`: the console's chart."""
        with self.tables():
            return self.orch.read_models.queries.root_commands_alive_since(since)

    def scrape(self) -> tuple[list[ProjectionStatus], list[tuple[str, str, int]], list[tuple[str, int]]]:
        """What /metrics reads: the lag as found, then (caught up) commands and tasks in flight by status."""
        read_models = self.orch.read_models
        with self.tables():
            statuses = read_models.runner.status()
            if any(s.lag for s in statuses):
                read_models.catch_up()  # as every read of the read models here does
            return statuses, read_models.queries.root_command_counts(), read_models.queries.active_task_counts()

    # ---- commands ------------------------------------------------------------------------------

    def submit(self, flow: str, params: dict[str, Any], command_id: UUID | None) -> SubmitResult:
        with self.aggregates(), self.tables():  # validation asks the read models what runs on an entity
            return self.orch.submit(flow, params, command_id)

    def submit_many(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[SubmitResult | OrchestratorError]:
        with self.aggregates(), self.tables():
            return self.orch.submit_many(list(requests))

    def cancel(self, command_id: str, reason: str) -> CancelResult:
        with self.aggregates():
            return self.orch.request_cancel(command_id, reason)

    def retry(self, command_id: str) -> RetryResult:
        with self.aggregates(), self.tables():
            return self.orch.retry(command_id)

    def terminate(self, command_id: str, reason: str) -> TerminateResult:
        with self.aggregates():
            return self.orch.terminate(command_id, reason)

    def command(self, command_id: str, version: int | None = None) -> CommandView:
        with self.aggregates():
            command = self.orch.command(command_id, version=version)
            return CommandView.of(command, self.orch.store.events_of(command.id))

    def history(self, command_id: str, at_version: int | None) -> CommandHistory:
        with self.aggregates():
            return as_document(command_history(self.readonly, command_id, at_version), HISTORY_KIND)

    # ---- inventory -----------------------------------------------------------------------------

    def entity(self, ref: EntityRef) -> InventoryItemView | None:
        with self.aggregates():
            found = self.orch.entity(ref)
            return None if found is None else InventoryItemView.of(found)

    def locks(self, ref: EntityRef | None) -> list[LockView]:
        with self.aggregates():
            if ref is not None:
                found = self.orch.entity(ref)
                return LockView.all_of([found] if found is not None else [])
            return LockView.all_of(self.orch.inventory())

    def inventory(self, include_removed: bool) -> list[InventoryItemView]:
        with self.aggregates():
            return [InventoryItemView.of(e) for e in self.orch.inventory() if include_removed or not e.removed]

    # ---- inspection and flows ------------------------------------------------------------------

    def inspect(self, with_agent: bool) -> InspectionReport:
        """`bootstrap.inspect`, step for step, on the read-only store this process keeps open."""
        with self.aggregates():
            pools = sorted({c.pool_id for c in self.readonly.in_flight_commands()} | {DEFAULT_POOL})
            agent = read_agent_tasks(self.readonly, pools, self.agent_state) if with_agent else NOT_CONSULTED
            return as_document(inspect_store(self.readonly, agent), INSPECTION_KIND)

    @staticmethod
    def flows() -> list[FlowView]:
        from orchestrator.flows import FLOWS

        return [
            FlowView(name=name, description=f.description, parameters=f.params_model.model_json_schema())
            for name, f in FLOWS.items()
        ]
