"""What a flow is: validated parameters, a plan, and two end actions.

A flow plans a root command from its parameters and the inventory: the
entities it declares (read = shared lock, write = exclusive lock), its child
commands and every task each child expects, and any new inventory entity it
creates (locked by the command from the start). End actions change the
inventory; they must be idempotent because recovery may run them again.
Reverting tasks on the agent is the engine's part (see `revert_on_failure`).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, TypeVar
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic_core import PydanticCustomError

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import InventoryEntity
from orchestrator.domain.model import (
    ENTITY_ID_PATTERN,
    EntityRef,
    EntityType,
    EntityUse,
    LockMode,
    derived_text,
)
from orchestrator.domain.payloads import ChildRecord, TaskRecord
from orchestrator.errors import CommandRefusedError, InputError, InvalidParametersError

MAX_PARAMS_BYTES = 16 * 1024
MAX_NAME_CHARS = 64  # a template's name
MAX_TEXT_CHARS = 200  # a description, a cancel or terminate reason

EntityId = Annotated[str, StringConstraints(pattern=ENTITY_ID_PATTERN)]

# Text a user gives that is stored and shown again (names, descriptions, reasons) must be one
# inert line: no newline (it would forge an output line), no escape sequence (it would restyle or
# rewrite a terminal), no other control character, no bidirectional override. The same set as
# orchestrator/cli/terminal.py escapes when printing text stored before this check existed.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def unsafe_character(text: str) -> str | None:
    """The first character of `text` that may not be stored, described (None: the text is fine)."""
    found = _UNSAFE_TEXT.search(text)
    if found is None:
        return None
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x1b": "an escape (ESC)"}
    char = found.group()
    kind = names.get(char, "a bidirectional control" if ord(char) > 0x9F else "a control character")
    return f"{kind} (U+{ord(char):04X}) at character {found.start() + 1}"


def check_user_text(text: str, what: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Refuse, with one line, text that is too long or holds a control character; the text otherwise."""
    if len(text) > max_chars:
        raise InputError(f"{what} is {len(text)} characters long; the limit is {max_chars}")
    problem = unsafe_character(text)
    if problem is not None:
        raise InputError(f"{what} contains {problem}; give one line of plain text")
    return text


def _refuse_unsafe(text: str) -> str:
    problem = unsafe_character(text)
    if problem is not None:
        raise PydanticCustomError("unsafe_text", "must be one line of plain text, not {problem}", {"problem": problem})
    return text


# Free-text parameters of a flow: one line of plain text. A flow of one's own may combine
# PlainText with limits of its own: Annotated[str, StringConstraints(max_length=...), PlainText].
PlainText = AfterValidator(_refuse_unsafe)
ShortName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS), PlainText]
FreeText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), PlainText]


class FlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class InventoryAccess(Protocol):
    """The inventory as a flow sees it while planning or ending a command."""

    def get(self, ref: EntityRef) -> InventoryEntity | None: ...

    def add(self, entity: InventoryEntity) -> None: ...

    def prefetch(self, refs: Iterable[EntityRef]) -> None:
        """Load these entities in one go (an optimisation; `get` works without it)."""


RunningTasksLookup = Callable[[EntityRef], list[str]]

E = TypeVar("E", bound=InventoryEntity)


def require(inventory: InventoryAccess, ref: EntityRef, cls: type[E]) -> E:
    entity = inventory.get(ref)
    if entity is None or entity.removed:
        raise CommandRefusedError(f"{ref.type.value.replace('_', ' ')} {ref.id} does not exist")
    assert isinstance(entity, cls)
    return entity


@dataclass
class TaskPlan:
    task_id: str
    verb: str
    args: dict[str, str | int]
    entities: list[EntityUse]

    def to_record(self) -> TaskRecord:
        return {
            "task_id": self.task_id,
            "verb": self.verb,
            "args": dict(self.args),
            "entities": [e.to_record() for e in self.entities],
        }


@dataclass
class ChildPlan:
    child_id: str
    command_type: str
    tasks: list[TaskPlan]

    def to_record(self) -> ChildRecord:
        return {
            "child_id": self.child_id,
            "command_type": self.command_type,
            "tasks": [t.to_record() for t in self.tasks],
        }


@dataclass
class Plan:
    summary: str
    entities: list[EntityUse]
    children: list[ChildPlan] = field(default_factory=list)
    new_entities: list[InventoryEntity] = field(default_factory=list)


@dataclass
class PlanContext:
    command_id: UUID
    inventory: InventoryAccess
    running_tasks_on: RunningTasksLookup

    def task_id(self, label: str) -> str:
        return derived_text(self.command_id, f"task/{label}")

    def child_id(self, label: str) -> str:
        return derived_text(self.command_id, f"child/{label}")


def uses(*pairs: tuple[EntityType, str, LockMode]) -> list[EntityUse]:
    """Entity uses, first declaration of an entity wins, order kept."""
    seen: dict[EntityRef, EntityUse] = {}
    for entity_type, entity_id, mode in pairs:
        ref = EntityRef(entity_type, entity_id)
        seen.setdefault(ref, EntityUse(ref, mode))
    return list(seen.values())


class Flow(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    params_model: ClassVar[type[FlowParams]]
    revert_on_failure: ClassVar[bool] = False

    def parse_params(self, raw: str | dict[str, Any]) -> FlowParams:
        """Validate parameters at the boundary, with one clear line on failure."""
        if isinstance(raw, str):
            if len(raw.encode()) > MAX_PARAMS_BYTES:
                raise InvalidParametersError(
                    f"{self.name} parameters are {len(raw.encode())} bytes; the limit is {MAX_PARAMS_BYTES}"
                )
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise InvalidParametersError(f"{self.name} parameters are not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise InvalidParametersError(f"{self.name} parameters must be a JSON object")
        try:
            return self.params_model.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()[:3]
            )
            fields = ", ".join(self.params_model.model_fields)
            raise InvalidParametersError(f"invalid {self.name} parameters: {problems} (fields: {fields})") from None

    @abstractmethod
    def plan(self, ctx: PlanContext, params: Any) -> Plan: ...

    @abstractmethod
    def end_successfully(self, command: RootCommand, inventory: InventoryAccess) -> None: ...

    @abstractmethod
    def end_with_failure(self, command: RootCommand, inventory: InventoryAccess) -> None: ...

    # helpers for end actions

    @staticmethod
    def succeeded_entities(command: RootCommand, entity_type: EntityType) -> list[str]:
        """Ids of entities of a type touched by tasks whose work the agent did."""
        out: list[str] = []
        for task in command.tasks.values():
            if task.effect_done:
                out += [e.ref.id for e in task.entities if e.ref.type is entity_type and e.ref.id not in out]
        return out
