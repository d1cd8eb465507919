"""`orchestrator serve`: checks, listening, announcing, running and stopping the service.

It refuses to start, with one line and a non-zero exit, when it would listen on
an address other than loopback without tokens, when the tokens or the TLS files
cannot be used, or when the store cannot be opened. Once listening it prints
`orchestrator API serving at URL` (port 0 picks a free port) and, with
--url-file, writes the URL there (mode 0600; removed again on a clean stop).
SIGINT/SIGTERM stop it gracefully: the server stops answering, live streams
end, and the in-process engine stops after its current cycle.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from orchestrator.api.auth import TOKENS_ENV, is_loopback_host, load_tokens
from orchestrator.api.context import DEFAULT_MAX_LAG, ApiContext
from orchestrator.errors import InputError
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

log = logging.getLogger("orchestrator.api")


@dataclass
class ServeOptions:
    store: str | None = None
    agent_state: Path | None = None
    listen: str = "127.0.0.1:8080"
    engine: bool = False
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    url_file: Path | None = None
    max_lag: int = DEFAULT_MAX_LAG
    poll_interval: float | None = None


def check_tls(cert: Path | None, key: Path | None) -> None:
    if (cert is None) != (key is None):
        raise InputError("TLS needs both --tls-cert and --tls-key")
    if cert is None or key is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot use the TLS certificate {cert} with the key {key}: {exc.strerror or exc}") from None


def serve(options: ServeOptions) -> None:
    """Serve the API and the console until SIGINT/SIGTERM."""
    from orchestrator.api.app import create_app
    from orchestrator.config import load_engine_settings

    host, port = parse_listen(options.listen)
    tokens = load_tokens(options.tokens_file, os.environ.get(TOKENS_ENV))
    if tokens is None and not is_loopback_host(host):
        raise InputError(
            f"refusing to listen on {options.listen} without tokens: only a loopback address may serve an open API; "
            f"give --tokens FILE or {TOKENS_ENV} (make an entry with: orchestrator serve --hash-token)"
        )
    check_tls(options.tls_cert, options.tls_key)
    if options.url_file is not None and not options.url_file.parent.is_dir():
        raise InputError(f"cannot write the URL file {options.url_file}: directory does not exist")
    settings = load_engine_settings(poll_interval=options.poll_interval) if options.engine else None
    context = ApiContext.open(
        options.store,
        options.agent_state,
        tokens,
        engine_settings=settings,
        max_lag=options.max_lag,
        secure_cookies=options.tls_cert is not None,
    )
    try:
        sock = bind(host, port)
        url = url_of(sock, host, scheme="https" if options.tls_cert else "http")
        app = create_app(context)

        def announce() -> None:
            if options.url_file is not None:
                write_private_file(options.url_file, url + "\n")
            where = "with the engine in this process" if options.engine else "beside a separate engine"
            access = "tokens required" if tokens is not None else "open (loopback, no tokens)"
            print(f"orchestrator API serving at {url} ({where}; {access})", flush=True)

        config = server_config(  # no access log: refusals are logged by the access policy, without credentials
            app,
            ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
            ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        )
        server = AnnouncingServer(config, announce, context.feed.stop)  # live streams end first
        context.start()
        run_server(server, sock)
        remove_url_file(options.url_file, url)
    finally:
        context.close()
