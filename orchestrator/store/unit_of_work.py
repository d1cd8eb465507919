"""A unit of work over the inventory: the entities one transaction reads and changes.

Flows see it through the `InventoryAccess` protocol (orchestrator/flows/base.py);
whoever commits the unit saves `touched()` together with the commands it changed,
and hands the store `reads()`.

An optimistic unit takes the entities this process has cached as they are, without
asking the store whether another process changed them since (a round trip per read,
three of them in a RemoveVm's accept). The transaction that records the unit's changes
verifies them instead: an entity it writes conflicts on its version (the store refuses
a version that is taken), and one it only read is checked by the store, under the
write's lock, to be still at the version read (`reads()`). Either way a stale copy makes
the store refuse the transaction, and the caller reads afresh and decides again. A
refusal decided on unverified copies (a lock another process released meanwhile) is
decided again on fresh ones before it is given (`unverified`).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import ENTITY_CLASSES, InventoryEntity
from orchestrator.domain.model import EntityRef, entity_aggregate_id
from orchestrator.store.event_store import EventStore


class InventoryUnit:
    def __init__(self, store: EventStore, *, optimistic: bool = False) -> None:
        self.store = store
        self.optimistic = optimistic
        self.entities: dict[EntityRef, InventoryEntity] = {}
        self.unverified: dict[UUID, int] = {}  # taken from the cache as it was: id -> version read

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Load many entities with one query (cached ones are brought up to date in bulk, or taken as
        they are by an optimistic unit)."""
        wanted = {entity_aggregate_id(r): r for r in refs if r not in self.entities and r.type in ENTITY_CLASSES}
        if self.optimistic:
            for ident, aggregate in self.store.cached(list(wanted)).items():
                self._take_cached(wanted.pop(ident), aggregate)
        if wanted:
            for ident, aggregate in self.store.load_aggregates(list(wanted)).items():
                assert isinstance(aggregate, InventoryEntity)
                self.entities[wanted[ident]] = aggregate

    def get(self, ref: EntityRef) -> InventoryEntity | None:
        if ref not in self.entities:
            if ref.type not in ENTITY_CLASSES:
                return None
            ident = entity_aggregate_id(ref)
            cached = self.store.cached([ident]).get(ident) if self.optimistic else None
            if cached is not None:
                self._take_cached(ref, cached)
                return self.entities[ref]
            entity = self.store.load_aggregates([ident]).get(ident)  # one round trip, snapshot and events
            if entity is None:
                return None
            assert isinstance(entity, InventoryEntity)
            self.entities[ref] = entity
        return self.entities[ref]

    def _take_cached(self, ref: EntityRef, aggregate: object) -> None:
        assert isinstance(aggregate, InventoryEntity)
        self.entities[ref] = aggregate
        self.unverified[aggregate.id] = aggregate.version

    def add(self, entity: InventoryEntity) -> None:
        self.entities[entity.ref] = entity

    def discard(self, entity: InventoryEntity) -> None:
        self.entities.pop(entity.ref, None)

    def touched(self) -> list[InventoryEntity]:
        return [e for e in self.entities.values() if e.pending_events]

    def reads(self) -> dict[UUID, int]:
        """Entities taken unverified and not written: the store checks their versions when it saves
        (a written one conflicts on its version by itself)."""
        read = self.unverified
        return {e.id: read[e.id] for e in self.entities.values() if e.id in read and not e.pending_events}

    def ids(self) -> list[UUID]:
        return [e.id for e in self.entities.values()]

    def release_locks(self, command: RootCommand) -> None:
        for use in command.entities:
            entity = self.get(use.ref)
            if entity is not None:
                entity.release_lock(str(command.id))
