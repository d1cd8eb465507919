"""The faults the simulated agent injects, and the helpers that decide when they strike.

Faults are configured in the agent's state file (`orchestrator agent faults`,
or `Simulator.set_faults` over the network) and may be overridden by
`ORCHESTRATOR_AGENT_FAULTS` (JSON, fields of `FaultConfig`): a verb or a share
of tasks fails, creation of a verb is refused, the agent is unreachable or
slow for a period, a share of tasks vanishes, answers are malformed, it
reports tasks it was never given, or, served over HTTP, it misbehaves on the
wire (`network_fault`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import AgentError, AgentUnavailableError, StoreError

FAULTS_ENV = "ORCHESTRATOR_AGENT_FAULTS"

# How an agent server misbehaves on the wire (see orchestrator/testing/network_faults.py):
# http_500 answers HTTP 500; drop closes the connection in the middle of an answer; garbage answers
# a body that is not JSON-RPC; oversize answers a body larger than any client accepts; trickle sends
# the answer a few bytes at a time, slower than a client waits; wrong_pool and future_version make
# identify claim another pool or a protocol version from the future.
NetworkFault = Literal["none", "http_500", "drop", "garbage", "oversize", "trickle", "wrong_pool", "future_version"]


class FaultConfig(BaseModel):
    """Faults the simulated agent injects. Shares are probabilities in [0, 1]."""

    model_config = ConfigDict(extra="forbid")

    fail_verbs: list[str] = Field(default_factory=list, description="tasks of these verbs fail")
    fail_share: float = Field(0.0, ge=0, le=1, description="share of tasks that fail")
    fail_ordinals: list[int] = Field(default_factory=list, description="the n-th tasks ever created fail (1-based)")
    refuse_verbs: list[str] = Field(default_factory=list, description="creation refused")
    vanish_share: float = Field(0.0, ge=0, le=1, description="share of tasks that vanish")
    unreachable_until: float = Field(0.0, description="epoch seconds; calls fail until then")
    malformed_until: float = Field(0.0, description="epoch seconds; answers are garbage until then")
    malformed_share: float = Field(0.0, ge=0, le=1, description="share of answers that are garbage")
    phantom_tasks: int = Field(0, ge=0, le=100, description="tasks reported but never given")
    extra_task_seconds: float = Field(0.0, ge=0, description="added to every task's duration")
    call_latency: float = Field(0.0, ge=0, description="seconds each call takes")
    create_answer_latency: float = Field(
        0.0, ge=0, description="seconds a create call's answer is held back after the tasks were made"
    )
    timeout_seconds: float = Field(10.0, gt=0, description="a call slower than this times out")
    network_fault: NetworkFault = Field(
        "none", description="served over HTTP: how the agent server misbehaves until network_fault_until"
    )
    network_fault_until: float = Field(0.0, description="epoch seconds; the network fault lasts until then")
    seed: int = 0

    def network_fault_now(self) -> NetworkFault:
        """The network fault in force at this moment ("none" once its time is up)."""
        return self.network_fault if time.time() < self.network_fault_until else "none"


def stored_faults(state_file: object, raw: str | bytes | None) -> FaultConfig:
    """The fault configuration kept in an agent state file's `faults` row.

    A row that is not a configuration (edited by hand, written by another program) makes
    the agent unusable, with one line saying how to reset it, never a traceback: the
    engine waits for the agent as for any other agent trouble and decides nothing.
    """
    if raw is None:
        return FaultConfig()
    try:
        return FaultConfig.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        problem = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise AgentError(
            f"agent state {state_file}: its faults row is not a fault configuration ({problem[:200]}); "
            "reset it with 'orchestrator agent faults --clear'"
        ) from None


def with_env_overrides(config: FaultConfig) -> FaultConfig:
    """The configuration with the fields of `ORCHESTRATOR_AGENT_FAULTS`, if set, merged over it."""
    env = os.environ.get(FAULTS_ENV)
    if not env:
        return config
    try:
        overrides = json.loads(env)
        return FaultConfig.model_validate({**config.model_dump(), **overrides})
    except (ValueError, ValidationError) as exc:
        raise StoreError(f"{FAULTS_ENV} is not a valid fault configuration: {exc}") from None


def refuse_if_unreachable(unreachable_until: float) -> None:
    """During a simulated outage, fail as a connection refused would."""
    now = time.time()
    if now < unreachable_until:
        raise AgentUnavailableError(
            f"agent unreachable: connection refused (simulated outage, {unreachable_until - now:.1f}s left)"
        )


def simulate_network(faults: FaultConfig) -> None:
    """What a call meets before it reaches the agent: outages, latency and timeouts."""
    refuse_if_unreachable(faults.unreachable_until)
    if faults.call_latency > 0:
        if faults.call_latency >= faults.timeout_seconds:
            time.sleep(faults.timeout_seconds)
            raise AgentUnavailableError(f"agent did not answer within {faults.timeout_seconds:g}s")
        time.sleep(faults.call_latency)


def garbled(faults: FaultConfig, rng: random.Random) -> bool:
    """Whether this answer is to be malformed."""
    return time.time() < faults.malformed_until or (
        faults.malformed_share > 0 and rng.random() < faults.malformed_share
    )


def share_hit(seed: int, salt: str, key: str, share: float) -> bool:
    """Whether a task's key falls in a share: the same for the same seed and key, whoever asks."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
