"""The fair share of pools between engines (orchestrator/engine/leases.py `share`), played out."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.engine.leases import share
from orchestrator.store.leases import EngineRow, LeaseRow, LeaseSnapshot

NOW = 1_000.0
TIMEOUT = 10.0


def engine(engine_id: str, *, pinned: Sequence[str] | None = None, beat_age: float = 1.0) -> EngineRow:
    return EngineRow(engine_id, "host", 1, 0.0, NOW - beat_age, tuple(pinned) if pinned else None, None)


class Cluster:
    """Lease rows and engines as the database would hold them, with engines taking turns to rebalance."""

    def __init__(self, pools: Sequence[str], engines: Sequence[EngineRow]) -> None:
        self.pools = list(pools)
        self.engines = list(engines)
        self.holders: dict[str, str | None] = {p: None for p in pools}
        self.dead: set[str] = set()

    def snapshot(self) -> LeaseSnapshot:
        rows = [LeaseRow(p, h, 1, 0.0, NOW + 5 if h else NOW - 1) for p, h in self.holders.items()]
        return LeaseSnapshot(NOW, rows, self.engines, frozenset(self.dead))

    def turn(self, engine_id: str) -> None:
        me = next(e for e in self.engines if e.engine_id == engine_id)
        plan = share(self.snapshot(), engine_id, me.pinned, self.pools, TIMEOUT)
        for pool in plan.give:
            assert self.holders[pool] == engine_id
            self.holders[pool] = None
        for pool in plan.take:
            assert self.snapshot().holder(pool) is None, f"{engine_id} took {pool}, held by {self.holders[pool]}"
            self.holders[pool] = engine_id

    def settle(self, rounds: int = 6) -> dict[str, int]:
        for _ in range(rounds):
            for e in self.engines:
                if e.engine_id not in self.dead:
                    self.turn(e.engine_id)
        counts = {e.engine_id: 0 for e in self.engines if e.engine_id not in self.dead}
        for holder in self.holders.values():
            if holder is not None and holder not in self.dead:
                counts[holder] += 1
        return counts

    def stable(self) -> bool:
        before = dict(self.holders)
        self.settle(rounds=2)
        return before == self.holders


def test_one_engine_takes_every_pool() -> None:
    cluster = Cluster(["a", "b", "c"], [engine("e1")])
    assert cluster.settle() == {"e1": 3}


def test_an_engine_that_joins_gets_a_fair_share_and_then_nothing_moves() -> None:
    cluster = Cluster(["a", "b", "c"], [engine("e1")])
    cluster.settle()
    cluster.engines.append(engine("e2"))
    assert sorted(cluster.settle().values()) == [1, 2]
    assert cluster.stable()


def test_four_pools_three_engines_none_starves() -> None:
    cluster = Cluster(["a", "b", "c", "d"], [engine("e1")])
    cluster.settle()
    cluster.engines += [engine("e2"), engine("e3")]
    assert sorted(cluster.settle().values()) == [1, 1, 2]
    assert cluster.stable()
    assert all(h is not None for h in cluster.holders.values()), "every pool has an engine"


def test_the_pools_of_a_dead_engine_are_taken_by_the_others() -> None:
    cluster = Cluster(["a", "b", "c", "d", "e", "f"], [engine("e1"), engine("e2"), engine("e3")])
    assert sorted(cluster.settle().values()) == [2, 2, 2]
    cluster.dead.add("e2")
    counts = cluster.settle()
    assert sorted(counts.values()) == [3, 3] and set(counts) == {"e1", "e3"}


def test_a_silent_engine_counts_for_nothing_and_its_expired_leases_are_free() -> None:
    cluster = Cluster(["a", "b"], [engine("e1"), engine("e2", beat_age=TIMEOUT + 1)])
    cluster.holders["b"] = None  # e2's lease of b expired with its heartbeats
    assert cluster.settle() == {"e1": 2, "e2": 0}


def test_a_pinned_engine_takes_its_pools_and_the_others_leave_them() -> None:
    cluster = Cluster(["a", "b", "c"], [engine("e1")])
    cluster.settle()
    cluster.engines.append(engine("pin", pinned=["c"]))
    cluster.settle()
    assert cluster.holders["c"] == "pin"
    assert {cluster.holders["a"], cluster.holders["b"]} == {"e1"}
    assert cluster.stable()


def test_many_engines_few_pools_leave_the_rest_standing_by() -> None:
    cluster = Cluster(["a"], [engine("e1"), engine("e2"), engine("e3")])
    counts = cluster.settle()
    assert sorted(counts.values()) == [0, 0, 1]
    assert cluster.stable()


def test_no_engine_keeps_more_than_its_share_when_the_others_have_their_least() -> None:
    """Five pools, three engines: one that took three before the others came gives one up ([1, 2, 2]),
    though nobody is below the least share (the bench's three engines waited on this split)."""
    pools = ["default", "p1", "p2", "p3", "p4"]
    cluster = Cluster(pools, [engine("e1"), engine("e2"), engine("e3")])
    cluster.holders.update({"default": "e1", "p1": "e1", "p2": "e1", "p3": "e2", "p4": "e3"})
    assert sorted(cluster.settle().values()) == [1, 2, 2]
    assert cluster.stable()
