"""An agent server: the simulated agent backend, served over the agent protocol.

`serve()` (or `python -m orchestrator.testing.agent_server --state PATH --pool ID`)
opens the simulated agent's state file and answers JSON-RPC 2.0 calls on
`POST /rpc` (see docs/agent-protocol.md). The tasks live in the state file
and end on the agent's clock, so they keep running, and ending, while no
engine is connected, and a server restarted on the same state file holds the
same tasks.

Choices:
- Backend calls (SQLite under the backend's own lock, simulated latency) run
  in a thread pool, so one slow call does not hold up the others.
- The backend's plain answers, garbled ones included (malformed faults), are
  passed through as results: rejecting them is the client's job.
- The simulated outage (`unreachable_until`) answers JSON-RPC error -32000
  (HTTP 200), as a real agent that cannot serve right now would.
- Fencing: the highest fence seen is kept in `<state>.fence.json` beside the
  state file, so a restart does not forget it. A call whose epoch is lower,
  or equal with another engine id, is refused with -32001. A call that raises
  the epoch waits for the calls of the older epoch still being served, so no
  call of a deposed engine takes effect after its successor's first call.
- Network faults (`network_fault` until `network_fault_until`, in the
  backend's FaultConfig) apply to the protocol's methods, never to the
  `Simulator.*` administration (which must be able to switch them off):
  http_500, garbage and oversize answer without carrying out the call (as a
  proxy in the way would); drop and trickle carry it out and then lose or
  slow the answer, which is where a client's retry must be idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

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
    SIMULATOR_METHODS,
    STALE_EPOCH,
    ClearTasksParams,
    CreateTasksParams,
    Fence,
    MethodSpec,
    NoParams,
    RevertTasksParams,
    RpcRequest,
    SeedParams,
    SetFaultsParams,
    StopTasksParams,
    UnseedParams,
)
from orchestrator.errors import AgentUnavailableError, InputError, OrchestratorError
from orchestrator.testing.simulated_agent import NetworkFault, SimulatedAgentBackend, task_seconds_from_env

log = logging.getLogger("orchestrator.testing.agent_server")

RPC_PATH = "/rpc"
MAX_REQUEST_BYTES = 8 * 1024 * 1024
OVERSIZE_ANSWER_BYTES = 64 * 1024 * 1024  # larger than any client's cap
TRICKLE_BYTES = 4  # per TRICKLE_INTERVAL: a few bytes a second, slower than any client waits
TRICKLE_INTERVAL = 0.5
# The server keeps idle connections longer than clients do, so it is always the client that
# closes an idle one (no request is ever sent on a connection the server is closing).
KEEP_ALIVE_SECONDS = 75
GRACEFUL_SHUTDOWN_SECONDS = 3


def _software() -> str:
    try:
        return f"orchestrator-simulated-agent/{version('orchestrator')}"
    except PackageNotFoundError:
        return "orchestrator-simulated-agent"


class RpcRefusal(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (a temp file renamed over it)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# ---- fencing ---------------------------------------------------------------------------------------


def fence_path_for(state: Path) -> Path:
    return state.with_name(state.name + ".fence.json")


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
            raise RpcRefusal(
                STALE_EPOCH,
                f"stale epoch: engine {fence.engine_id} at epoch {fence.epoch}, but engine {highest.engine_id} "
                f"holds epoch {highest.epoch}",
                highest.model_dump(),
            )

    @contextlib.contextmanager
    def admit(self, fence: Fence | None) -> Iterator[None]:
        """Serve a call under this fence, or refuse it (RpcRefusal, -32001). Unfenced calls pass."""
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


# ---- the methods --------------------------------------------------------------------------------------


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
    """The protocol's methods over a simulated agent backend (synchronous: run in a thread pool)."""

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
                if fault in ("http_500", "garbage", "oversize"):
                    log.warning("simulated network fault %s on %s", fault, spec.name)
                    return Answer(b"", fault, rpc_id)
            fence = getattr(params, "fence", None)
            with self.fences.admit(fence):
                result = self._handlers[spec.name](params, fault)
            body = _json({"jsonrpc": JSONRPC_VERSION, "id": rpc_id, "result": result})
        except RpcRefusal as refusal:
            return _error(rpc_id, refusal.code, refusal.message, refusal.data)
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


# ---- HTTP -------------------------------------------------------------------------------------------------


class _DroppedResponse(Response):
    """Declares the whole answer's length, sends half of it, and leaves: the server closes the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": bytes(self.body[: len(self.body) // 2]), "more_body": True})


class _TrickleResponse(Response):
    """Sends the answer a few bytes at a time; gives up when the client leaves or the server stops."""

    def __init__(self, body: bytes, stopping: threading.Event) -> None:
        super().__init__(body, media_type="application/json")
        self._stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = bytes(self.body)
            for start in range(0, len(body), TRICKLE_BYTES):
                if gone.is_set() or self._stopping.is_set():
                    return  # unfinished: the server closes the connection
                chunk = body[start : start + TRICKLE_BYTES]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(TRICKLE_INTERVAL)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _oversize(rpc_id: int | str | None) -> AsyncIterator[bytes]:
    """A valid-looking statuses answer far larger than any client accepts."""
    task = _json(
        {
            "agent_task_id": "00000000-0000-0000-0000-000000000000",
            "key": "oversize",
            "verb": "delete_image",
            "state": "running",
            "result": "",
            "message": "",
            "created_at": "2024-01-01T00:00:00+00:00",
        }
    )
    chunk = (task + b",") * (65536 // (len(task) + 1))
    yield b'{"jsonrpc":"2.0","id":' + _json(rpc_id) + b',"result":{"tasks":['
    for _ in range(OVERSIZE_ANSWER_BYTES // len(chunk)):
        yield chunk
    yield task + b"]}}"


def _respond(answer: Answer, stopping: threading.Event) -> Response:
    if answer.fault == "http_500":
        return PlainTextResponse("simulated fault: internal server error", status_code=500)
    if answer.fault == "garbage":
        return HTMLResponse("<html><body><h1>502 Bad Gateway</h1><p>simulated fault</p></body></html>")
    if answer.fault == "oversize":
        return StreamingResponse(_oversize(answer.rpc_id), media_type="application/json")
    if answer.fault == "drop":
        return _DroppedResponse(answer.body, media_type="application/json")
    if answer.fault == "trickle":
        return _TrickleResponse(answer.body, stopping)
    return Response(answer.body, media_type="application/json")


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None if it is larger than limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    backend: SimulatedAgentBackend,
    *,
    agent_id: str,
    pool_id: str,
    fence_path: Path | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> Starlette:
    """The ASGI app serving `POST /rpc` over this backend (fence in memory only without fence_path)."""
    service = AgentService(backend, agent_id=agent_id, pool_id=pool_id, fence_path=fence_path)

    async def rpc(request: Request) -> Response:
        body = await _read_capped(request, max_request_bytes)
        if body is None:
            return PlainTextResponse(f"request body larger than {max_request_bytes} bytes", status_code=413)
        return _respond(await run_in_threadpool(service.answer, body), service.stopping)

    app = Starlette(routes=[Route(RPC_PATH, rpc, methods=["POST"])])
    app.state.service = service
    return app


# ---- serving -----------------------------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) to (host, port); port 0 picks a free one."""
    host, colon, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:0 for any free port)")
    return host, int(port)


def default_agent_id(state: Path) -> str:
    """Stable for a state file: a server restarted on it is the same agent, holding the same tasks."""
    return "sim-" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]


def _bind(host: str, port: int, listen: str) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OrchestratorError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _AnnouncingServer(uvicorn.Server):
    """Tells the world where it listens only once it really serves."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None], stopping: threading.Event) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._stopping = stopping

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stopping.set()  # a trickling answer would otherwise hold the graceful shutdown
        await super().shutdown(sockets=sockets)


def serve(
    state: Path,
    pool_id: str,
    listen: str = "127.0.0.1:0",
    url_file: Path | None = None,
    agent_id: str | None = None,
    task_seconds: float | None = None,
) -> None:
    """Serve the simulated agent on state until SIGTERM or SIGINT.

    Once listening, prints `agent ID for pool POOL serving at URL` on stdout and, with url_file,
    writes the URL there (atomically, mode 0600; removed again on a clean stop).
    """
    host, port = parse_listen(listen)
    for what, value in (("pool id", pool_id), ("agent id", agent_id)):
        if value is not None and not 1 <= len(value) <= 200:
            raise InputError(f"the {what} must be 1 to 200 characters")
    if url_file is not None and not url_file.parent.is_dir():
        raise InputError(f"cannot write the URL file {url_file}: directory does not exist")
    if task_seconds is not None and task_seconds < 0:
        raise InputError("--task-seconds must not be negative")
    seconds = task_seconds if task_seconds is not None else task_seconds_from_env()
    backend = SimulatedAgentBackend(Path(state), task_seconds=seconds)
    try:
        agent_id = agent_id or default_agent_id(Path(state))
        app = create_app(backend, agent_id=agent_id, pool_id=pool_id, fence_path=fence_path_for(Path(state)))
        sock = _bind(host, port, listen)
        bound_port = sock.getsockname()[1]
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}{RPC_PATH}"

        def announce() -> None:
            if url_file is not None:
                write_private_file(url_file, url + "\n")
            print(f"agent {agent_id} for pool {pool_id} serving at {url}", flush=True)

        config = uvicorn.Config(
            app,
            http="h11",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = _AnnouncingServer(config, announce, app.state.service.stopping)
        logging.getLogger("uvicorn.error").addFilter(_expected_drop)
        with _quiet_signals(), sock:
            server.run(sockets=[sock])
        if url_file is not None:
            with contextlib.suppress(OSError):
                if url_file.read_text().strip() == url:
                    url_file.unlink()
    finally:
        backend.close()


def _expected_drop(record: logging.LogRecord) -> bool:
    """The drop fault is meant to leave its answer unfinished: uvicorn need not complain about it."""
    return record.getMessage() != "ASGI callable returned without completing response."


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """SIGTERM/SIGINT only stop the server: uvicorn re-raises what it caught, which must not kill us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: FrameType | None) -> None:
        log.debug("signal %d after the server stopped", signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.testing.agent_server",
        description="Serve the simulated host agent over the agent protocol (JSON-RPC 2.0 over HTTP).",
    )
    parser.add_argument("--state", type=Path, required=True, help="the simulated agent's state file")
    parser.add_argument("--pool", required=True, help="the pool id the agent serves")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks a free one")
    parser.add_argument("--url-file", type=Path, help="write the agent's URL to this file once listening")
    parser.add_argument("--agent-id", help="the agent's id (default: derived from the state file)")
    parser.add_argument("--task-seconds", type=float, help="simulated task duration (default 1, or env)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="agent server: %(message)s")
    try:
        serve(
            args.state,
            args.pool,
            listen=args.listen,
            url_file=args.url_file,
            agent_id=args.agent_id,
            task_seconds=args.task_seconds,
        )
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
