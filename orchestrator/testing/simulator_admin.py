"""The client of the simulated agent's administration over HTTP: `SimulatorAdmin` (`Simulator.*`).

For tests, the demo and the CLI: it seeds the agent's storage, reads its
journal and sets its faults (simulator_protocol.py). No simulated fault
applies to these calls; their answers are validated like the protocol's.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from orchestrator.agent.port import StorageView
from orchestrator.agent.protocol import EmptyResult, IdentifyResult, parse_result
from orchestrator.agent.rpc import MIB, RpcClient
from orchestrator.testing.faults import FaultConfig
from orchestrator.testing.simulator_protocol import (
    FenceLogEntry,
    FenceLogResult,
    JournalResult,
    SeedResult,
    UnseedResult,
)


class SimulatorAdmin:
    """The simulated agent's administration over HTTP (`Simulator.*`; no simulated faults apply)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        call_timeout: float = 60.0,
        max_answer_bytes: int = 256 * MIB,  # a journal holds every task ever created
    ) -> None:
        self.rpc = RpcClient(
            url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            call_timeout=call_timeout,
            max_answer_bytes=max_answer_bytes,
        )

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def identify(self) -> IdentifyResult:
        """Who the agent is, unchecked (the simulator's faults may make it lie)."""
        with self.rpc.naming_agent():
            return parse_result(IdentifyResult, self.rpc.call("Agent.identify", {}), "Agent.identify")

    def journal(self) -> list[dict[str, Any]]:
        """Every task ever created, as `SimulatedAgentBackend.journal()` gives them."""
        with self.rpc.naming_agent():
            result = parse_result(JournalResult, self.rpc.call("Simulator.journal", {}), "Simulator.journal")
        return [entry.model_dump() for entry in result.entries]

    def faults(self) -> FaultConfig:
        with self.rpc.naming_agent():
            return parse_result(FaultConfig, self.rpc.call("Simulator.faults", {}), "Simulator.faults")

    def set_faults(self, config: FaultConfig) -> None:
        with self.rpc.naming_agent():
            parse_result(
                EmptyResult,
                self.rpc.call("Simulator.set_faults", {"faults": config.model_dump(mode="json")}),
                "Simulator.set_faults",
            )

    def seed(
        self, domains: Sequence[str], volumes: Sequence[tuple[str, str, str]], token: str | None = None
    ) -> list[str]:
        """Add storage domains and base volumes; with a token, all or nothing (returns the clashes)."""
        params = {
            "domains": list(domains),
            "volumes": [{"storage_domain_id": sd, "image_id": image, "volume_id": vol} for sd, image, vol in volumes],
            "token": token,
        }
        with self.rpc.naming_agent():
            return parse_result(SeedResult, self.rpc.call("Simulator.seed", params), "Simulator.seed").clashes

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int:
        """Remove the volumes that seed added; returns how many."""
        params = {"token": token, "volume_ids": list(volume_ids)}
        with self.rpc.naming_agent():
            return parse_result(UnseedResult, self.rpc.call("Simulator.unseed", params), "Simulator.unseed").removed

    def storage(self) -> StorageView:
        """The storage as it is now, without simulated faults."""
        with self.rpc.naming_agent():
            return parse_result(StorageView, self.rpc.call("Simulator.storage", {}), "Simulator.storage")

    def fence_log(self) -> list[FenceLogEntry]:
        """Every fenced call the agent admitted or refused as stale since it started, oldest first
        (the last 100,000; `Simulator.fence_log`)."""
        with self.rpc.naming_agent():
            return parse_result(FenceLogResult, self.rpc.call("Simulator.fence_log", {}), "Simulator.fence_log").entries
