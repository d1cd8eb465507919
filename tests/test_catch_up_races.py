"""A catch-up that reads and builds its batch before taking the read models' write lock.

On SQLite that lock is the file's only write lock, so a catch-up builds its
batch first and holds the lock only to write it (`builds_catch_up_unlocked`).
Whatever another process writes in between must not be lost or doubled: here
another process catches up, or prunes, between the build and the write, and
the read models must still equal a rebuild from the log. The path is the same
code on both stores (PostgreSQL builds under its lock by default), so both run
it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import projections.runner as runner_module
from orchestrator.bootstrap import Orchestrator
from orchestrator.retention import PruneRequest, prune
from orchestrator.testing import SimulatedAgent
from projections.runner import ReadModelRunner
from tests.conftest import invariants_hold, run_until_idle
from tests.test_prune import READ_MODEL_TABLES


@contextmanager
def between_build_and_write(
    monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, meanwhile: Callable[[], object]
) -> Iterator[list[int]]:
    """`meanwhile` runs once, right after the first batch built outside the lock; yields the sizes of
    the batches built (so a test can see that the first was built again)."""
    built: list[int] = []
    real = ReadModelRunner._build_catch_up
    monkeypatch.setattr(orch.read_models.tables, "builds_catch_up_unlocked", True)

    def build(runner: ReadModelRunner, cur: Any, positions: dict[str, int], batch_size: int) -> Any:
        batch = real(runner, cur, positions, batch_size)
        if runner is not orch.read_models.runner:
            return batch  # the other process's
        built.append(batch.span.events)
        if len(built) == 1:
            meanwhile()
        return batch

    monkeypatch.setattr(ReadModelRunner, "_build_catch_up", build)
    yield built


def forget_read_models(orch: Orchestrator) -> None:
    """The read models emptied and set back to the log's start: the next catch-up reads it all."""
    with orch.read_models.tables.write() as cur:
        cur.execute("UPDATE proj_tracking SET position = 0")
        for table in READ_MODEL_TABLES:
            cur.execute(f"DELETE FROM {table}")


def assert_equal_to_a_rebuild(orch: Orchestrator) -> None:
    runner = orch.read_models.runner
    for projection in runner.projections:
        result = runner.verify(projection)
        assert result.ok, f"{projection.name}: {result.differences[:5]}"


def assert_whole(orch: Orchestrator, agent_state: Path, ids: list[Any]) -> None:
    """The read models equal a rebuild and list exactly these commands; every invariant holds."""
    assert_equal_to_a_rebuild(orch)
    assert sorted(str(r.command_id) for r in orch.read_models.queries.list_commands()) == sorted(map(str, ids))
    invariants_hold(orch, agent_state, expected_commands=ids)


def rows_of_each_batch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each catch-up batch writes from now on, in order, as they are written."""
    written: list[int] = []
    real = runner_module._CatchUpBatch.write

    def write(batch: Any, cur: Any, tables: Any) -> None:
        written.append(batch.writes.rows_written)
        real(batch, cur, tables)

    monkeypatch.setattr(runner_module._CatchUpBatch, "write", write)
    return written


def finished(orch: Orchestrator, agent: SimulatedAgent, vms: int) -> list[Any]:
    orch.seed(vms, 2)
    ids = [orch.submit("RemoveVm", {"vm_id": f"vm-{n:04d}"}).command_id for n in range(1, vms + 1)]
    run_until_idle(orch, agent)
    return ids


def test_a_catch_up_by_another_process_in_between_is_not_applied_twice(
    monkeypatch: pytest.MonkeyPatch, store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    ids = finished(orch, agent, 3)
    forget_read_models(orch)
    other = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    try:
        with between_build_and_write(monkeypatch, orch, other.read_models.catch_up) as built:
            head = orch.store.head()
            orch.read_models.catch_up()
    finally:
        other.close()
    assert built[0] == head and built[1:] == [0], "the batch built before the other's catch-up was built again"
    assert_whole(orch, agent_state, ids)


def test_a_prune_in_between_does_not_bring_the_pruned_commands_back(
    monkeypatch: pytest.MonkeyPatch,
    store_url: str,
    orch: Orchestrator,
    agent: SimulatedAgent,
    agent_state: Path,
    tmp_path: Path,
) -> None:
    old = finished(orch, agent, 3)
    forget_read_models(orch)
    other = Orchestrator.open(store_url, agent_state=agent_state, create=False)

    def prune_all() -> None:
        report = prune(other.store, other.read_models, PruneRequest(datetime.now(UTC), tmp_path / "old.jsonl"))
        assert report.commands == len(old)

    try:
        with between_build_and_write(monkeypatch, orch, prune_all) as built:
            orch.read_models.catch_up()
    finally:
        other.close()
    assert len(built) >= 2 and built[1] < built[0], "the batch built before the prune was built again"
    assert orch.read_models.queries.list_commands() == []
    assert_equal_to_a_rebuild(orch)
    orch.store.forget()
    invariants_hold(orch, agent_state, expected_commands=old, pruned=old)


def test_a_long_backlog_is_written_in_batches_of_bounded_rows(
    monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    """Under a lock that stops the engine, a backlog's batches (whose rows do not cancel out) shrink
    to about LOCKED_ROWS rows each, so no accept waits long; the read models still come out whole."""
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    monkeypatch.setattr(orch.read_models.tables, "builds_catch_up_unlocked", True)
    monkeypatch.setattr(runner_module, "LOCKED_ROWS", 15)
    monkeypatch.setattr(runner_module, "MIN_BATCH", 5)
    written = rows_of_each_batch(monkeypatch)
    orch.read_models.runner.catch_up(batch_size=60)
    # The first batch is the largest (nothing is known yet); the later ones write about 15 rows,
    # give or take the rows of a few events (an Accepted writes dozens, an inventory event none).
    later = sorted(written[1:])
    assert len(later) > 3 and max(later) < written[0] and later[len(later) // 2] <= 2 * 15, written
    assert_equal_to_a_rebuild(orch)
    invariants_hold(orch, agent_state, expected_commands=ids)
