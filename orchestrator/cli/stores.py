"""Opening the store for one command, without the engine, and saying clearly why it cannot be.

The composition root (`orchestrator/bootstrap/`) imports the engine and the
agents, which a command that only reads or records commands never uses (they
cost a fifth of a second at every start). Such a command opens a store that is
set up already itself, with the parts `Orchestrator.open` assembles (the checked
event store, its read models, the service over them); a store that still needs
setting up or upgrading goes through `Orchestrator.open`.

A read-only copy of a store (a backup, a read-only mount) is opened for reading
only: nothing is caught up or written, and answers say how far behind the log
the read models are. When a store cannot be opened because of permissions, the
error says so rather than calling the file unreadable.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from orchestrator.cli.context import G
from orchestrator.errors import InputError, NotFoundError, StoreError

if TYPE_CHECKING:
    from orchestrator.domain.commands import RootCommand
    from orchestrator.domain.model import EntityRef
    from orchestrator.service import CommandService
    from orchestrator.store import EventStore, StoreConfig
    from projections import ReadModels, ViewFreshness

# What a command needs of the store: to record, to catch the read models up when it may, or only to read.
Access = Literal["write", "write-if-possible", "read"]
MIN_PREFIX = 6
_ID_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]*$")
AMBIGUOUS_SHOWN = 10


@dataclass
class Session:
    """One command's view of the store: the event store, and (opened on first use) the read models."""

    config: StoreConfig
    events: EventStore
    writable: bool
    opened_read_models: ReadModels | None = field(default=None, repr=False)

    @property
    def read_models(self) -> ReadModels:
        if self.opened_read_models is None:
            from projections import ReadModels

            self.opened_read_models = ReadModels.open(self.config, self.events, read_only=not self.writable)
        return self.opened_read_models

    @cached_property
    def service(self) -> CommandService:
        from orchestrator.service import CommandService

        return CommandService(self.config, self.events, self.running_tasks_on)

    def running_tasks_on(self, ref: EntityRef) -> list[str]:
        """What validation asks of the read models (opened only then: a read never asks)."""
        return self.read_models.running_tasks_on(ref)

    def command(self, ident: UUID, version: int | None = None) -> RootCommand:
        """A root command from its own history (what the service answers, without loading the service)."""
        from orchestrator.domain.commands import RootCommand

        found = self.events.get(ident, version=version)
        if not isinstance(found, RootCommand):
            raise NotFoundError(f"no command {ident} in {self.config.redacted}")
        return found

    def freshness(self, name: str) -> ViewFreshness:
        """Catch the read models up (when the store may be written), then how far `name` is behind."""
        from projections import ViewFreshness

        if self.writable:
            return self.read_models.freshness(name)
        status = {s.name: s for s in self.read_models.runner.status()}[name]
        return ViewFreshness(position=status.position, head=status.head, lag=status.lag)

    def resolve_command_id(self, text: str, *, roots_only: bool = True) -> UUID:
        """A full command id, or the one id that starts with a prefix of at least 6 characters."""
        wanted = text.strip().lower()
        try:
            return UUID(wanted)
        except ValueError:
            pass
        shown = text.strip()[:40]
        if not _ID_PREFIX.match(wanted) or len(wanted) > 36:  # no command has such an id (as before prefixes)
            raise NotFoundError(f"{shown!r} is not a command id (a UUID) or the start of one (hex digits and '-')")
        if len(wanted) < MIN_PREFIX:
            raise InputError(f"command id prefix {shown!r} is too short: give at least {MIN_PREFIX} characters")
        if self.writable:
            self.read_models.catch_up()
        found = self.read_models.queries.command_ids_starting(wanted, roots_only=roots_only, limit=AMBIGUOUS_SHOWN + 1)
        if not found:
            raise NotFoundError(f"no command id starts with {shown} in {self.config.redacted}")
        if len(found) > 1:
            more = ", ..." if len(found) > AMBIGUOUS_SHOWN else ""
            raise InputError(
                f"command id prefix {shown} is ambiguous: it starts {', '.join(found[:AMBIGUOUS_SHOWN])}{more}; "
                "give more characters"
            )
        return UUID(found[0])

    def close(self) -> None:
        if self.opened_read_models is not None:
            self.opened_read_models.close()
        self.events.close()


def access_for_id(text: str) -> Access:
    """A full command id needs only the events; a prefix is found in the read models, caught up first."""
    try:
        UUID(text.strip())
    except ValueError:
        return "write-if-possible"
    return "read"


@contextmanager
def open_session(access: Access, *, create: bool = False) -> Iterator[Session]:
    """The store of `--store` / ORCHESTRATOR_STORE, opened for what the command needs."""
    from orchestrator.store import parse_store_url, store_url_from_env

    config = parse_store_url(store_url_from_env(G.store))
    session = _open(config, access, create=create)
    try:
        yield session
    finally:
        session.close()


def _open(config: StoreConfig, access: Access, *, create: bool) -> Session:
    from orchestrator.store import LAYOUT_VERSION, EventStore, check_store, dialect_for

    writable = access == "write" or (access == "write-if-possible" and may_write(config))
    if access == "write" and not may_write(config):
        raise StoreError(read_only_problem(config))
    with diagnosed(config):
        try:
            meta = check_store(config)
        except StoreError:
            if not create:
                raise
            meta = {}
        if writable and meta.get("layout") != LAYOUT_VERSION:
            return _through_composition_root(config, create=create)
        events = EventStore.open(config, dialect_for(config), create_tables=False, read_only=not writable)
    return Session(config, events, writable)


def _through_composition_root(config: StoreConfig, *, create: bool) -> Session:
    """A store to set up or upgrade first: Orchestrator.open does that (and imports the engine)."""
    from orchestrator.bootstrap import Orchestrator

    orch = Orchestrator.open(G.store, agent_state=G.agent_state, create=create)
    return Session(config, orch.store, True, orch.read_models)


# ---- permissions ---------------------------------------------------------------------------


def may_write(config: StoreConfig) -> bool:
    """Whether this process may write the store (always assumed for PostgreSQL: the server decides)."""
    if config.kind != "sqlite" or config.path is None or not config.path.exists():
        return True
    path = config.path
    if not os.access(path, os.W_OK):
        return False
    if os.access(path.parent, os.W_OK | os.X_OK):
        return True
    # A directory we cannot write: SQLite can still write if its -wal and -shm files exist and are ours to write.
    return all(os.access(path.with_name(path.name + suffix), os.W_OK) for suffix in ("-wal", "-shm"))


def read_only_problem(config: StoreConfig) -> str:
    return (
        f"{config.redacted} is read-only for this user ({_who_may(config)}); commands that record "
        "(submit, cancel, retry, terminate, run, seed) need write access, reading commands (list, show, inspect) work"
    )


def permission_problem(config: StoreConfig) -> str | None:
    """What keeps this process from reading a SQLite store, when permissions are the reason."""
    path = config.path
    if config.kind != "sqlite" or path is None:
        return None
    if path.parent.exists() and not os.access(path.parent, os.X_OK):
        return f"cannot open {config.redacted}: permission denied on its directory {path.parent} ({_who_may(config)})"
    if path.exists() and not os.access(path, os.R_OK):
        return f"cannot read {config.redacted}: permission denied ({_who_may(config)}); run as a user who may read it"
    shm = path.with_name(path.name + "-shm")
    if path.exists() and not shm.exists() and not os.access(path.parent, os.W_OK):
        return (
            f"cannot read {config.redacted} in place: SQLite must create {shm.name} beside it to read it and "
            f"{path.parent} is not writable for this user; copy the store to a writable directory"
        )
    return None


def _who_may(config: StoreConfig) -> str:
    assert config.path is not None
    try:
        st = config.path.stat()
    except OSError:
        return f"this process runs as uid {os.geteuid()}"
    mode = stat.filemode(st.st_mode)
    return f"the file is {mode}, owner uid {st.st_uid}; this process runs as uid {os.geteuid()}"


@contextmanager
def diagnosed(config: StoreConfig | None = None) -> Iterator[None]:
    """A store error caused by permissions says so (the store layer reports the file as unreadable)."""
    try:
        yield
    except StoreError as exc:
        if config is None:
            from orchestrator.store import parse_store_url, store_url_from_env

            config = parse_store_url(store_url_from_env(G.store))
        problem = permission_problem(config)
        if problem is not None:
            raise StoreError(problem) from exc
        raise


def agent_state_for(store: str | None, explicit: Path | None) -> Path:
    """The agent state of `--agent-state`, else the store's own (see `default_agent_state_path`)."""
    if explicit is not None:
        return explicit
    from orchestrator.store import parse_store_url, store_url_from_env
    from orchestrator.testing import default_agent_state_path

    return default_agent_state_path(parse_store_url(store_url_from_env(store)))
