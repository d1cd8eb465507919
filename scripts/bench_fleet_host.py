"""Many simulated agents served by one process, each on a path of its own: the fleet benchmark's agents.

    .venv/bin/python -m scripts.bench_fleet_host --dir DIR --agents N --url-file FILE [--task-seconds S]

Agent i (pool `fleet-i`) keeps its state in DIR/agent-i.state and answers at
BASE/agent-i/rpc; the base URL is written to FILE once serving. It is the same
agent server app as `orchestrator agent serve`, mounted N times on one uvicorn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount

from orchestrator.private_files import write_private_file
from orchestrator.serving import AnnouncingServer, bind, remove_url_file, run_server, server_config, url_of
from orchestrator.testing import SimulatedAgentBackend
from orchestrator.testing.agent_server import create_app


def pool_of(n: int) -> str:
    return f"fleet-{n:03d}"


def state_of(directory: Path, n: int) -> Path:
    return directory / f"agent-{n:03d}.state"


def agent_path(n: int) -> str:
    return f"/agent-{n:03d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--url-file", type=Path, required=True)
    parser.add_argument("--task-seconds", type=float, default=1e6, help="long: tasks run until hurried")
    args = parser.parse_args(argv)
    backends = [
        SimulatedAgentBackend(state_of(args.dir, n), task_seconds=args.task_seconds) for n in range(args.agents)
    ]
    services = []
    routes = []
    for n, backend in enumerate(backends):
        app = create_app(backend, agent_id=f"fleet-agent-{n:03d}", pool_id=pool_of(n))
        services.append(app.state.service)
        routes.append(Mount(agent_path(n), app=app))
    sock = bind("127.0.0.1", 0)
    url = url_of(sock, "127.0.0.1", path="")

    def stopping() -> None:
        for service in services:
            service.stopping.set()

    server = AnnouncingServer(
        server_config(Starlette(routes=routes)), lambda: write_private_file(args.url_file, url + "\n"), stopping
    )
    try:
        run_server(server, sock)
    finally:
        remove_url_file(args.url_file, url)
        for backend in backends:
            backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
