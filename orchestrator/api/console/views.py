"""What each console page shows, gathered from the gateway (the same answers the API gives)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.api.console.chart import Chart, activity_chart, in_flight_series
from orchestrator.api.context import ApiContext
from orchestrator.documents import CommandView, InventoryItemView, TaskView
from orchestrator.domain.model import EntityRef
from orchestrator.errors import NotFoundError
from orchestrator.flows import FLOWS
from orchestrator.inspection import HistoryEvent
from projections.documents import EntityTasksView
from projections.queries import CommandPageQuery, CommandRow, ViewFreshness

# Details of an inventory entity that name other entities (InventoryItemView.details), and their type.
DETAIL_LINKS = {"disks": "disk", "vm": "vm", "storage_domain": "storage_domain", "snapshots": "snapshot",
                "source_vm": "vm", "image": "image"}  # fmt: skip
IN_FLIGHT_SHOWN = 50
RECENT_SHOWN = 15


@dataclass
class Overview:
    in_flight: list[CommandRow]
    in_flight_more: bool
    recent: list[CommandRow]
    chart: Chart
    freshness: ViewFreshness


def overview(context: ApiContext) -> Overview:
    gateway = context.gateway
    fresh, flying = gateway.command_page(
        CommandPageQuery(in_flight=True, sort="created_at", descending=True, limit=IN_FLIGHT_SHOWN + 1)
    )
    _, recent = gateway.command_page(
        CommandPageQuery(statuses=("succeeded", "failed"), sort="ended_at", descending=True, limit=RECENT_SHOWN)
    )
    now = time.time()
    minutes = context.feed.tasks_ended_per_minute(now)
    since = minutes[0][0].isoformat()
    ends = [m.timestamp() + 60 for m, _ in minutes[:-1]] + [now]
    rows = gateway.commands_alive_since(since)
    chart = activity_chart(minutes, in_flight_series(rows, ends))
    return Overview(flying[:IN_FLIGHT_SHOWN], len(flying) > IN_FLIGHT_SHOWN, recent, chart, fresh)


@dataclass
class CommandPage:
    view: CommandView
    events: list[HistoryEvent]
    latest_version: int
    at_version: int | None
    children_by_id: dict[str, str]
    can_cancel: bool


def command_page(context: ApiContext, command_id: str, at_version: int | None) -> CommandPage:
    history = context.gateway.history(command_id, at_version)
    view = history.state
    latest = history.events[-1].version if history.events else view.version
    can_cancel = at_version is None and view.in_flight and not view.cancel_requested and view.status != "ending"
    children = {c.child_id: c.command_type for c in view.children}
    return CommandPage(view, history.events, latest, at_version, children, can_cancel)


@dataclass
class EntityPage:
    ref: EntityRef
    item: InventoryItemView | None
    tasks: EntityTasksView
    commands: list[CommandRow]


def entity_page(context: ApiContext, ref: EntityRef) -> EntityPage:
    tasks = context.gateway.tasks_of_entity(ref, running_only=False)
    item = context.gateway.entity(ref)
    _, commands = context.gateway.command_page(
        CommandPageQuery(entity=ref, include_children=True, sort="created_at", descending=True, limit=30)
    )
    if item is None and not tasks.tasks and not commands:
        raise NotFoundError(f"no {ref.type.value} {ref.id} in the inventory, and no task or command touches it")
    return EntityPage(ref, item, tasks, commands)


@dataclass
class TaskPage:
    task: TaskView
    command: CommandView
    child_type: str


def task_page(context: ApiContext, task_id: str, command_id: str | None) -> TaskPage:
    if command_id is None:
        rows = context.gateway.entities_of_task(task_id).entities
        if not rows:
            raise NotFoundError(
                f"no task {task_id} in flight; a task that was cleared is found through its command's page"
            )
        command_id = rows[0].root_command_id
    command = context.gateway.command(command_id)
    for task in command.tasks:
        if task.task_id == task_id:
            child = next((c.command_type for c in command.children if c.child_id == task.child_id), "")
            return TaskPage(task, command, child)
    raise NotFoundError(f"command {command_id} has no task {task_id}")


@dataclass
class FlowForm:
    name: str
    description: str
    fields: list[dict[str, Any]]


def flow_forms() -> list[FlowForm]:
    """A form per flow, from its parameters model (name, required, and a hint from the schema)."""
    forms = []
    for name, flow in FLOWS.items():
        schema = flow.params_model.model_json_schema()
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = []
        for field, spec in props.items():
            fields.append(
                {
                    "name": field,
                    "required": field in required,
                    "max_length": _max_length(spec),
                    "hint": spec.get("description") or ("required" if field in required else "optional"),
                }
            )
        forms.append(FlowForm(name, flow.description, fields))
    return forms


def flow_names() -> list[str]:
    return sorted(FLOWS)


def _max_length(spec: dict[str, Any]) -> int | None:
    if "maxLength" in spec:
        return int(spec["maxLength"])
    for option in spec.get("anyOf", []):
        if isinstance(option, dict) and "maxLength" in option:
            return int(option["maxLength"])
    return None


def clock(moment: datetime | None) -> str:
    """HH:MM:SS in UTC, for tables (the full time goes in a title)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def full_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
