"""Batched projection writes give exactly what one event at a time gives.

The runner coalesces a batch's writes in memory and groups the rest by
lifecycle rank to send few large statements; this compares rebuilds in
batches of 1000 and of 7 events with a rebuild one event per transaction,
after a workload with successes, agent failures, refusals, cancellation, a
crash mid-submission and a termination.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.bootstrap import Orchestrator
from orchestrator.crashpoints import CRASH_EXIT_CODE
from orchestrator.store.tables import Cursor
from orchestrator.testing import FaultConfig, SimulatedAgent
from projections.read_models import ReadModel
from projections.runner import REBUILD_SUFFIX
from tests.conftest import cli_env, engine_args, run_cli, run_until_idle


def _rows(cursor: Cursor, table: str, keys: str) -> list[tuple[object, ...]]:
    cursor.execute(f"SELECT * FROM {table} ORDER BY {keys}")
    return [tuple(r) for r in cursor.fetchall()]


def test_batched_rebuild_equals_event_by_event(
    orch: Orchestrator, agent: SimulatedAgent, agent_state: Path, store_url: str
) -> None:
    orch.seed(8, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.submit("CreateTemplate", {"vm_id": "vm-0002", "name": "a", "target_storage_domain_id": "sd-2"})
    orch.submit("CreateTemplate", {"vm_id": "vm-0002", "name": "b"})
    run_until_idle(orch, agent)
    agent.backend.set_faults(FaultConfig(fail_ordinals=[8], refuse_verbs=["copy_image"]))
    orch.submit("HibernateVm", {"vm_id": "vm-0003"})
    orch.submit("CreateTemplate", {"vm_id": "vm-0004", "name": "refused"})
    cancelled = orch.submit("CreateSnapshot", {"vm_id": "vm-0005"})
    orch.request_cancel(cancelled.command_id)
    run_until_idle(orch, agent)
    agent.backend.set_faults(FaultConfig())
    orch.submit("RemoveVm", {"vm_id": "vm-0006"})
    died = run_cli(
        *engine_args(store_url, agent_state, "--timeout", "30"),
        env=cli_env(ORCHESTRATOR_CRASH_AT="after_agent_id_recorded:1", ORCHESTRATOR_SUBMIT_BATCH="1"),
    )
    assert died.returncode == CRASH_EXIT_CODE, died.stderr
    orch.submit("CreateSnapshot", {"vm_id": "vm-0007"})
    run_until_idle(orch, agent)
    terminated = orch.submit("RemoveVm", {"vm_id": "vm-0008"})
    orch.terminate(terminated.command_id, "its agent is gone")  # tasks never submitted: they leave at once
    run_until_idle(orch, agent)

    runner = orch.read_models.runner
    head = runner.head()
    for projection in runner.projections:
        compared = 0
        for stop in range(5, head + 1, 9):  # many points in the log, where the views are not empty
            event_by_event = _build(orch, projection, stop, batch=1)
            # one batch: every row is written by the batch that inserts it (coalesced in memory);
            # batches of 7: rows of earlier batches are changed by grouped statements too
            for batch in (1000, 7):
                built = _build(orch, projection, stop, batch=batch)
                assert built == event_by_event, f"{projection.name} differs at event {stop}, batches of {batch}"
            compared += sum(len(rows) for rows in event_by_event.values())
        assert compared > 0, "the views held rows at the points compared"


def _build(orch: Orchestrator, projection: ReadModel, stop: int, batch: int) -> dict[str, list[tuple[object, ...]]]:
    """Fresh tables holding the events up to `stop`, applied `batch` events per transaction."""
    runner = orch.read_models.runner
    tables = orch.read_models.tables
    with tables.write() as cur:
        for table in projection.tables:
            cur.execute(f"DROP TABLE IF EXISTS {table}{REBUILD_SUFFIX}")
        for statement in projection.create_statements(REBUILD_SUFFIX):
            cur.execute(statement)
    position = 0
    while position < stop:
        with tables.write() as cur:
            notifications = runner._select(cur, position, batch, stop)
            if notifications:
                runner._apply(cur, notifications, [(projection, position)], REBUILD_SUFFIX)
        if not notifications:
            break
        position = notifications[-1][0]
    with tables.read() as cur:
        return {t: _rows(cur, t + REBUILD_SUFFIX, projection.key_columns(t)) for t in projection.tables}
