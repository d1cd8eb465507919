"""The engine lease of a SQLite store: one engine at a time executes its commands.

It is a `flock` on a lock file keyed by the database file itself
(orchestrator/store/sqlite.py), so two paths to one file find the same lock.
It goes with the process that holds it, however it dies, so a standby engine
(another `orchestrator run` on the same store) takes over a dead engine's work
at once, starting with recovery. PostgreSQL stores have no such lease: their
engines share the pools through fenced per-pool leases (orchestrator/engine/leases.py,
docs/leases.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.errors import EngineBusyError
from orchestrator.store import StoreConfig, dialect_for

ENGINE_LOCK = "engine"


class EngineLease:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._lock = dialect_for(config).lock(ENGINE_LOCK)

    @property
    def held(self) -> bool:
        return self._lock.held

    def try_acquire(self) -> bool:
        return self._lock.try_acquire()

    def acquire(
        self, *, wait: bool, stop: Callable[[], bool] = lambda: False, on_wait: Callable[[], None] | None = None
    ) -> None:
        if self.try_acquire():
            return
        if not wait:
            raise EngineBusyError(
                f"another engine is running on {self.config.redacted}; stop it first, or run without "
                "--no-wait to stand by and take over when it stops"
            )
        if on_wait:
            on_wait()
        while not stop():
            time.sleep(0.2)
            if self.try_acquire():
                return
        raise EngineBusyError("stopped while waiting for the other engine to stop")

    def release(self) -> None:
        self._lock.release()
