"""Serving an ASGI app on uvicorn, as the agent server and the HTTP API both do.

The parts they share: a HOST:PORT to listen on (port 0 picks a free one), the
socket bound before the server starts (so the URL is known), a server that says
where it listens only once it really serves, SIGTERM/SIGINT that only stop it,
and the URL file written once serving and removed on a clean stop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from orchestrator.errors import InputError, OrchestratorError

log = logging.getLogger("orchestrator.serving")

# Servers keep idle connections longer than clients do, so it is always the client that
# closes an idle one (no request is ever sent on a connection the server is closing).
KEEP_ALIVE_SECONDS = 75
GRACEFUL_SHUTDOWN_SECONDS = 3


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) to (host, port); port 0 picks a free one."""
    host, colon, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:0 for any free port)")
    return host, int(port)


def bind(host: str, port: int, *, backlog: int = 256) -> socket.socket:
    """A listening socket (inheritable, so uvicorn can serve it); one clear error if it cannot be had."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OrchestratorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str, *, scheme: str = "http", path: str = "/") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{sock.getsockname()[1]}{path}"


def server_config(app: Any, **options: Any) -> uvicorn.Config:
    """The uvicorn settings both servers use (h11, no lifespan, no access log), plus `options`."""
    return uvicorn.Config(
        app,
        http="h11",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **options,
    )


class AnnouncingServer(uvicorn.Server):
    """Says where it listens only once it really serves; `on_stopping` first when it stops
    (a trickling answer or an open event stream would otherwise hold the graceful shutdown)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None], on_stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_stopping = on_stopping

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stopping()
        await super().shutdown(sockets=sockets)


def run_server(server: AnnouncingServer, sock: socket.socket) -> None:
    """Serve on sock until SIGTERM or SIGINT."""
    with quiet_signals(), sock:
        server.run(sockets=[sock])


def remove_url_file(url_file: Path | None, url: str) -> None:
    """On a clean stop: the URL file goes, unless another server has written its own there since."""
    if url_file is None:
        return
    with contextlib.suppress(OSError):
        if url_file.read_text().strip() == url:
            url_file.unlink()


@contextlib.contextmanager
def quiet_signals() -> Iterator[None]:
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
