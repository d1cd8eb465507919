"""Value types shared by the domain: entities, lock modes, statuses, ids."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from hashlib import sha1
from uuid import UUID, uuid5

from orchestrator.errors import InputError

DEFAULT_POOL = "default"  # the storage pool of a store that configures none (its agent: the simulated one)

# Namespace for every id the engine derives (entity aggregate ids, task ids).
ID_NAMESPACE = UUID("6c0f5c1e-3a59-4b7e-9d59-3c1b8e0e7a11")
ENTITY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ENTITY_ID = re.compile(ENTITY_ID_PATTERN)


class EntityType(StrEnum):
    VM = "vm"
    DISK = "disk"
    IMAGE = "image"
    STORAGE_DOMAIN = "storage_domain"
    TEMPLATE = "template"
    SNAPSHOT = "snapshot"
    STORAGE_POOL = "storage_pool"


class LockMode(StrEnum):
    READ = "read"  # shared
    WRITE = "write"  # exclusive


@dataclass(frozen=True, order=True)
class EntityRef:
    type: EntityType
    id: str

    @property
    def key(self) -> str:
        return f"{self.type}:{self.id}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, text: str) -> EntityRef:
        """Parse `TYPE:ID` as typed on the command line."""
        kind, sep, ident = text.partition(":")
        types = ", ".join(t.value for t in EntityType)
        if not sep or not ident:
            raise InputError(f"entity {text!r} is not TYPE:ID (types: {types})")
        try:
            entity_type = EntityType(kind)
        except ValueError:
            raise InputError(f"unknown entity type {kind!r} (types: {types})") from None
        if not _ENTITY_ID.match(ident):
            raise InputError(f"entity id {ident!r} is not valid (letters, digits, . _ -; max 64)")
        return cls(entity_type, ident)


@dataclass(frozen=True)
class EntityUse:
    """An entity a command or task touches, and whether it only reads it."""

    ref: EntityRef
    mode: LockMode

    def to_record(self) -> list[str]:
        """[type, id, mode], as events store it."""
        return [self.ref.type.value, self.ref.id, self.mode.value]

    @classmethod
    def from_record(cls, record: list[str]) -> EntityUse:
        return _entity_use(record[0], record[1], record[2])


@lru_cache(maxsize=1 << 16)
def _entity_use(entity_type: str, entity_id: str, mode: str) -> EntityUse:
    """Entity uses are immutable and repeat a lot (a storage domain in every task): share them."""
    return EntityUse(EntityRef(EntityType(entity_type), entity_id), LockMode(mode))


class VmStatus(StrEnum):
    UP = "up"
    DOWN = "down"
    HIBERNATED = "hibernated"


class StorageDomainStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class ImageSetStatus(StrEnum):
    """A template's or a snapshot's: locked while the command that makes it runs, ok once made."""

    LOCKED = "locked"
    OK = "ok"


class TaskStatus(StrEnum):
    PLANNED = "planned"  # recorded with the command, no agent task id yet
    RUNNING = "running"  # the agent accepted it; agent task id attached
    SUCCEEDED = "succeeded"  # the agent reported it finished with success
    FAILED = "failed"  # anything else: failed, refused, vanished, zombie, never submitted


class EndKind(StrEnum):
    """Why a task ended, beyond succeeded/failed."""

    FINISHED = "finished"  # the agent reported an end
    REFUSED = "refused"  # the agent refused to create it
    NOT_SUBMITTED = "not_submitted"  # the engine stopped before submitting it (G1)
    VANISHED = "vanished"  # the agent no longer knows it
    ZOMBIE = "zombie"  # ran longer than the zombie age; stopped
    STOPPED = "stopped"  # stopped by the engine (orphan, cancellation)
    TERMINATED = "terminated"  # its command was terminated by an operator (its agent gone for good)


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"  # recorded with all expected tasks; no agent task id recorded yet
    RUNNING = "running"  # the agent accepted (or refused) tasks; they run there
    ENDING = "ending"  # all tasks ended; the end action is due
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (CommandStatus.SUCCEEDED, CommandStatus.FAILED)


class FailureCause(StrEnum):
    """Why the engine decided that a command fails (beyond one of its tasks failing)."""

    CANCELLED = "cancelled"  # a user asked
    REFUSED = "refused"  # the agent refused one of its tasks, so the rest are never submitted
    SUBMISSION_CUT_SHORT = "submission_cut_short"  # a crash cut its submission short (recovery decides it)


class EndAction(StrEnum):
    SUCCESS = "end_successfully"
    FAILURE = "end_with_failure"


@lru_cache(maxsize=1 << 16)
def entity_aggregate_id(ref: EntityRef) -> UUID:
    """Each inventory entity is an aggregate whose id derives from (type, id)."""
    return uuid5(ID_NAMESPACE, ref.key)


def derive_id(command_id: UUID, label: str) -> UUID:
    """Ids planned by a command are derived from its id, so a retry plans the same ids."""
    return uuid5(command_id, label)


def derived_text(command_id: UUID, label: str) -> str:
    """`str(derive_id(command_id, label))`, without building the UUID (a command plans a few of them
    on every accept): the same name-based SHA-1 UUID (RFC 4122, version 5), written out directly."""
    digest = bytearray(sha1(command_id.bytes + label.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def short_id(prefix: str, command_id: UUID, label: str) -> str:
    return f"{prefix}-{derive_id(command_id, label).hex[:12]}"


def agent_task_key(root_command_id: UUID | str, task_id: str) -> str:
    """The idempotency key given to the agent: it names the command and the task."""
    return f"{root_command_id}/{task_id}"


def parse_agent_task_key(key: str) -> tuple[UUID, str] | None:
    root, sep, task = key.partition("/")
    if not sep:
        return None
    try:
        return UUID(root), task
    except ValueError:
        return None
