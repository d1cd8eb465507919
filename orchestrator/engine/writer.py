"""Recording what the engine learned, so that a conflict on one command never changes another.

Each phase of a cycle describes what it learned of a command as a `Change`: a
function that applies those facts to the command (and to the inventory, for end
actions) through the command's own methods, and that only acts on what is
still true of the command (a task still planned, still running...). The writer
applies the changes to the commands it holds and saves them together. When the
store refuses the transaction because another process changed one of them (a
cancel, a lock taken on a shared entity), the writer re-reads every command of
that transaction and applies each one's change again to its fresh copy: what
the agent said is a fact whatever else happened, and the fresh copy decides
what it means.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.model import EntityRef
from orchestrator.engine.lifecycle import log_saved, pending_of
from orchestrator.errors import LeaseLostError
from orchestrator.store.event_store import EventStore
from orchestrator.store.leases import WriteFence
from orchestrator.store.unit_of_work import InventoryUnit

log = logging.getLogger("orchestrator.engine")
Change = Callable[[RootCommand, InventoryUnit], None]
Prefetch = Callable[[Sequence[RootCommand]], Iterable[EntityRef]]
# Whether a transaction's commit must wait for the disk, given the commands it records: it must
# when the engine's next agent call acts on what it records (see `apply`).
Durability = bool | Callable[[Sequence[RootCommand]], bool]
SAVE_BATCH = 1000  # commands per transaction (psycopg can hang on one huge pipelined insert, psycopg#685)
ATTEMPTS = 10  # re-reads after conflicts before leaving the change to the next cycle


class CommandWriter:
    """Applies and saves changes to the commands it holds; every store access under the engine's store lock."""

    def __init__(
        self,
        store: EventStore,
        held: dict[UUID, RootCommand],
        stamp: Callable[[], dict[str, Any]],
        lock: threading.RLock | None = None,
        fence: Callable[[], WriteFence | None] = lambda: None,
    ) -> None:
        self.store = store
        self.held = held
        self.stamp = stamp
        self.fence = fence  # the lease every write is made under (checked by the store, in the transaction)
        self.lock = lock or threading.RLock()  # one per engine: its pools' workers share the store
        self.transactions = 0
        self.events = 0
        self.conflicts = 0

    def apply(
        self,
        changes: Mapping[UUID, Change],
        *,
        batch: int = SAVE_BATCH,
        prefetch: Prefetch | None = None,
        flush: Durability = True,
    ) -> set[UUID]:
        """Apply and save these changes, `batch` commands per transaction; the ids saved.

        An exception raised by a change discards every change of its transaction (the
        commands are read again) and propagates.

        `flush`: whether each commit waits for the disk (or a function of the commands it
        records that says so). A commit that does not may be lost with the database's
        machine, never with the engine; that is safe for a record nothing acts on until a
        later commit that waits (which flushes it too): what the agent still holds
        (ended tasks, until they are cleared after the end action) or what is written again
        (a clearing). A record the next agent call acts on (ids of created tasks, a stop,
        an end action before its tasks are cleared) waits.
        """
        ids = [i for i in changes if i in self.held]
        saved: set[UUID] = set()
        for start in range(0, len(ids), batch):
            part = ids[start : start + batch]
            if self._apply_part(part, changes, prefetch, flush):
                saved.update(part)
        return saved

    def _apply_part(
        self, ids: list[UUID], changes: Mapping[UUID, Change], prefetch: Prefetch | None, flush: Durability
    ) -> bool:
        with self.lock:
            return self._apply_locked(ids, changes, prefetch, flush)

    def _apply_locked(
        self, ids: list[UUID], changes: Mapping[UUID, Change], prefetch: Prefetch | None, flush: Durability
    ) -> bool:
        optimistic = True  # the inventory as cached here, verified by the save (see InventoryUnit)
        for _ in range(ATTEMPTS):
            commands = [self.held[i] for i in ids if i in self.held]
            unit = InventoryUnit(self.store, optimistic=optimistic)
            try:
                if prefetch is not None:
                    unit.prefetch(prefetch(commands))
                for command in commands:
                    changes[command.id](command, unit)
                pending = [c for c in commands if c.pending_events]
                touched = unit.touched()
                if not pending and not touched:
                    return True
                saving = pending_of(pending)
                durable = flush if isinstance(flush, bool) else flush(pending)
                self.events += self.store.save(
                    *pending, *touched, stamp=self.stamp(), fence=self.fence(), reads=unit.reads(), flush=durable
                )
            except IntegrityError as exc:
                self.conflicts += 1
                log.info("store refused a write (%s); re-reading what it involved", str(exc).splitlines()[0][:200])
                self._discard(commands, unit)
                continue
            except LeaseLostError:
                # The worker is let go with everything it held: forget, read nothing (the store may be gone).
                self.store.forget([*unit.ids(), *(c.id for c in commands)])
                raise
            except Exception:
                self._discard(commands, unit)
                if self._was_stale(unit):  # a change (an end action) failed on an outdated copy: again, on fresh ones
                    optimistic = False
                    continue
                raise
            except BaseException:
                self._discard(commands, unit)
                raise
            self.transactions += 1
            log_saved(saving)
            return True
        log.warning("%d command(s) kept changing under the engine; the next cycle tries again", len(ids))
        return False

    def _was_stale(self, unit: InventoryUnit) -> bool:
        """Whether an entity the unit took from the cache had moved on in the store (read afresh now:
        an end action that raised on current copies raised for itself, and is not run again here)."""
        if not unit.unverified:
            return False
        fresh = self.store.load_aggregates(list(unit.unverified))
        return any(fresh[i].version != v if i in fresh else True for i, v in unit.unverified.items())

    def _discard(self, commands: Sequence[RootCommand], unit: InventoryUnit) -> None:
        """Forget the unsaved changes: read the commands and entities of this transaction again."""
        self.store.forget(unit.ids())
        for command in commands:
            self.reload(command.id)

    def reload(self, command_id: UUID) -> RootCommand | None:
        """The command as recorded now, held again (or let go when it is no longer in flight)."""
        with self.lock:
            command = self.store.fresh(command_id)
        if not isinstance(command, RootCommand) or not command.in_flight:
            self.held.pop(command_id, None)
            return None
        self.held[command_id] = command
        return command
