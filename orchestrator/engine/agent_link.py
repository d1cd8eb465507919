"""The engine's link to one agent: every call counted, trouble met with backoff.

An unreachable or babbling agent makes the engine wait, with a backoff that
grows to a limit; nothing is ever decided from silence or garbage. The link
says so once when trouble starts, quietly while it lasts, and once when the
agent is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from orchestrator.agent.port import AgentPort
from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.errors import AgentError

log = logging.getLogger("orchestrator.engine")
T = TypeVar("T")
FIRST_BACKOFF = 0.5


class AgentLink:
    def __init__(
        self,
        agent: AgentPort,
        *,
        poll_interval: float,
        backoff_max: float,
        clock: Callable[[], float],
        pool: str = DEFAULT_POOL,
        observer: EngineObserver = NO_OBSERVER,
    ) -> None:
        self.agent = agent
        self.pool = pool
        self.observer = observer
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.clock = clock
        self.calls = 0
        self.trouble = ""
        self._backoff = 0.0
        self._retry_at = 0.0

    def ready(self) -> bool:
        """False while backing off after a failed call."""
        return self.clock() >= self._retry_at

    @property
    def retry_at(self) -> float:
        return self._retry_at

    def call(self, method: Callable[..., T], *args: object) -> T:
        """Make one call to the agent; an AgentError is recorded (backoff) and raised again."""
        self.calls += 1
        started = time.monotonic()
        name = getattr(method, "__name__", "call")
        try:
            result = method(*args)
        except AgentError as exc:
            self.observer.agent_called(self.pool, name, time.monotonic() - started, type(exc).__name__)
            self._failed(exc)
            raise
        self.observer.agent_called(self.pool, name, time.monotonic() - started, None)
        if self.trouble:
            log.warning("agent is back after: %s", self.trouble)
        self._backoff = 0.0
        self.trouble = ""
        return result

    def _failed(self, exc: AgentError) -> None:
        first = not self.trouble
        self._backoff = min(self.backoff_max, max(self.poll_interval, self._backoff * 2 or FIRST_BACKOFF))
        self._retry_at = self.clock() + self._backoff
        self.trouble = str(exc)
        (log.warning if first else log.info)("%s; deciding nothing, retrying in %.1fs", exc, self._backoff)
