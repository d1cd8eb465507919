"""Finding commands that other processes accepted, or asked to cancel, since the last look.

It reads only the log's Accepted and CancelRequested notifications after its
position (through the library's notification log reader), so a cycle with
nothing new costs one query.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from orchestrator.domain.commands import RootCommand
from orchestrator.engine.writer import CommandWriter
from orchestrator.store.event_store import EventStore

# What other processes write to a command: its acceptance, a cancel, an operator's termination.
TOPICS = [get_topic(RootCommand.Accepted), get_topic(RootCommand.CancelRequested), get_topic(RootCommand.Terminated)]


class Discovery:
    def __init__(self, store: EventStore, held: dict[UUID, RootCommand], writer: CommandWriter) -> None:
        self.store = store
        self.held = held
        self.writer = writer
        self.position = 0

    def run(self) -> None:
        head = self.store.head()
        if head <= self.position:
            return
        for page in self.store.notifications(after=self.position, topics=TOPICS, stop=head):
            for n in page:
                self._seen(UUID(str(n.originator_id)), n)
        self.position = head

    def _seen(self, command_id: UUID, notification: Any) -> None:
        held = self.held.get(command_id)
        if held is None and notification.originator_version == 1:
            # A new command: its Accepted event is all there is to it (if another process
            # wrote more since, our first save of it conflicts and the writer reads it again).
            created: Any = self.store.app.mapper.to_domain_event(notification)
            self.held[command_id] = created.mutate(None)
        elif held is None or held.version < notification.originator_version:
            self.writer.reload(command_id)
