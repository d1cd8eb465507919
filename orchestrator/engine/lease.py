"""The engine lease: one engine at a time executes the commands of a store.

On SQLite it is an exclusive `flock` on `<store>.engine.lock`; on PostgreSQL
a session advisory lock held by a dedicated connection. Both vanish with the
process that holds them, however it dies, so a standby engine (another
`orchestrator run` on the same store) takes over a dead engine's work at once,
starting with recovery.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.errors import EngineBusyError, StoreError
from orchestrator.store import StoreConfig, create_private_file


class EngineLease:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._fd: int | None = None
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if self.config.kind == "sqlite":
            assert self.config.path is not None
            path = Path(f"{self.config.path}.engine.lock")
            create_private_file(path)
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True
        try:
            conn = psycopg.connect(**self.config.pg_conninfo(), autocommit=True)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.config.redacted}: {self.config.scrub(str(exc))}") from None
        key = zlib.crc32(f"orchestrator-engine:{self.config.schema_name}".encode())
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

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
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
