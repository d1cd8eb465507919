"""An agent server: the simulated agent backend, served over the agent protocol.

`serve()` (or `python -m orchestrator.testing.agent_server --state PATH --pool ID`)
opens the simulated agent's state file and answers JSON-RPC 2.0 calls on
`POST /rpc` (see docs/agent-protocol.md). The tasks live in the state file
and end on the agent's clock, so they keep running, and ending, while no
engine is connected, and a server restarted on the same state file holds the
same tasks.

This module is the HTTP side: the Starlette app on uvicorn, the request size
cap, listening, announcing and stopping. What a call does is agent_service.py
(the backend's calls in a thread pool, so one slow call does not hold up the
others); fencing is fences.py (the highest fence in `<state>.fence.json`);
the deliberately broken answers are network_faults.py.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orchestrator.errors import InputError, OrchestratorError
from orchestrator.private_files import write_private_file
from orchestrator.serving import (
    AnnouncingServer,
    bind,
    parse_listen,
    remove_url_file,
    run_server,
    server_config,
    url_of,
)
from orchestrator.testing.agent_service import AgentService, Answer
from orchestrator.testing.fences import fence_path_for
from orchestrator.testing.network_faults import expected_drop, faulty_response
from orchestrator.testing.simulator_backend import SimulatedAgentBackend, task_seconds_from_env

# By name: run with -m, this module's __name__ is "__main__".
log = logging.getLogger("orchestrator.testing.agent_server")

RPC_PATH = "/rpc"
MAX_REQUEST_BYTES = 8 * 1024 * 1024


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

    def respond(answer: Answer) -> Response:
        faulty = faulty_response(answer.fault, answer.body, answer.rpc_id, service.stopping)
        return faulty if faulty is not None else Response(answer.body, media_type="application/json")

    async def rpc(request: Request) -> Response:
        body = await _read_capped(request, max_request_bytes)
        if body is None:
            return PlainTextResponse(f"request body larger than {max_request_bytes} bytes", status_code=413)
        return respond(await run_in_threadpool(service.answer, body))

    app = Starlette(routes=[Route(RPC_PATH, rpc, methods=["POST"])])
    app.state.service = service
    return app


# ---- serving -----------------------------------------------------------------------------------------------


def default_agent_id(state: Path) -> str:
    """Stable for a state file: a server restarted on it is the same agent, holding the same tasks."""
    return "sim-" + hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:12]


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
        sock = bind(host, port, backlog=128)
        url = url_of(sock, host, path=RPC_PATH)

        def announce() -> None:
            if url_file is not None:
                write_private_file(url_file, url + "\n")
            print(f"agent {agent_id} for pool {pool_id} serving at {url}", flush=True)

        server = AnnouncingServer(server_config(app), announce, app.state.service.stopping.set)
        logging.getLogger("uvicorn.error").addFilter(expected_drop)
        run_server(server, sock)
        remove_url_file(url_file, url)
    finally:
        backend.close()


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
