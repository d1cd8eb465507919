"""Fencing for the agent server: the highest fence seen, and who may still act (docs/agent-protocol.md).

The highest fence is kept in `<state>.fence.json` beside the agent's state
file, so a restart does not forget it. A call whose epoch is lower, or equal
with another engine id, is refused (`StaleFenceError`, answered with -32001).
A call that raises the epoch waits for the calls of the older epoch still
being served, so no call of a deposed engine takes effect after its
successor's first call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from orchestrator.agent.protocol import Fence
from orchestrator.errors import OrchestratorError
from orchestrator.testing.private_files import write_private_file


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

    @contextlib.contextmanager
    def admit(self, fence: Fence | None) -> Iterator[None]:
        """Serve a call under this fence, or refuse it (StaleFenceError). Unfenced calls pass."""
        if fence is None:
            yield
            return
        with self._changed:
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
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()
