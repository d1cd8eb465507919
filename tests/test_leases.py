"""Pool leases in the store (SQLite and PostgreSQL): epochs, takeovers, and the write fence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.domain.inventory import Vm
from orchestrator.errors import LeaseLostError
from orchestrator.store.leases import EngineRow, LeaseTable, WriteFence
from tests.conftest import events_table, store_sql, wait_for


def row(engine_id: str) -> EngineRow:
    return EngineRow(engine_id, "host", os.getpid(), 0.0, 0.0, None, None)


def test_an_epoch_only_grows_and_a_pool_is_taken_only_when_it_is_free(orch: Orchestrator) -> None:
    one, two = orch.store.dialect.leases(), orch.store.dialect.leases()
    try:
        assert one.acquire("e1", "p", 30) == 1
        assert two.acquire("e2", "p", 30) is None, "held by a live engine whose lease has not expired"
        assert one.acquire("e1", "p", 30) == 2, "an engine taking its own pool again starts a new epoch"
        one.release("e1", [("p", 2)])
        assert two.acquire("e2", "p", 0.5) == 3, "a released pool is free"
        assert one.beat(row("e1"), {"p": 2}, 30) == set(), "a renewal of a lost lease renews nothing"
        assert two.beat(row("e2"), {"p": 3}, 0.5) == {"p"}
        wait_for(lambda: one.acquire("e1", "p", 30) is not None, timeout=10, what="e2's lease to expire")
        snapshot = one.snapshot("e1")
        (lease,) = snapshot.leases
        assert (lease.pool, lease.engine_id, lease.epoch) == ("p", "e1", 4)
        assert snapshot.holder("p") == "e1"
    finally:
        one.close()
        two.close()


def test_a_dead_engines_pools_are_taken_at_once(orch: Orchestrator) -> None:
    one, two = orch.store.dialect.leases(), orch.store.dialect.leases()
    try:
        one.claim_liveness("e1")
        one.beat(row("e1"), {}, 30)
        assert one.acquire("e1", "p", 30) == 1
        if orch.config.kind == "postgresql":
            assert two.snapshot("e2").dead == frozenset(), "e1's connection holds its liveness lock"
        one.close()  # as its process dies: its connection goes
        wait_for(lambda: two.snapshot("e2").dead == {"e1"}, timeout=10, what="e1 to be seen dead")
        assert two.acquire("e2", "p", 30, dead=["e1"]) == 2
    finally:
        one.close()
        two.close()


def test_a_deposed_engines_write_records_nothing(orch: Orchestrator, store_url: str) -> None:
    table: LeaseTable = orch.store.dialect.leases()
    try:
        assert table.acquire("e1", "p", 30) == 1
        orch.store.save(Vm.register("vm-a", name="a", status="up", disk_ids=[]), fence=WriteFence("p", "e1", 1))
        count = store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}")[0][0]
        assert table.acquire("e2", "p", 30, dead=["e1"]) == 2
        with pytest.raises(LeaseLostError, match="no longer holds the lease of pool p at epoch 1"):
            orch.store.save(Vm.register("vm-b", name="b", status="up", disk_ids=[]), fence=WriteFence("p", "e1", 1))
        assert store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}")[0][0] == count
        orch.store.save(Vm.register("vm-c", name="c", status="up", disk_ids=[]), fence=WriteFence("p", "e2", 2))
        assert store_sql(store_url, f"SELECT COUNT(*) FROM {events_table(store_url)}")[0][0] == count + 1
    finally:
        table.close()


def test_the_sqlite_engine_lock_is_the_files_whatever_path_opens_it(tmp_path: Path) -> None:
    """A second engine through a symlink to the same database finds the first one's lock."""
    from orchestrator.engine.lease import EngineLease
    from orchestrator.store import parse_store_url

    real = tmp_path / "real" / "store.db"
    real.parent.mkdir()
    Orchestrator.open(f"sqlite:///{real}", agent_state=tmp_path / "a.agent", create=True).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    first = EngineLease(parse_store_url(f"sqlite:///{real}"))
    second = EngineLease(parse_store_url(f"sqlite:///{link}"))
    assert first.try_acquire()
    try:
        assert not second.try_acquire(), "the same file through a symlink is the same store"
    finally:
        first.release()
    assert second.try_acquire()
    second.release()
