"""Pool leases in the store: which engine runs which storage pool, under which epoch.

Two tables of the store (created with the event tables, see sqlite.py and postgres.py):

- `orchestrator_leases`: one row per pool ever leased: the engine holding it (NULL
  once released), its epoch and when it expires, on the database's clock. The epoch
  only ever grows: each engine that takes a pool, from nobody or from an engine
  whose lease expired, takes it with the epoch above the last.
- `orchestrator_engines`: one row per engine that is running or ran: its host, pid,
  the pools it is pinned to, and its last heartbeat.

Every write transaction of an engine names the lease it acts under (`WriteFence`),
and the event recorder checks, inside that transaction, that the lease is still
that engine's at that epoch (PostgreSQL: `FOR SHARE`, so that a takeover waits for
the write, and the write for the takeover); a deposed engine's write fails with
`LeaseLostError` and records nothing. Time is the database's: no two engines
need agree on a clock.

The SQL is written once with `?` placeholders; each database module supplies a
`LeaseConnection` (its own connection, apart from the event store's pool) and
the expression of its clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import LeaseLostError
from orchestrator.store.tables import Cursor

LEASES_TABLE = "orchestrator_leases"
ENGINES_TABLE = "orchestrator_engines"
STALE_ENGINE_SECONDS = 3600.0  # an engine row with no heartbeat for this long is not asked about


def lease_table_statements(leases: str, engines: str, real: str) -> list[str]:
    """The DDL of both tables (`real`: the database's double-precision type)."""
    return [
        f"CREATE TABLE IF NOT EXISTS {leases} (pool_id TEXT PRIMARY KEY, engine_id TEXT, epoch BIGINT NOT NULL, "
        f"acquired_at {real} NOT NULL, expires_at {real} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {engines} (engine_id TEXT PRIMARY KEY, host TEXT NOT NULL, "
        f"pid INTEGER NOT NULL, started_at {real} NOT NULL, heartbeat_at {real} NOT NULL, pinned TEXT, "
        f"stopped_at {real}, health TEXT)",
    ]


@dataclass(frozen=True)
class WriteFence:
    """The lease a write is made under: the recorder refuses the write unless it is still current."""

    pool: str
    engine_id: str
    epoch: int


def lease_lost(fence: WriteFence) -> LeaseLostError:
    return LeaseLostError(
        f"engine {fence.engine_id} no longer holds the lease of pool {fence.pool} at epoch {fence.epoch} "
        "(another engine took it over, or it expired); nothing was written"
    )


@dataclass(frozen=True)
class LeaseRow:
    pool: str
    engine_id: str | None
    epoch: int
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class EngineRow:
    engine_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    pinned: tuple[str, ...] | None
    stopped_at: float | None
    health: dict[str, Any] = field(default_factory=dict)  # per pool: how its agent answers this engine


@dataclass(frozen=True)
class LeaseSnapshot:
    """Every lease and engine as the database saw them at `now` (its clock); `dead`: engines known
    to be gone (their process, and with it their liveness lock), whatever their leases say."""

    now: float
    leases: list[LeaseRow]
    engines: list[EngineRow]
    dead: frozenset[str] = frozenset()

    def live_engines(self, timeout: float) -> list[EngineRow]:
        return [
            e
            for e in self.engines
            if e.stopped_at is None and self.now - e.heartbeat_at < timeout and e.engine_id not in self.dead
        ]

    def holder(self, pool: str) -> str | None:
        """The engine whose lease of `pool` has not expired, if any (a dead engine holds nothing)."""
        row = next((r for r in self.leases if r.pool == pool), None)
        if row is None or not row.engine_id or row.engine_id in self.dead or row.expires_at <= self.now:
            return None
        return row.engine_id


class LeaseConnection(Protocol):
    """One database's connection for the lease tables (not the event store's)."""

    now_sql: str  # the database's clock, in seconds since the epoch, as an SQL expression
    leases: str  # the tables' qualified names
    engines: str
    generation: int  # grows each time the connection is made again (the liveness lock was let go meanwhile)

    def transaction(self, *, write: bool = True) -> AbstractContextManager[Cursor]:
        """A short transaction (SQLite: BEGIN IMMEDIATE to write; PostgreSQL: reconnects if the link broke)."""

    def claim_liveness(self, engine_id: str) -> None:
        """Hold, for as long as this process and its connection live, a sign that the engine is alive."""

    def dead_among(self, engine_ids: Iterable[str], me: str) -> set[str]:
        """The engines (other than `me`) whose process is certainly gone, so their leases may be taken
        without waiting for them to expire."""

    def close(self) -> None: ...


class LeaseTable:
    """The lease operations, each one short transaction."""

    def __init__(self, connection: LeaseConnection) -> None:
        self.db = connection

    def close(self) -> None:
        self.db.close()

    @property
    def generation(self) -> int:
        return self.db.generation

    def beat(
        self, engine: EngineRow, held: dict[str, int], timeout: float, health: dict[str, Any] | None = None
    ) -> set[str]:
        """The engine's heartbeat (with how its agents answer), and its held leases extended by
        `timeout`: the pools still its own."""
        now, leases, engines = self.db.now_sql, self.db.leases, self.db.engines
        pinned = json.dumps(list(engine.pinned)) if engine.pinned is not None else None
        with self.db.transaction() as cur:
            cur.execute(
                f"INSERT INTO {engines} (engine_id, host, pid, started_at, heartbeat_at, pinned, health) "
                f"VALUES (?, ?, ?, {now}, {now}, ?, ?) ON CONFLICT (engine_id) DO UPDATE SET heartbeat_at = {now}, "
                "pinned = excluded.pinned, stopped_at = NULL, health = excluded.health",
                (engine.engine_id, engine.host, engine.pid, pinned, json.dumps(health or {})),
            )
            kept: set[str] = set()
            for pool, epoch in sorted(held.items()):
                cur.execute(
                    f"UPDATE {leases} SET expires_at = {now} + ? WHERE pool_id = ? AND engine_id = ? AND epoch = ? "
                    "RETURNING pool_id",
                    (timeout, pool, engine.engine_id, epoch),
                )
                if cur.fetchone() is not None:
                    kept.add(pool)
        return kept

    def claim_liveness(self, engine_id: str) -> None:
        self.db.claim_liveness(engine_id)

    def acquire(self, engine_id: str, pool: str, timeout: float, dead: Iterable[str] = ()) -> int | None:
        """Take a pool that nobody holds, whose lease expired, whose holder is dead, or that this engine
        held before (its old worker is gone), with the next epoch; None if another engine holds it."""
        now, leases = self.db.now_sql, self.db.leases
        gone = sorted(set(dead))
        taken_from_dead = f" OR l.engine_id IN ({', '.join('?' * len(gone))})" if gone else ""
        with self.db.transaction() as cur:
            cur.execute(
                f"INSERT INTO {leases} AS l (pool_id, engine_id, epoch, acquired_at, expires_at) "
                f"VALUES (?, ?, 1, {now}, {now} + ?) ON CONFLICT (pool_id) DO UPDATE SET "
                "engine_id = excluded.engine_id, epoch = l.epoch + 1, acquired_at = excluded.acquired_at, "
                f"expires_at = excluded.expires_at WHERE l.engine_id IS NULL OR l.expires_at <= {now} "
                f"OR l.engine_id = excluded.engine_id{taken_from_dead} RETURNING epoch",
                (pool, engine_id, timeout, *gone),
            )
            row = cur.fetchone()
        return int(row[0]) if row is not None else None

    def release(self, engine_id: str, leases_held: Iterable[tuple[str, int]]) -> None:
        """Let these pools go (their epochs stay: whoever takes one next takes the epoch above)."""
        with self.db.transaction() as cur:
            for pool, epoch in leases_held:
                cur.execute(
                    f"UPDATE {self.db.leases} SET engine_id = NULL, expires_at = {self.db.now_sql} "
                    "WHERE pool_id = ? AND engine_id = ? AND epoch = ?",
                    (pool, engine_id, epoch),
                )

    def stopped(self, engine_id: str) -> None:
        """The engine ended cleanly: its leases go and its row says so."""
        with self.db.transaction() as cur:
            cur.execute(
                f"UPDATE {self.db.leases} SET engine_id = NULL, expires_at = {self.db.now_sql} WHERE engine_id = ?",
                (engine_id,),
            )
            cur.execute(
                f"UPDATE {self.db.engines} SET stopped_at = {self.db.now_sql} WHERE engine_id = ?", (engine_id,)
            )

    def snapshot(self, me: str | None = None) -> LeaseSnapshot:
        """Every lease and engine; with `me`, the engines known dead are found too."""
        with self.db.transaction(write=False) as cur:
            cur.execute(f"SELECT {self.db.now_sql}")
            now = float(cur.fetchone()[0])
            cur.execute(f"SELECT pool_id, engine_id, epoch, acquired_at, expires_at FROM {self.db.leases}")
            leases = [LeaseRow(r[0], r[1], int(r[2]), float(r[3]), float(r[4])) for r in cur.fetchall()]
            cur.execute(
                "SELECT engine_id, host, pid, started_at, heartbeat_at, pinned, stopped_at, health "
                f"FROM {self.db.engines}"
            )
            engines = [_engine_row(r) for r in cur.fetchall()]
        # Engines that hold a lease or look alive by their heartbeat: one whose process is gone must
        # neither keep its pools until they expire nor count in the fair share meanwhile.
        holders = {r.engine_id for r in leases if r.engine_id and r.expires_at > now}
        holders |= {
            e.engine_id for e in engines if e.stopped_at is None and e.heartbeat_at > now - STALE_ENGINE_SECONDS
        }
        dead = frozenset(self.db.dead_among(holders, me)) if me is not None and holders - {me} else frozenset()
        return LeaseSnapshot(
            now, sorted(leases, key=lambda r: r.pool), sorted(engines, key=lambda e: e.started_at), dead
        )


def _engine_row(r: Any) -> EngineRow:
    pinned = tuple(json.loads(r[5])) if r[5] else None
    stopped = float(r[6]) if r[6] is not None else None
    health = json.loads(r[7]) if r[7] else {}
    return EngineRow(r[0], r[1], int(r[2]), float(r[3]), float(r[4]), pinned, stopped, health)
