"""Fencing for the agent server: the highest fence seen, and who may still act (docs/agent-protocol.md).

The highest fence is kept in `<state>.fence.json` beside the agent's state
file, so a restart does not forget it. A call whose epoch is lower, or equal
with another engine id, is refused (`StaleFenceError`, answered with -32001).
A call that raises the epoch waits for the calls of the older epoch still
being served, so no call of a deposed engine takes effect after its
successor's first call.

The keeper also remembers, in memory and bounded (the last `LOG_LIMIT`), every
fenced call it admitted and every one it refused as stale, in the order it
decided them (`FenceRecord`; `Simulator.fence_log` answers them): the agent's
own evidence that no deposed engine acted after its successor.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from orchestrator.agent.protocol import Fence
from orchestrator.errors import OrchestratorError
from orchestrator.private_files import write_private_file

LOG_LIMIT = 100_000  # fence decisions kept in memory (the oldest go first)


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """One fenced call the keeper decided: admitted, or refused as stale; `at` is wall time."""

    method: str
    engine_id: str
    epoch: int
    at: float
    admitted: bool


def fence_path_for(state: Path) -> Path:
    return state.with_name(state.name + ".fence.json")


class StaleFenceError(Exception):
    """A call under a fence older than one the agent has seen: its engine was deposed."""

    def __init__(self, fence: Fence, highest: Fence) -> None:
        super().__init__(
            f"stale epoch: engine {fence.engine_id} at epoch {fence.epoch}, but engine {highest.engine_id} "
            f"holds epoch {highest.epoch}"
        )
        self.highest = highest


class FenceKeeper:
    """The highest fence the agent has seen, kept in a JSON file (or in memory, without a path)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._changed = threading.Condition()
        self._in_flight = 0  # fenced calls being served, all of the current epoch
        self._rising: Fence | None = None  # a higher fence waiting for the current epoch's calls to end
        self._log: deque[FenceRecord] = deque(maxlen=LOG_LIMIT)
        self._logged = 0  # decisions ever logged (those beyond the limit were dropped)
        self.current: Fence | None = self._load()

    def _load(self) -> Fence | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return Fence.model_validate_json(self.path.read_text())
        except (OSError, ValidationError) as exc:
            raise OrchestratorError(
                f"fence file {self.path} is not readable ({exc.__class__.__name__}); remove it"
            ) from None

    def _newer(self, fence: Fence) -> bool:
        return self.current is None or fence.epoch > self.current.epoch

    def _refuse_if_stale(self, fence: Fence) -> None:
        highest = self._rising or self.current  # once a newer epoch waits, the older one is deposed
        if highest is None or fence.epoch > highest.epoch:
            return
        if fence.epoch < highest.epoch or fence.engine_id != highest.engine_id:
            raise StaleFenceError(fence, highest)

    def _record(self, method: str, fence: Fence, *, admitted: bool) -> None:
        """Log one decision (called holding the condition's lock, so the log is in decision order)."""
        self._log.append(FenceRecord(method, fence.engine_id, fence.epoch, time.time(), admitted))
        self._logged += 1

    def log(self) -> tuple[list[FenceRecord], int]:
        """The decisions kept, oldest first, and how many older ones were dropped."""
        with self._changed:
            return list(self._log), self._logged - len(self._log)

    @contextlib.contextmanager
    def admit(self, fence: Fence | None, method: str = "") -> Iterator[None]:
        """Serve a call under this fence, or refuse it (StaleFenceError); either way it is logged.
        Unfenced calls pass, unlogged."""
        if fence is None:
            yield
            return
        with self._changed:
            try:
                self._decide(fence)
            except StaleFenceError:
                self._record(method, fence, admitted=False)
                raise
            self._record(method, fence, admitted=True)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def _decide(self, fence: Fence) -> None:
        """Admit this fence (raising the epoch once the older calls end) or raise StaleFenceError."""
        self._refuse_if_stale(fence)
        if self._newer(fence):
            self._rising = fence
            try:
                while self._in_flight:  # let the older epoch's calls finish before it is deposed
                    self._changed.wait()
                self._refuse_if_stale(fence)  # a newer one may have come while we waited
                if self._newer(fence):
                    if self.path is not None:
                        write_private_file(self.path, fence.model_dump_json() + "\n")
                    self.current = fence
            finally:
                if self._rising is fence or (self._rising and not self._newer(self._rising)):
                    self._rising = None
                self._changed.notify_all()
