"""Live updates: one thread watches the log head; every console stream is woken when it moves.

The watcher reads the log head every half second (one indexed query, whatever
the number of consoles). When it moved, it reads the new notifications once and
tells each subscriber which root commands changed (at most MAX_IDS, else
"many"), and counts the tasks that ended, per minute, for the console's chart
(the last hour is read back from the log at start, so the chart survives a
restart). `/api/v1/events` streams these as server-sent events, at most one a
second per stream; a page then fetches the parts of itself that changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eventsourcing.persistence import Notification

from orchestrator.api.gateway import StoreGateway
from orchestrator.domain.commands import RootCommand

log = logging.getLogger("orchestrator.api.changes")

COMMAND_TOPIC = RootCommand.Accepted.__module__ + ":RootCommand."
TASKS_ENDED_TOPIC = COMMAND_TOPIC + "TasksEnded"
MAX_IDS = 200
PAGE = 1000
WINDOW_MINUTES = 60
BACKFILL_LIMIT = 200_000  # notifications read back at start for the chart, at most
HEARTBEAT_SECONDS = 15.0
MIN_GAP_SECONDS = 1.0  # one event a second per stream at most: changes in between are merged


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    commands: set[str] = field(default_factory=set)
    many: bool = False


class ChangeFeed:
    """Watches the log of one store for the live parts of the console."""

    def __init__(self, gateway: StoreGateway, interval: float = 0.5) -> None:
        self.gateway = gateway
        self.interval = interval
        self.head = 0
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        self._ended_by_minute: dict[int, int] = {}
        self._thread = threading.Thread(target=self._watch, name="orchestrator-change-feed", daemon=True)

    # ---- the watcher thread ----------------------------------------------------------------------

    def start(self) -> None:
        self.head = self.gateway.head()
        self._thread.start()

    def stop(self) -> None:
        self.closing.set()
        with self._lock:
            for sub in self._subscribers:
                sub.loop.call_soon_threadsafe(sub.wake.set)
        if self._thread.is_alive():
            self._thread.join(5)

    def _watch(self) -> None:
        try:
            self._backfill(self.head)
        except Exception as exc:  # the chart starts empty; live updates still work
            log.warning("could not read the last hour of the log: %s", self.gateway.scrub(str(exc)))
        while not self.closing.wait(self.interval):
            try:
                self._poll()
            except Exception as exc:  # the store may be down for a while: try again next tick
                log.warning("live updates: the store did not answer: %s", self.gateway.scrub(str(exc)))

    def _poll(self) -> None:
        head = self.gateway.head()
        if head <= self.head:
            return
        changed: set[str] = set()
        many = False
        position = self.head
        while position < head and not self.closing.is_set():
            page = self._select(position, head)
            if not page:
                break
            for n in page:
                if n.topic.startswith(COMMAND_TOPIC):
                    if len(changed) < MAX_IDS:
                        changed.add(str(n.originator_id))
                    else:
                        many = True
                    if n.topic == TASKS_ENDED_TOPIC:
                        self._count_ended(n)
            position = page[-1].id
        self.head = head
        self._publish(changed, many)

    def _select(self, after: int, stop: int) -> Sequence[Notification]:
        log_ = self.gateway.orch.store.app.notification_log
        return log_.select(start=after, limit=PAGE, stop=stop, inclusive_of_start=False)

    def _backfill(self, head: int) -> None:
        """Count the tasks ended in the last hour, reading the log backwards from head."""
        since = time.time() - WINDOW_MINUTES * 60
        upper = head
        read = 0
        while upper > 0 and read < BACKFILL_LIMIT and not self.closing.is_set():
            lower = max(0, upper - PAGE)
            page = self._select(lower, upper)
            read += len(page) or PAGE
            oldest = None
            for n in page:
                stamp = self._timestamp(n) if n.id == page[0].id or n.topic == TASKS_ENDED_TOPIC else None
                if n.id == page[0].id:
                    oldest = stamp
                if n.topic == TASKS_ENDED_TOPIC:
                    self._count_ended(n)
            if oldest is not None and oldest < since:
                return
            upper = lower

    def _decode(self, n: Notification) -> dict[str, object]:
        mapper = self.gateway.orch.store.app.mapper
        state = n.state
        if mapper.cipher:
            state = mapper.cipher.decrypt(state)
        if mapper.compressor:
            state = mapper.compressor.decompress(state)
        data = json.loads(state)
        return data if isinstance(data, dict) else {}

    def _timestamp(self, n: Notification) -> float | None:
        stamp = self._decode(n).get("timestamp")
        text = stamp.get("_data_") if isinstance(stamp, dict) else stamp
        try:
            return datetime.fromisoformat(str(text)).timestamp()
        except ValueError:
            return None

    def _count_ended(self, n: Notification) -> None:
        data = self._decode(n)
        stamp = data.get("timestamp")
        text = stamp.get("_data_") if isinstance(stamp, dict) else stamp
        try:
            minute = int(datetime.fromisoformat(str(text)).timestamp() // 60)
        except ValueError:
            return
        ended = data.get("ended")
        count = len(ended) if isinstance(ended, list) else 0
        with self._lock:
            self._ended_by_minute[minute] = self._ended_by_minute.get(minute, 0) + count
            oldest = int(time.time() // 60) - WINDOW_MINUTES - 1
            for old in [m for m in self._ended_by_minute if m < oldest]:
                del self._ended_by_minute[old]

    def _publish(self, changed: set[str], many: bool) -> None:
        with self._lock:
            for sub in self._subscribers:
                sub.many = sub.many or many or len(sub.commands | changed) > MAX_IDS
                if not sub.many:
                    sub.commands |= changed
                sub.loop.call_soon_threadsafe(sub.wake.set)

    # ---- what the console reads ----------------------------------------------------------------

    def tasks_ended_per_minute(self, now: float | None = None) -> list[tuple[datetime, int]]:
        """The last WINDOW_MINUTES minutes, oldest first: (minute, tasks ended in it)."""
        current = int((now or time.time()) // 60)
        with self._lock:
            counts = dict(self._ended_by_minute)
        return [
            (datetime.fromtimestamp(m * 60, UTC), counts.get(m, 0))
            for m in range(current - WINDOW_MINUTES + 1, current + 1)
        ]

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: `hello` with the head, then `change` whenever the log moved."""
        sub = _Subscriber(asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._subscribers.append(sub)
        try:
            yield "retry: 2000\n\n"
            yield _event("hello", {"head": self.head})
            while not self.closing.is_set():
                try:
                    await asyncio.wait_for(sub.wake.wait(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if self.closing.is_set():
                    return
                with self._lock:
                    sub.wake.clear()
                    commands, many = sorted(sub.commands), sub.many
                    sub.commands, sub.many = set(), False
                yield _event("change", {"head": self.head, "commands": commands, "many": many})
                await asyncio.sleep(MIN_GAP_SECONDS)
        finally:
            with self._lock:
                self._subscribers.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
