"""Which of the engine's commits wait for the disk, and that the stores do as they are asked.

A commit that does not wait may be lost with the database's machine (never with the
engine): the engine records that way only what nothing acts on before a later commit
that waits (which flushes it too). The poll's record of ended tasks (the agent still
holds them until they are cleared, after the end action) and the record of a clearing
(made again if lost) do not wait; the ids of created tasks, a decided stop, a failure
whose tasks are reverted next, and an end action (its tasks are cleared next) do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.model import EntityRef, EntityType, VmStatus
from orchestrator.store.event_store import EventStore
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import PG_DSN, fast_settings, run_until_idle

Saved = list[tuple[frozenset[str], bool]]  # (event kinds of one transaction, whether it waited)


@contextmanager
def recorded_saves(monkeypatch: pytest.MonkeyPatch) -> Iterator[Saved]:
    """Every engine transaction's event kinds and its `flush`, as the engine asked the store."""
    saves: Saved = []
    original = EventStore.save

    def save(store: EventStore, *aggregates: Any, **kwargs: Any) -> int:
        kinds = frozenset(type(e).__qualname__.split(".")[-1] for a in aggregates for e in a.pending_events)
        if (kwargs.get("stamp") or {}).get("phase") != "client":
            saves.append((kinds, bool(kwargs.get("flush", True))))
        return original(store, *aggregates, **kwargs)

    monkeypatch.setattr(EventStore, "save", save)
    yield saves


def _waits(saves: Saved, kind: str) -> set[bool]:
    return {flush for kinds, flush in saves if kind in kinds}


def test_a_successful_command_waits_for_the_disk_where_the_agent_acts_next(
    orch: Orchestrator, agent: SimulatedAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(1, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    with recorded_saves(monkeypatch) as saves:
        run_until_idle(orch, agent)
    assert _waits(saves, "TasksSubmitted") == {True}, "created tasks' ids: the next calls act on them"
    assert _waits(saves, "TasksEnded") == {False}, "the agent still holds the ended tasks"
    assert _waits(saves, "Ended") == {True}, "its tasks are cleared next"
    assert _waits(saves, "TasksCleared") == {False}, "a lost clearing is made again"


def test_a_failure_whose_tasks_are_reverted_waits_before_the_revert(
    orch: Orchestrator, agent: SimulatedAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(1, 1)
    agent.backend.set_faults(FaultConfig(fail_verbs=["create_volume"], fail_share=0.0))
    orch.submit("HibernateVm", {"vm_id": "vm-0001"})
    with recorded_saves(monkeypatch) as saves:
        run_until_idle(orch, agent)
    assert _waits(saves, "TasksEnded") == {True}, "the reverts act on the failure just decided"


def test_a_decided_stop_waits_for_the_disk(
    orch: Orchestrator, agent_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orch.seed(1, 1)
    slow = SimulatedAgent.open(agent_state, task_seconds=60)
    try:
        orch.submit("HibernateVm", {"vm_id": "vm-0001"})
        with recorded_saves(monkeypatch) as saves:
            run_until_idle(orch, slow, settings=fast_settings(zombie_seconds=0.3))
    finally:
        slow.close()
    assert _waits(saves, "StopsDecided") == {True}, "the stop is made on the strength of it"


def test_the_sqlite_store_commits_as_asked(tmp_path: Path, agent_state: Path) -> None:
    with Orchestrator.open(f"sqlite:///{tmp_path / 'store.db'}", agent_state=agent_state, create=True) as orch:
        _commits_as_asked(orch)


def _commits_as_asked(orch: Orchestrator) -> None:
    orch.seed(1, 1)
    pool = orch.store.recorder.datastore.pool
    for flush, expected in ((False, 1), (True, 2), (False, 1)):  # NORMAL, FULL
        vm = orch.entity(EntityRef(EntityType.VM, "vm-0001"))
        assert vm is not None
        vm.set_status(VmStatus.DOWN if vm.status is VmStatus.UP else VmStatus.UP)  # type: ignore[attr-defined]
        orch.store.save(vm, flush=flush)
        conn = pool.get_connection(is_writer=True)
        try:
            cursor = conn.cursor()
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == expected
        finally:
            pool.put_connection(conn)


def test_the_postgresql_function_commits_as_asked(pg_schema: str, agent_state: Path) -> None:
    with Orchestrator.open(f"{PG_DSN}?schema={pg_schema}", agent_state=agent_state, create=True):
        pass
    call = (
        f'SELECT * FROM "{pg_schema}".orchestrator_record_events(%s::uuid[], %s::bigint[], %s::text[],'
        " %s::bytea[], %s::text[], %s::text[], NULL, NULL, NULL, %s::uuid[], %s::bigint[], '5s', %s)"
    )
    with psycopg.connect(PG_DSN) as conn:
        for flush, expected in ((False, "off"), (True, "on")):
            with conn.transaction(force_rollback=True):
                conn.execute(call, ([uuid4()], [1], ["t:T"], [b"{}"], [], [], [], [], flush))
                row = conn.execute("SHOW synchronous_commit").fetchone()
                assert row is not None and row[0] == expected


def test_any_bytes_and_topic_text_are_recorded_as_given(orch: Orchestrator) -> None:
    """The recorder writes the events' arrays itself (PostgreSQL): quotes, backslashes, braces, commas
    and every byte value come back as they went in, on both stores."""
    from eventsourcing.persistence import StoredEvent

    recorder = orch.store.recorder
    states = [bytes(range(256)), b'{"a": "\\\\\\"x\\""}', b"", b"\\x00", b"{,}"]
    topics = ['odd:"quoted"', "back\\\\slash:T", "brace{,}:T", "plain:T", "ünïcode:T"]
    ids = [uuid4() for _ in states]
    recorder.insert_events([StoredEvent(i, 1, t, s) for i, t, s in zip(ids, topics, states, strict=True)])
    read = orch.store.dialect.events_after(recorder, [(i, 0) for i in ids])
    by_id = {str(e.originator_id): (e.topic, bytes(e.state)) for e in read}
    assert by_id == {str(i): (t, s) for i, t, s in zip(ids, topics, states, strict=True)}
