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
from orchestrator.agent.protocol import StaleEpochError
from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.engine.observer import NO_OBSERVER, EngineObserver
from orchestrator.errors import AgentError, LeaseLostError

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
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.agent = agent
        self.guard = guard  # raises when this engine may no longer act for the pool (its lease is gone)
        self.pool = pool
        self.observer = observer
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.clock = clock
        self.calls = 0
        self.trouble = ""
        self.errors = 0  # consecutive failed calls
        self.answered_at: float | None = None  # wall clock of the last answer
        self.latency = 0.0  # seconds the last answer took
        self._backoff = 0.0
        self._retry_at = 0.0

    def ready(self) -> bool:
        """False while backing off after a failed call."""
        return self.clock() >= self._retry_at

    @property
    def retry_at(self) -> float:
        return self._retry_at

    def call(self, method: Callable[..., T], *args: object) -> T:
        """Make one call to the agent; an AgentError is recorded (backoff) and raised again.

        The guard goes first: an engine that lost its lease makes no further call."""
        self.guard()
        self.calls += 1
        started = time.monotonic()
        name = getattr(method, "__name__", "call")
        try:
            result = method(*args)
        except StaleEpochError as exc:
            self.observer.agent_called(self.pool, name, time.monotonic() - started, type(exc).__name__)
            raise LeaseLostError(f"the agent of pool {self.pool} refused this engine's fence: {exc}") from None
        except AgentError as exc:
            self.observer.agent_called(self.pool, name, time.monotonic() - started, type(exc).__name__)
            self._failed(exc)
            raise
        self.latency = time.monotonic() - started
        self.answered_at = time.time()
        self.errors = 0
        self.observer.agent_called(self.pool, name, self.latency, None)
        if self.trouble:
            log.warning("agent is back after: %s", self.trouble)
        self._backoff = 0.0
        self._retry_at = 0.0  # an answer ends the backoff: whatever waits for this agent may go on now
        self.trouble = ""
        return result

    def health(self) -> dict[str, object]:
        """How this agent answers, for `orchestrator agents` (kept with the engine's heartbeat)."""
        return {
            "agent": self.agent.name,
            "answered_at": self.answered_at,
            "latency_ms": round(self.latency * 1000, 2),
            "consecutive_errors": self.errors,
            "trouble": self.trouble,
        }

    def _failed(self, exc: AgentError) -> None:
        self.errors += 1
        first = not self.trouble
        self._backoff = min(self.backoff_max, max(self.poll_interval, self._backoff * 2 or FIRST_BACKOFF))
        self._retry_at = self.clock() + self._backoff
        self.trouble = str(exc)
        (log.warning if first else log.info)("%s; deciding nothing, retrying in %.1fs", exc, self._backoff)
