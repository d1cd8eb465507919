"""This engine's pool leases: taken, kept alive, checked before acting, shared fairly, given up.

A lease (orchestrator/store/leases.py) lets one engine act for one storage pool
under an epoch. `PoolLeases` holds this engine's: a heartbeat thread renews them
every third of the lease timeout on a connection of its own, and each lease is
valid here until a margin before the moment the database would let it expire
(counted from before the renewal was sent, on this process's monotonic clock,
which runs on while the process is stopped). So an engine frozen past its lease
finds, on waking, that it holds nothing, and does nothing more; and should it
act in the instant before it notices, its store write is refused inside its
transaction (the write fence) and its agent call by the agent (the agent fence).

`share()` is the fair split: with P pools and E live engines, each takes up to
floor(P/E) pools, then up to ceil(P/E) when no engine has fewer than floor;
one that holds more than floor(P/E) while another has fewer gives up the
difference. An engine pinned to pools (`run --pools`) takes just those, and the
others leave them to it while it lives.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.agent.protocol import Fence
from orchestrator.errors import LeaseLostError, StoreError
from orchestrator.store.leases import EngineRow, LeaseSnapshot, LeaseTable, WriteFence

log = logging.getLogger("orchestrator.engine")

VALIDITY_SHARE = 0.8  # a lease is trusted here for this share of the timeout after a renewal is sent


@dataclass
class HeldLease:
    pool: str
    epoch: int
    valid_until: float  # on the monotonic clock
    generation: int  # of the lease connection it was taken on: a new connection means it may be gone


@dataclass
class LeasePlan:
    take: list[str] = field(default_factory=list)
    give: list[str] = field(default_factory=list)


def _spread(engine_id: str, pool: str) -> str:
    """An order of pools that differs from engine to engine, so that engines starting together
    reach for different pools first."""
    return hashlib.sha256(f"{engine_id}/{pool}".encode()).hexdigest()


def share(
    snapshot: LeaseSnapshot,
    me: str,
    pinned: Sequence[str] | None,
    pools: Sequence[str],
    timeout: float,
    holding: Collection[str] | None = None,
) -> LeasePlan:
    """Which pools this engine should take now, and which it should give up.

    `holding`: the pools this engine runs now (by default, those the database says it holds);
    one the database still gives it but that it no longer runs (it lost it) is free to it."""
    live = snapshot.live_engines(timeout)
    held_by: dict[str, list[str]] = {}
    for pool in pools:
        holder = snapshot.holder(pool)
        if holder is not None:
            held_by.setdefault(holder, []).append(pool)
    mine = [p for p in held_by.get(me, []) if holding is None or p in holding]
    taken = {p for e, ps in held_by.items() for p in ps if e != me} | set(mine)
    free = sorted((p for p in pools if p not in taken), key=lambda p: _spread(me, p))
    if pinned is not None:
        return LeasePlan(take=[p for p in free if p in pinned])
    reserved = {p for e in live if e.pinned is not None and e.engine_id != me for p in e.pinned}
    shared = [p for p in pools if p not in reserved]
    sharers = {e.engine_id for e in live if e.pinned is None} | {me}
    low, high = len(shared) // len(sharers), math.ceil(len(shared) / len(sharers))
    held_by[me] = mine
    counts = {e: len([p for p in held_by.get(e, []) if p in shared]) for e in sharers}
    short = sum(max(0, low - n) for e, n in counts.items() if e != me)
    limit = high if short == 0 else max(low, counts[me])
    take = [p for p in free if p in shared][: max(0, limit - counts[me])]
    # Give up what others are short of (down to the least share), and in any case what is beyond
    # the highest share: another engine below the highest takes it in its next turn.
    excess = max(min(counts[me] - low, short) if counts[me] > low else 0, counts[me] - high)
    ours = sorted((p for p in mine if p in shared), key=lambda p: _spread(me, p), reverse=True)
    give: list[str] = ours[: max(0, excess)]
    give += [p for p in mine if p in reserved]  # a pinned engine came for it
    return LeasePlan(take=take, give=give)


@dataclass(frozen=True)
class PoolLease:
    """The lease one pool's worker acts under: checked before it acts, named by every write and agent call."""

    leases: PoolLeases
    pool: str
    epoch: int

    def check(self) -> None:
        self.leases.check(self.pool, self.epoch)

    def fence(self) -> WriteFence:
        return WriteFence(self.pool, self.leases.engine_id, self.epoch)

    @property
    def agent_fence(self) -> Fence:
        return Fence(engine_id=self.leases.engine_id, epoch=self.epoch)


class PoolLeases:
    """This engine's leases, renewed by a heartbeat thread; `check` before acting, `fence` for writes."""

    def __init__(
        self,
        table: LeaseTable,
        engine: EngineRow,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.engine = engine
        self.timeout = timeout
        self.clock = clock
        self.held: dict[str, HeldLease] = {}
        self.health: Callable[[], dict[str, Any]] = dict  # how each pool's agent answers (the engine sets it)
        self.store_trouble = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def engine_id(self) -> str:
        return self.engine.engine_id

    @property
    def renew_interval(self) -> float:
        return self.timeout / 3

    # ---- checks, from the workers -----------------------------------------------------------------

    def epoch(self, pool: str) -> int | None:
        with self._lock:
            lease = self.held.get(pool)
        return lease.epoch if lease is not None and self.clock() < lease.valid_until else None

    def check(self, pool: str, epoch: int) -> None:
        """Raise LeaseLostError unless this engine still holds `pool` at `epoch`, here and now."""
        if self.epoch(pool) != epoch:
            raise LeaseLostError(
                f"engine {self.engine_id} no longer holds the lease of pool {pool} at epoch {epoch} "
                f"({self.store_trouble or 'it expired or another engine took it over'})"
            )

    # ---- taking and giving up ---------------------------------------------------------------------

    def acquire(self, pool: str, dead: frozenset[str] = frozenset()) -> int | None:
        """Take a pool (from nobody, from an expired lease, or from a dead engine): its new epoch."""
        sent = self.clock()
        epoch = self.table.acquire(self.engine_id, pool, self.timeout, dead)
        if epoch is not None:
            with self._lock:
                self.held[pool] = HeldLease(pool, epoch, sent + self.timeout * VALIDITY_SHARE, self.table.generation)
        return epoch

    def release(self, pool: str) -> None:
        with self._lock:
            lease = self.held.pop(pool, None)
        if lease is not None:
            self.table.release(self.engine_id, [(pool, lease.epoch)])

    def forget(self, pool: str) -> None:
        """A lease found lost: drop it here (the database already gave it to another, or will)."""
        with self._lock:
            self.held.pop(pool, None)

    def snapshot(self) -> LeaseSnapshot:
        return self.table.snapshot(self.engine_id)

    # ---- the heartbeat ----------------------------------------------------------------------------

    def beat(self) -> list[str]:
        """Renew every lease; the pools lost (renewed by nobody: another engine has them now)."""
        with self._lock:
            held = {p: lease.epoch for p, lease in self.held.items()}
        sent = self.clock()
        kept = self.table.beat(self.engine, held, self.timeout, self.health())
        lost = []
        with self._lock:
            for pool, epoch in held.items():
                lease = self.held.get(pool)
                if lease is None or lease.epoch != epoch:
                    continue
                # Taken on an earlier connection: while it was down, this engine looked dead and
                # its pools may have been taken; it gives them up and takes them again as new.
                if pool in kept and lease.generation == self.table.generation:
                    lease.valid_until = sent + self.timeout * VALIDITY_SHARE
                else:
                    lease.valid_until = 0.0  # no longer trusted: its worker stops at its next check
                    lost.append(pool)
        return lost

    def start(self) -> None:
        """Say this engine is alive (its heartbeat row, its liveness lock), and keep saying it."""
        if self._thread is not None:
            return
        self.table.claim_liveness(self.engine_id)
        self.beat()
        self._thread = threading.Thread(target=self._beating, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beating(self) -> None:
        while not self._stop.wait(self.renew_interval):
            try:
                self.beat()
            except StoreError as exc:
                if not self.store_trouble:
                    log.warning(
                        "cannot renew the leases (%s); acting on none of their pools from %.1fs on unless the "
                        "store answers; retrying",
                        exc,
                        self.timeout * VALIDITY_SHARE,
                    )
                self.store_trouble = str(exc)
                continue
            if self.store_trouble:
                log.warning("the store answers again; leases renewed")
                self.store_trouble = ""

    def stop(self) -> None:
        """Stop renewing, and give every lease up (the engine ends cleanly)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self.held.clear()
        try:
            self.table.stopped(self.engine_id)
        except StoreError as exc:
            log.warning("could not give the leases up (%s); they expire in %.0fs", exc, self.timeout)
        self.table.close()
