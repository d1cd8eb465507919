"""A unit of work over the inventory: the entities one transaction reads and changes.

Flows see it through the `InventoryAccess` protocol (orchestrator/flows/base.py);
whoever commits the unit saves `touched()` together with the commands it changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import ENTITY_CLASSES, InventoryEntity
from orchestrator.domain.model import EntityRef, entity_aggregate_id
from orchestrator.store.event_store import EventStore


class InventoryUnit:
    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.entities: dict[EntityRef, InventoryEntity] = {}

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Load many entities with one query (cached ones are brought up to date in bulk)."""
        wanted = {entity_aggregate_id(r): r for r in refs if r not in self.entities and r.type in ENTITY_CLASSES}
        for ident, aggregate in self.store.load_aggregates(list(wanted)).items():
            assert isinstance(aggregate, InventoryEntity)
            self.entities[wanted[ident]] = aggregate

    def get(self, ref: EntityRef) -> InventoryEntity | None:
        if ref not in self.entities:
            if ref.type not in ENTITY_CLASSES:
                return None
            ident = entity_aggregate_id(ref)
            entity = self.store.load_aggregates([ident]).get(ident)  # one round trip, snapshot and events
            if entity is None:
                return None
            assert isinstance(entity, InventoryEntity)
            self.entities[ref] = entity
        return self.entities[ref]

    def add(self, entity: InventoryEntity) -> None:
        self.entities[entity.ref] = entity

    def discard(self, entity: InventoryEntity) -> None:
        self.entities.pop(entity.ref, None)

    def touched(self) -> list[InventoryEntity]:
        return [e for e in self.entities.values() if e.pending_events]

    def ids(self) -> list[UUID]:
        return [e.id for e in self.entities.values()]

    def release_locks(self, command: RootCommand) -> None:
        for use in command.entities:
            entity = self.get(use.ref)
            if entity is not None:
                entity.release_lock(str(command.id))
