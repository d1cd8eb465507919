"""`serve`: the REST API and the web console (orchestrator/api), optionally with the engine in-process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.context import G

app = typer.Typer()


@app.command()
def serve(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on; port 0 picks a free one")] = "127.0.0.1:8080",
    engine: Annotated[
        bool, typer.Option("--engine", help="run the engine in this process (standing by if another holds the lease)")
    ] = False,
    tokens: Annotated[
        Path | None,
        typer.Option("--tokens", help="file of 'sha256:<hex> ROLE [NAME]' lines (or env ORCHESTRATOR_API_TOKENS)"),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM)")] = None,
    url_file: Annotated[Path | None, typer.Option("--url-file", help="write the URL here once listening")] = None,
    max_lag: Annotated[
        int, typer.Option(min=0, help="events the read models may lag and /readyz still answer ready")
    ] = 1000,
    poll_interval: Annotated[float | None, typer.Option(help="--engine: seconds between poll cycles")] = None,
    hash_token: Annotated[
        bool, typer.Option("--hash-token", help="print a tokens-file line for the token on stdin, and exit")
    ] = False,
    role: Annotated[str, typer.Option(help="--hash-token: read-only or operator")] = "operator",
    name: Annotated[str, typer.Option(help="--hash-token: a name for the token (shown in logs)")] = "",
) -> None:
    """Serve the REST API and the web console (with --engine, run the engine here too) until SIGINT/SIGTERM."""
    if hash_token:
        from orchestrator.api.auth import hash_token_line

        print(hash_token_line(sys.stdin.readline(), role, name))
        return
    from orchestrator.api.server import ServeOptions
    from orchestrator.api.server import serve as run_service

    run_service(
        ServeOptions(
            store=G.store,
            agent_state=G.agent_state,
            listen=listen,
            engine=engine,
            tokens_file=tokens,
            tls_cert=tls_cert,
            tls_key=tls_key,
            url_file=url_file,
            max_lag=max_lag,
            poll_interval=poll_interval,
        )
    )
