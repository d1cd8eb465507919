"""The engine's client for an agent over the network (docs/agent-protocol.md).

`HttpAgent` implements the engine's `Agent` interface over JSON-RPC 2.0 on
HTTP. Every answer crosses the same validating boundary as the simulated
agent's (the models and parse functions of interface.py and protocol.py), and
every failure is one of two errors, each one line naming the agent's URL:

- `AgentUnavailableError`: no usable answer now (connection refused or reset,
  a timeout, the overall deadline passed, HTTP 5xx, the connection dropped
  mid-answer, JSON-RPC error -32000). The engine waits and retries.
- `AgentProtocolError`: an answer that is not a valid answer (not JSON-RPC,
  a JSON-RPC error, larger than max_answer_bytes, a malformed result, another
  protocol major version, another pool). The engine decides nothing from it.
  `StaleEpochError` (-32001) says another engine has taken over.

`SimulatorAdmin` is the client of the simulated agent's `Simulator.*`
administration, for tests, the demo and the CLI.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import httpx

from orchestrator.agent.port import (
    AgentTaskStatus,
    CreateResult,
    StorageView,
    TaskSpec,
    parse_create_results,
    parse_statuses,
    parse_storage,
)
from orchestrator.agent.protocol import (
    AGENT_UNAVAILABLE,
    JSONRPC_VERSION,
    PROTOCOL_VERSION,
    STALE_EPOCH,
    CreateTasksResult,
    EmptyResult,
    Fence,
    IdentifyResult,
    JournalResult,
    RevertOutcome,
    RevertTasksResult,
    RpcFailure,
    SeedResult,
    StaleEpochError,
    TaskStatusesResult,
    UnseedResult,
    parse_result,
    protocol_major,
    result_field,
)
from orchestrator.errors import AgentProtocolError, AgentUnavailableError, InputError
from orchestrator.testing.simulated_agent import FaultConfig

__all__ = ["HttpAgent", "RpcClient", "SimulatorAdmin", "StaleEpochError"]

MIB = 1024 * 1024
# The client closes idle connections well before the server does (server.KEEP_ALIVE_SECONDS),
# so a request is never sent on a connection the server is closing.
KEEPALIVE_EXPIRY_SECONDS = 30.0
SNIPPET_CHARS = 80


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """An OS or httpx error as a short phrase: "[Errno 111] Connection refused" -> "connection refused"."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", _one_line(str(exc) or type(exc).__name__, 160))
    return text[:1].lower() + text[1:]


class RpcClient:
    """One agent's endpoint: JSON-RPC calls over one keep-alive httpx.Client, bounded in time and size."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        call_timeout: float = 15.0,
        max_answer_bytes: int = 16 * MIB,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InputError(f"agent URL {url!r} is not a URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InputError(f"agent URL {url!r} is not an http:// or https:// URL")
        if min(connect_timeout, read_timeout, call_timeout) <= 0 or max_answer_bytes <= 0:
            raise InputError("agent timeouts and answer size limit must be positive")
        self.url = url
        # What errors show: never a password in the URL.
        self.shown_url = str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.call_timeout = call_timeout
        self.max_answer_bytes = max_answer_bytes
        self._ids = itertools.count(1)
        self._client = httpx.Client(
            # Each read waits at most read_timeout, and never longer than a whole call may take.
            timeout=httpx.Timeout(
                connect=min(connect_timeout, call_timeout),
                read=min(read_timeout, call_timeout),
                write=min(read_timeout, call_timeout),
                pool=min(connect_timeout, call_timeout),
            ),
            limits=httpx.Limits(
                max_connections=8, max_keepalive_connections=4, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment between the engine and its agents
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """One call; its result (raw), or AgentUnavailableError / AgentProtocolError / StaleEpochError."""
        rpc_id = next(self._ids)
        body = json.dumps(
            {"jsonrpc": JSONRPC_VERSION, "id": rpc_id, "method": method, "params": params}, separators=(",", ":")
        ).encode()
        content_type, raw = self._post(method, body)
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            snippet = _one_line(raw[:SNIPPET_CHARS].decode("utf-8", "replace"), SNIPPET_CHARS)
            raise AgentProtocolError(
                f"agent at {self.shown_url} answered {method} with something that is not JSON "
                f"({content_type or 'no content type'}: {snippet!r})"
            ) from None
        return self._result(method, rpc_id, doc)

    def _post(self, method: str, body: bytes) -> tuple[str, bytes]:
        where = f"agent at {self.shown_url}"
        deadline = time.monotonic() + self.call_timeout
        try:
            with self._client.stream(
                "POST",
                self.url,
                content=body,
                headers={"content-type": "application/json", "accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    detail = self._snippet(response, deadline)
                    if response.status_code >= 500:
                        raise AgentUnavailableError(
                            f"{where} answered {method} with HTTP {response.status_code} ({detail})"
                        )
                    raise AgentProtocolError(f"{where} refused {method} with HTTP {response.status_code} ({detail})")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_answer_bytes:
                    raise self._oversize(method, int(declared))
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_answer_bytes:
                        raise self._oversize(method, size)
                    if time.monotonic() > deadline:  # a trickle must not hold a call forever
                        raise AgentUnavailableError(
                            f"{where} did not finish answering {method} within {self.call_timeout:g}s "
                            f"({size} bytes received)"
                        )
                    chunks.append(chunk)
                return response.headers.get("content-type", ""), b"".join(chunks)
        except httpx.ConnectTimeout:
            raise AgentUnavailableError(
                f"{where} did not accept a connection within {self.connect_timeout:g}s"
            ) from None
        except httpx.ConnectError as exc:
            raise AgentUnavailableError(f"{where} is unreachable: {_reason(exc)}") from None
        except httpx.ReadTimeout:
            raise AgentUnavailableError(
                f"{where} did not answer {method} within {min(self.read_timeout, self.call_timeout):g}s"
            ) from None
        except httpx.TimeoutException as exc:
            raise AgentUnavailableError(f"{where} timed out during {method} ({type(exc).__name__})") from None
        except httpx.RemoteProtocolError as exc:
            raise AgentUnavailableError(
                f"{where} closed the connection before its answer to {method} was complete ({_reason(exc)})"
            ) from None
        except httpx.DecodingError as exc:
            raise AgentProtocolError(
                f"{where} sent an answer to {method} that cannot be decoded ({_reason(exc)})"
            ) from None
        except httpx.HTTPError as exc:  # reset, broken pipe, and the rest of the transport's failures
            raise AgentUnavailableError(f"{where}: connection lost during {method} ({_reason(exc)})") from None

    def _oversize(self, method: str, size: int) -> AgentProtocolError:
        return AgentProtocolError(
            f"agent at {self.shown_url} sent an answer to {method} larger than {self.max_answer_bytes} bytes "
            f"(at least {size}); refused"
        )

    @staticmethod
    def _snippet(response: httpx.Response, deadline: float) -> str:
        """The start of an error body, for the message; whatever can be had quickly."""
        text = b""
        with contextlib.suppress(httpx.HTTPError):
            for chunk in response.iter_bytes():
                text += chunk
                if len(text) >= SNIPPET_CHARS or time.monotonic() > deadline:
                    break
        return repr(_one_line(text[:SNIPPET_CHARS].decode("utf-8", "replace"), SNIPPET_CHARS)) if text else "no body"

    def _result(self, method: str, rpc_id: int, doc: Any) -> Any:
        where = f"agent at {self.shown_url}"
        if not isinstance(doc, dict) or doc.get("jsonrpc") != JSONRPC_VERSION:
            raise AgentProtocolError(f"{where} answered {method} with JSON that is not a JSON-RPC 2.0 response")
        if "error" in doc:
            try:
                failure = RpcFailure.model_validate(doc)
            except ValueError:
                raise AgentProtocolError(f"{where} answered {method} with a malformed JSON-RPC error") from None
            message = _one_line(failure.error.message)
            if failure.error.code == AGENT_UNAVAILABLE:
                raise AgentUnavailableError(f"{where} is unavailable: {message}")
            if failure.error.code == STALE_EPOCH:
                raise StaleEpochError(f"{where} refused {method}: {message}; another engine has taken over")
            raise AgentProtocolError(f"{where} refused {method}: {message} (JSON-RPC error {failure.error.code})")
        if set(doc) != {"jsonrpc", "id", "result"}:
            raise AgentProtocolError(f"{where} answered {method} with a JSON-RPC response without a result")
        if type(doc["id"]) is not int or doc["id"] != rpc_id:
            raise AgentProtocolError(f"{where} answered {method} with the answer to another call (id {doc['id']!r})")
        return doc["result"]

    @contextlib.contextmanager
    def naming_agent(self) -> Iterator[None]:
        """interface.py's errors say "agent ..."; say which one."""
        try:
            yield
        except AgentProtocolError as exc:
            text = str(exc)
            if text.startswith("agent ") and not text.startswith("agent at "):
                raise AgentProtocolError(f"agent at {self.shown_url} {text[len('agent ') :]}") from None
            raise


class HttpAgent:
    """The engine's `Agent` over the agent protocol, with identity checks and fencing."""

    def __init__(
        self,
        url: str,
        *,
        expected_pool: str | None = None,
        name: str | None = None,
        fence: Fence | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        call_timeout: float = 15.0,
        max_answer_bytes: int = 16 * MIB,
    ) -> None:
        self.rpc = RpcClient(
            url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            call_timeout=call_timeout,
            max_answer_bytes=max_answer_bytes,
        )
        self.url = url
        self.name = name or self.rpc.shown_url
        self.expected_pool = expected_pool
        self.fence = fence  # sent with every mutating call while set
        self.identity: IdentifyResult | None = None
        self.calls: dict[str, int] = {}
        self._identity_lock = threading.Lock()

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> HttpAgent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # ---- identity -------------------------------------------------------------------------------

    def identify(self) -> IdentifyResult:
        """Ask the agent who it is; refuse another protocol major version or another pool."""
        where = f"agent at {self.rpc.shown_url}"
        self._count("Agent.identify")
        identity = parse_result(IdentifyResult, self.rpc.call("Agent.identify", {}), "Agent.identify")
        theirs, ours = protocol_major(identity.protocol_version), protocol_major(PROTOCOL_VERSION)
        if theirs != ours:
            upgrade = "the engine" if theirs > ours else "the agent"
            raise AgentProtocolError(
                f"{where} speaks protocol {identity.protocol_version}; this engine speaks {ours}.x; "
                f"upgrade {upgrade} so that both speak the same major version"
            )
        if self.expected_pool is not None and identity.pool_id != self.expected_pool:
            raise AgentProtocolError(
                f"{where} serves pool {identity.pool_id!r}, not pool {self.expected_pool!r}; "
                f"check the agent URL configured for pool {self.expected_pool!r}"
            )
        self.identity = identity
        return identity

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        with self._identity_lock:
            if self.identity is None:  # on first use, and again after the agent was out of reach
                self.identify()
        self._count(method)
        try:
            return self.rpc.call(method, params)
        except AgentUnavailableError:
            self.identity = None  # whatever answers next at this URL may be another agent
            raise

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def _fenced(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "fence": self.fence.model_dump()} if self.fence is not None else params

    # ---- the engine's Agent interface ------------------------------------------------------------

    def create_tasks(self, specs: Sequence[TaskSpec]) -> list[CreateResult]:
        """Create tasks; a key the agent already holds returns that task (idempotent)."""
        if not specs:
            return []
        raw = self._call("Tasks.create", self._fenced({"tasks": [s.model_dump() for s in specs]}))
        with self.rpc.naming_agent():
            return parse_create_results(result_field(raw, CreateTasksResult, "create_tasks"), specs)

    def task_statuses(self) -> list[AgentTaskStatus]:
        """Every task the agent holds, with its key and status, in one call."""
        raw = self._call("Tasks.statuses", {})
        with self.rpc.naming_agent():
            return parse_statuses(result_field(raw, TaskStatusesResult, "task_statuses"))

    def stop_task(self, agent_task_id: str) -> None:
        self.stop_tasks([agent_task_id])

    def stop_tasks(self, agent_task_ids: Sequence[str]) -> None:
        """Stop running tasks; ended or unknown ids are no-ops."""
        if agent_task_ids:
            raw = self._call("Tasks.stop", self._fenced({"agent_task_ids": list(agent_task_ids)}))
            with self.rpc.naming_agent():
                parse_result(EmptyResult, raw, "stop_tasks")

    def clear_tasks(self, agent_task_ids: Sequence[str]) -> None:
        """Forget ended tasks; unknown ids are ignored (clearing twice is safe)."""
        if agent_task_ids:
            raw = self._call("Tasks.clear", self._fenced({"agent_task_ids": list(agent_task_ids)}))
            with self.rpc.naming_agent():
                parse_result(EmptyResult, raw, "clear_tasks")

    def revert_task(self, agent_task_id: str) -> bool:
        """Undo the storage effect of a task that finished with success (idempotent).

        True if its effect is undone (now, or by an earlier call); False if it had none."""
        (outcome,) = self.revert_tasks([agent_task_id])
        if outcome.error:
            raise AgentProtocolError(
                f"agent at {self.rpc.shown_url} could not revert task {agent_task_id}: {_one_line(outcome.error)}"
            )
        return outcome.reverted

    def revert_tasks(self, agent_task_ids: Sequence[str]) -> list[RevertOutcome]:
        """Undo the storage effects of tasks, one outcome per id in the order given."""
        if not agent_task_ids:
            return []
        raw = self._call("Tasks.revert", self._fenced({"agent_task_ids": list(agent_task_ids)}))
        with self.rpc.naming_agent():
            outcomes = parse_result(RevertTasksResult, raw, "revert_tasks").results
            if [o.agent_task_id for o in outcomes] != list(agent_task_ids):
                raise AgentProtocolError("agent answered revert_tasks for other tasks than it was given")
        return outcomes

    def storage(self) -> StorageView:
        """The agent's storage: every volume, by storage domain and image."""
        raw = self._call("Storage.view", {})
        with self.rpc.naming_agent():
            return parse_storage(raw)


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

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        return self.rpc.call(method, params)

    def identify(self) -> IdentifyResult:
        """Who the agent is, unchecked (the simulator's faults may make it lie)."""
        with self.rpc.naming_agent():
            return parse_result(IdentifyResult, self._call("Agent.identify", {}), "Agent.identify")

    def journal(self) -> list[dict[str, Any]]:
        """Every task ever created, as `SimulatedAgentBackend.journal()` gives them."""
        with self.rpc.naming_agent():
            result = parse_result(JournalResult, self._call("Simulator.journal", {}), "Simulator.journal")
        return [entry.model_dump() for entry in result.entries]

    def faults(self) -> FaultConfig:
        with self.rpc.naming_agent():
            return parse_result(FaultConfig, self._call("Simulator.faults", {}), "Simulator.faults")

    def set_faults(self, config: FaultConfig) -> None:
        with self.rpc.naming_agent():
            parse_result(
                EmptyResult,
                self._call("Simulator.set_faults", {"faults": config.model_dump(mode="json")}),
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
            return parse_result(SeedResult, self._call("Simulator.seed", params), "Simulator.seed").clashes

    def unseed(self, token: str, volume_ids: Sequence[str]) -> int:
        """Remove the volumes that seed added; returns how many."""
        params = {"token": token, "volume_ids": list(volume_ids)}
        with self.rpc.naming_agent():
            return parse_result(UnseedResult, self._call("Simulator.unseed", params), "Simulator.unseed").removed

    def storage(self) -> StorageView:
        """The storage as it is now, without simulated faults."""
        with self.rpc.naming_agent():
            return parse_result(StorageView, self._call("Simulator.storage", {}), "Simulator.storage")
