"""What a service process holds for its whole life, and how a request reaches it.

`ApiContext` is built once at start (orchestrator/api/server.py) and hung on
the app (`app.state.context`). Storage pools, their agents and several engines
will be added here: a registry of pools (and their agents) beside the gateway,
and `engines` holding one EngineHost per engine this process runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.auth import AccessPolicy, Principal, Role, TokenSet
from orchestrator.api.changes import ChangeFeed
from orchestrator.api.engine_host import EngineHost
from orchestrator.api.gateway import StoreGateway
from orchestrator.api.metrics import ApiMetrics, MetricsObserver
from orchestrator.config import EngineSettings

DEFAULT_MAX_LAG = 1000  # events a read model may be behind the log and the service still be ready


@dataclass
class ApiContext:
    gateway: StoreGateway
    access: AccessPolicy
    metrics: ApiMetrics
    feed: ChangeFeed
    engines: list[EngineHost] = field(default_factory=list)  # `--engine`: one today
    max_lag: int = DEFAULT_MAX_LAG
    secure_cookies: bool = False  # under TLS

    @classmethod
    def open(
        cls,
        store: str | None,
        agent_state: Path | None,
        tokens: TokenSet | None,
        *,
        engine_settings: EngineSettings | None = None,
        max_lag: int = DEFAULT_MAX_LAG,
        secure_cookies: bool = False,
    ) -> ApiContext:
        """Open the store (once for the process), and the engine's own when it runs here."""
        gateway = StoreGateway.open(store, agent_state)
        context = cls(gateway, AccessPolicy(tokens), ApiMetrics(), ChangeFeed(gateway), [], max_lag, secure_cookies)
        try:
            if engine_settings is not None:
                observer = MetricsObserver(context.metrics)
                context.engines.append(EngineHost(store, agent_state, engine_settings, observer))
            context.metrics.watch_store(gateway, lambda: context.engine)
        except BaseException:
            context.close()
            raise
        return context

    @property
    def engine(self) -> EngineHost | None:
        return self.engines[0] if self.engines else None

    def start(self) -> None:
        self.feed.start()
        for engine in self.engines:
            engine.start()

    def close(self) -> None:
        self.feed.stop()
        for engine in self.engines:
            engine.stop()
        with contextlib.suppress(Exception):
            self.gateway.close()


def context_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


# Documents the bearer scheme in the OpenAPI document; the policy itself reads the headers.
_bearer = HTTPBearer(auto_error=False, description="a token from the tokens file (not needed on an open API)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def reader(request: Request, _: Credentials) -> Principal:
    """Anyone who may read: a read-only or operator token, a console session, or anyone on an open API."""
    return context_of(request).access.authenticate(request, Role.READ_ONLY)


def operator(request: Request, _: Credentials) -> Principal:
    """Anyone who may submit and cancel: an operator token or session, or anyone on an open API."""
    return context_of(request).access.authenticate(request, Role.OPERATOR)
