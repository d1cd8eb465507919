"""The engine lease: one engine at a time executes the commands of a store.

It is a store-wide lock of the engine's process (orchestrator/store/sqlite.py,
postgres.py): a `flock` on a lock file keyed by the database file itself on
SQLite, a session advisory lock held by a connection of its own on PostgreSQL.
Both go with the process that holds them, however it dies, so a standby engine
(another `orchestrator run` on the same store) takes over a dead engine's work
at once, starting with recovery.
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
