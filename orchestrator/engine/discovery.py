"""Finding what other processes wrote since the last look, and handing it to the pools' workers.

It reads only the notifications that concern the engine after its position
(through the library's notification log reader): commands accepted, cancels
and terminations (another process's writes to a command), and storage pools
whose agent changed. A cycle costs one query (the head and what is new, together).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import StoragePool
from orchestrator.store.event_store import EventStore

ACCEPTED = get_topic(RootCommand.Accepted)
COMMAND_TOPICS = [ACCEPTED, get_topic(RootCommand.CancelRequested), get_topic(RootCommand.Terminated)]
POOL_TOPICS = [get_topic(StoragePool.Registered), get_topic(StoragePool.AgentChanged)]
Hand = Callable[[str, RootCommand | UUID], None]  # (pool, a new command or the id of one to read again)


class Discovery:
    def __init__(
        self, store: EventStore, hand: Hand, pool_changed: Callable[[str], None], lock: threading.RLock
    ) -> None:
        self.store = store
        self.hand = hand
        self.pool_changed = pool_changed
        self.lock = lock
        self.position = 0
        self.pools: dict[UUID, str] = {}  # the pool of each command handed over

    def run(self) -> None:
        with self.lock:
            head, seen = self.store.news(after=self.position, topics=[*COMMAND_TOPICS, *POOL_TOPICS])
            if head <= self.position:
                return
            self.position = head
            arrivals = [self._arrival(n) for n in seen]
        for arrival in arrivals:
            if arrival is not None:
                self.hand(*arrival)

    def _arrival(self, n: Notification) -> tuple[str, RootCommand | UUID] | None:
        if n.topic in POOL_TOPICS:
            pool: Any = self.store.app.mapper.to_domain_event(n)
            self.pool_changed(str(getattr(pool, "entity_id", "")) or self._pool_id(n))
            return None
        command_id = UUID(str(n.originator_id))
        if n.topic == ACCEPTED and n.originator_version == 1:
            # A new command: its Accepted event is all there is to it (if another process
            # wrote more since, its first save conflicts and the writer reads it again).
            created: Any = self.store.app.mapper.to_domain_event(n)
            command: RootCommand = created.mutate(None)
            self.pools[command_id] = command.pool_id
            return command.pool_id, command
        pool_id = self.pools.get(command_id)
        if pool_id is None:
            known = self.store.get(command_id)
            if not isinstance(known, RootCommand):
                return None
            pool_id = self.pools[command_id] = known.pool_id
        return pool_id, command_id

    def known_pools(self) -> set[str]:
        """Every storage pool registered in the store."""
        with self.lock:
            found = [self.store.get(i) for i in self.store.originators([POOL_TOPICS[0]])]
        return {str(getattr(pool, "entity_id", "")) for pool in found} - {""}

    def _pool_id(self, n: Notification) -> str:
        pool = self.store.get(UUID(str(n.originator_id)))
        return str(getattr(pool, "entity_id", ""))
