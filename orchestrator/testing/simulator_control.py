"""Administering a pool's simulated agent, whether it runs in this process or as a server.

Tests, the demo, seeding and the invariants need what an agent's protocol does
not offer (its journal of every task, its storage without faults, its faults,
seeding): `SimulatorControl` is that, over the in-process backend or over the
simulator extension of a served agent (`SimulatorAdmin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from orchestrator.agent.port import StorageView, parse_storage
from orchestrator.testing.faults import FaultConfig
from orchestrator.testing.simulator_admin import SimulatorAdmin
from orchestrator.testing.simulator_backend import SimulatedAgentBackend


class SimulatorControl(Protocol):
    def journal(self) -> list[dict[str, Any]]:
        """Every task the agent was ever given, with what became of it."""

    def storage(self) -> StorageView:
        """The agent's storage as it is (no simulated faults)."""

    def faults(self) -> FaultConfig: ...

    def set_faults(self, config: FaultConfig) -> None: ...

    def seed_storage(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]: ...

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int: ...

    def close(self) -> None: ...


class InProcessControl:
    """The simulated agent's state file, opened in this process."""

    def __init__(self, backend: SimulatedAgentBackend, *, owned: bool = False) -> None:
        self.backend = backend
        self.owned = owned  # close the backend with this control

    def journal(self) -> list[dict[str, Any]]:
        return self.backend.journal()

    def storage(self) -> StorageView:
        return parse_storage(self.backend.storage_snapshot())

    def faults(self) -> FaultConfig:
        return self.backend.faults()

    def set_faults(self, config: FaultConfig) -> None:
        self.backend.set_faults(config)

    def seed_storage(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]:
        return self.backend.seed_storage(domains, volumes, token)

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int:
        return self.backend.unseed(token, volume_ids)

    def close(self) -> None:
        if self.owned:
            self.backend.close()


class RemoteControl:
    """A served simulated agent, through its `Simulator.*` methods."""

    def __init__(self, url: str) -> None:
        self.admin = SimulatorAdmin(url)

    def journal(self) -> list[dict[str, Any]]:
        return self.admin.journal()

    def storage(self) -> StorageView:
        return self.admin.storage()

    def faults(self) -> FaultConfig:
        return self.admin.faults()

    def set_faults(self, config: FaultConfig) -> None:
        self.admin.set_faults(config)

    def seed_storage(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]:
        return self.admin.seed(domains, volumes, token)

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int:
        return self.admin.unseed(token, volume_ids)

    def close(self) -> None:
        self.admin.close()
