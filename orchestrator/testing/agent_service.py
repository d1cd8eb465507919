"""The agent protocol's methods, and the simulator's administration, over a simulated agent backend.

`AgentService.answer()` takes a request body and gives its answer: it checks
the JSON-RPC envelope and the params against the method table (protocol.py,
simulator_protocol.py), admits fenced calls (fences.py), carries the call out
on the backend and wraps its plain result. The backend's answers, garbled ones
included (malformed faults), are passed through as results: rejecting them is
the client's job. The simulated outage (`unreachable_until`) answers JSON-RPC
error -32000, as a real agent that cannot serve right now would. A network
fault in force travels with the answer, for the HTTP layer to act out
(network_faults.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.agent.protocol import (
    AGENT_UNAVAILABLE,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC_VERSION,
    METHOD_NOT_FOUND,
    METHODS,
    PARSE_ERROR,
    PROTOCOL_VERSION,
    STALE_EPOCH,
    ClearTasksParams,
    CreateTasksParams,
    MethodSpec,
    NoParams,
    RevertTasksParams,
    RpcRequest,
    StopTasksParams,
)
from orchestrator.errors import AgentUnavailableError
from orchestrator.testing.faults import NetworkFault
from orchestrator.testing.fences import FenceKeeper, StaleFenceError
from orchestrator.testing.network_faults import ANSWERED_INSTEAD
from orchestrator.testing.simulator_backend import SimulatedAgentBackend
from orchestrator.testing.simulator_protocol import SIMULATOR_METHODS, SeedParams, SetFaultsParams, UnseedParams

log = logging.getLogger("orchestrator.testing.agent_server")  # the server's log: one name for all it says


def _software() -> str:
    try:
        return f"orchestrator-simulated-agent/{version('orchestrator')}"
    except PackageNotFoundError:
        return "orchestrator-simulated-agent"


@dataclass(frozen=True)
class Answer:
    """What one request gets: a JSON body, or a network fault standing in for it."""

    body: bytes
    fault: NetworkFault = "none"
    rpc_id: int | str | None = None


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _error(rpc_id: Any, code: int, message: str, data: Any = None) -> Answer:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return Answer(_json({"jsonrpc": JSONRPC_VERSION, "id": rpc_id, "error": error}))


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "params"
    return f"{where}: {first['msg']}"


class AgentService:
    """The protocol's methods and the `Simulator.*` administration over a backend (run in a thread pool)."""

    def __init__(self, backend: SimulatedAgentBackend, *, agent_id: str, pool_id: str, fence_path: Path | None) -> None:
        self.backend = backend
        self.agent_id = agent_id
        self.pool_id = pool_id
        self.fences = FenceKeeper(fence_path)
        self.software = _software()
        self.stopping = threading.Event()  # set when the server shuts down: slow answers give up
        self._handlers: dict[str, Callable[[Any, NetworkFault], Any]] = {
            "Agent.identify": self._identify,
            "Tasks.create": self._create,
            "Tasks.statuses": self._statuses,
            "Tasks.stop": self._stop,
            "Tasks.clear": self._clear,
            "Tasks.revert": self._revert,
            "Storage.view": self._storage,
            "Simulator.journal": self._journal,
            "Simulator.faults": self._faults,
            "Simulator.set_faults": self._set_faults,
            "Simulator.seed": self._seed,
            "Simulator.unseed": self._unseed,
            "Simulator.storage": self._storage_snapshot,
            "Simulator.fence_log": self._fence_log,
        }

    # A request, from body to answer.

    def answer(self, body: bytes) -> Answer:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(None, PARSE_ERROR, "parse error: the body is not JSON")
        if isinstance(doc, list):
            return _error(None, INVALID_REQUEST, "invalid request: batch requests are not supported; send one call")
        echo = doc.get("id") if isinstance(doc, dict) and type(doc.get("id")) in (int, str) else None
        if isinstance(doc, dict) and "id" not in doc:
            return _error(
                None, INVALID_REQUEST, "invalid request: notifications are not supported; give every call an id"
            )
        by_position = isinstance(doc, dict) and isinstance(doc.get("params"), list)
        try:
            request = RpcRequest.model_validate({**doc, "params": None} if by_position else doc)
        except ValidationError as exc:
            return _error(echo, INVALID_REQUEST, f"invalid request: not a JSON-RPC 2.0 request ({_first_problem(exc)})")
        spec = METHODS.get(request.method) or SIMULATOR_METHODS.get(request.method)
        if spec is None:
            return _error(request.id, METHOD_NOT_FOUND, f"method not found: {request.method}")
        if by_position:
            return _error(request.id, INVALID_PARAMS, "invalid params: params must be an object (by name)")
        try:
            params = spec.params.model_validate(request.params or {})
        except ValidationError as exc:
            return _error(request.id, INVALID_PARAMS, f"invalid params for {spec.name}: {_first_problem(exc)}")
        return self._carry_out(request.id, spec, params)

    def _carry_out(self, rpc_id: int | str, spec: MethodSpec, params: BaseModel) -> Answer:
        fault: NetworkFault = "none"
        try:
            if spec.name in METHODS:  # the simulator's administration is never faulted
                fault = self.backend.faults().network_fault_now()
                if fault in ANSWERED_INSTEAD:
                    log.warning("simulated network fault %s on %s", fault, spec.name)
                    return Answer(b"", fault, rpc_id)
            fence = getattr(params, "fence", None)
            with self.fences.admit(fence, spec.name):
                result = self._handlers[spec.name](params, fault)
            body = _json({"jsonrpc": JSONRPC_VERSION, "id": rpc_id, "result": result})
        except StaleFenceError as stale:
            return _error(rpc_id, STALE_EPOCH, str(stale), stale.highest.model_dump())
        except AgentUnavailableError as exc:
            return _error(rpc_id, AGENT_UNAVAILABLE, str(exc))
        except Exception as exc:  # one line to the caller and to the log, then keep serving
            log.error("internal error in %s: %s: %s", spec.name, type(exc).__name__, exc)
            return _error(rpc_id, INTERNAL_ERROR, f"internal error in {spec.name}: {type(exc).__name__}: {exc}")
        if fault != "none":
            log.warning("simulated network fault %s on %s", fault, spec.name)
        return Answer(body, fault)

    # The protocol's methods (plain data out, garbled or not).

    def _identify(self, _: NoParams, fault: NetworkFault) -> Any:
        faults = self.backend.faults()
        now = time.time()
        if now < faults.unreachable_until:
            raise AgentUnavailableError(
                f"agent unreachable (simulated outage, {faults.unreachable_until - now:.1f}s left)"
            )
        return {
            "agent_id": self.agent_id,
            "pool_id": f"not-{self.pool_id}" if fault == "wrong_pool" else self.pool_id,
            "protocol_version": "2.0" if fault == "future_version" else PROTOCOL_VERSION,
            "software": self.software,
        }

    def _create(self, params: CreateTasksParams, _: NetworkFault) -> Any:
        return {"results": self.backend.create_tasks([t.model_dump() for t in params.tasks])}

    def _statuses(self, _: NoParams, __: NetworkFault) -> Any:
        return {"tasks": self.backend.task_statuses()}

    def _stop(self, params: StopTasksParams, _: NetworkFault) -> Any:
        for agent_task_id in params.agent_task_ids:
            self.backend.stop_task(agent_task_id)
        return {}

    def _clear(self, params: ClearTasksParams, _: NetworkFault) -> Any:
        if params.agent_task_ids:
            self.backend.clear_tasks(list(params.agent_task_ids))
        return {}

    def _revert(self, params: RevertTasksParams, _: NetworkFault) -> Any:
        results: list[Any] = []
        for agent_task_id in params.agent_task_ids:
            answer = self.backend.revert_task(agent_task_id)
            if isinstance(answer, dict):
                answer = {"agent_task_id": agent_task_id, "error": "", **answer}
            results.append(answer)
        return {"results": results}

    def _storage(self, _: NoParams, __: NetworkFault) -> Any:
        return self.backend.storage()

    # The simulator's administration.

    def _journal(self, _: NoParams, __: NetworkFault) -> Any:
        return {"entries": self.backend.journal()}

    def _faults(self, _: NoParams, __: NetworkFault) -> Any:
        return self.backend.faults().model_dump(mode="json")

    def _set_faults(self, params: SetFaultsParams, _: NetworkFault) -> Any:
        self.backend.set_faults(params.faults)
        return {}

    def _seed(self, params: SeedParams, _: NetworkFault) -> Any:
        volumes = [(v.storage_domain_id, v.image_id, v.volume_id) for v in params.volumes]
        return {"clashes": self.backend.seed_storage(params.domains, volumes, params.token)}

    def _unseed(self, params: UnseedParams, _: NetworkFault) -> Any:
        return {"removed": self.backend.unseed(params.token, params.volume_ids)}

    def _storage_snapshot(self, _: NoParams, __: NetworkFault) -> Any:
        return self.backend.storage_snapshot()

    def _fence_log(self, _: NoParams, __: NetworkFault) -> Any:
        entries, dropped = self.fences.log()
        return {
            "entries": [
                {"method": r.method, "engine_id": r.engine_id, "epoch": r.epoch, "at": r.at, "admitted": r.admitted}
                for r in entries
            ],
            "dropped": dropped,
        }
