"""Storage pools: which agent runs the tasks of which storage domains.

A pool is an inventory entity holding the endpoint of its agent (one per pool,
the reference engine's SPM host). A store that configures none has one pool,
`default`, whose agent is the simulated one beside the store.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from eventsourcing.persistence import IntegrityError
from pydantic import BaseModel, Field

from orchestrator.domain.inventory import StorageDomain, StoragePool
from orchestrator.domain.model import DEFAULT_POOL, EntityRef, EntityType
from orchestrator.errors import CommandRefusedError, InputError, NotFoundError
from orchestrator.service import CommandService
from orchestrator.store.unit_of_work import InventoryUnit


class PoolView(BaseModel):
    """`pools list --json`: a storage pool, its agent and its storage domains."""

    pool_id: str
    name: str
    agent_url: str | None = Field(description="the agent's JSON-RPC endpoint; none: the simulated agent in process")
    configured: bool = Field(description="registered with `pools add` (the default pool needs not be)")
    storage_domains: list[str]


def check_agent_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise InputError(f"agent URL {url[:100]!r} is not an http(s)://HOST:PORT/PATH endpoint (no credentials in it)")
    return url


def add_pool(service: CommandService, pool_id: str, agent_url: str | None, name: str | None = None) -> PoolView:
    ref = EntityRef.parse(f"{EntityType.STORAGE_POOL.value}:{pool_id}")
    url = check_agent_url(agent_url) if agent_url else None
    unit = InventoryUnit(service.store)
    if unit.get(ref) is not None:
        raise CommandRefusedError(f"storage pool {pool_id} exists; change its agent with 'pools set-agent'")
    try:
        service.save(StoragePool.register(pool_id, name=name or pool_id, agent_url=url))
    except IntegrityError:
        raise CommandRefusedError(f"storage pool {pool_id} was added at the same time by someone else") from None
    return _view_of(service, pool_id)


def set_pool_agent(service: CommandService, pool_id: str, agent_url: str | None) -> PoolView:
    url = check_agent_url(agent_url) if agent_url else None
    for _ in range(10):
        unit = InventoryUnit(service.store)
        pool = unit.get(EntityRef(EntityType.STORAGE_POOL, pool_id))
        if pool is None:
            if pool_id != DEFAULT_POOL:
                raise NotFoundError(f"no storage pool {pool_id}; add it with 'pools add'")
            return add_pool(service, pool_id, url)
        assert isinstance(pool, StoragePool)
        pool.set_agent(url)
        try:
            service.save(pool)
        except IntegrityError:
            service.store.forget([pool.id])
            continue
        return _view_of(service, pool_id)
    raise CommandRefusedError(f"storage pool {pool_id} kept changing; try again")


def list_pools(service: CommandService) -> list[PoolView]:
    entities = service.inventory()
    pools = {e.entity_id: e for e in entities if isinstance(e, StoragePool) and not e.removed}
    domains: dict[str, list[str]] = {}
    for e in entities:
        if isinstance(e, StorageDomain) and not e.removed:
            domains.setdefault(e.pool_id, []).append(e.entity_id)
    ids = sorted(set(pools) | set(domains) | {DEFAULT_POOL})
    return [_view(pool_id, pools.get(pool_id), sorted(domains.get(pool_id, []))) for pool_id in ids]


def pool_agent_url(service: CommandService, pool_id: str) -> str | None:
    """A pool's agent endpoint (None: the pool has none; the default pool's is the simulated agent)."""
    pool = service.entity(EntityRef(EntityType.STORAGE_POOL, pool_id))
    return pool.agent_url if isinstance(pool, StoragePool) and not pool.removed else None


def _view_of(service: CommandService, pool_id: str) -> PoolView:
    return next(p for p in list_pools(service) if p.pool_id == pool_id)


def _view(pool_id: str, pool: StoragePool | None, domains: list[str]) -> PoolView:
    return PoolView(
        pool_id=pool_id,
        name=pool.name if pool else pool_id,
        agent_url=pool.agent_url if pool else None,
        configured=pool is not None,
        storage_domains=domains,
    )
