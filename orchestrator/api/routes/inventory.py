"""Entities and tasks (guarantee G2), locks, the inventory."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from orchestrator.api.context import ApiContext, context_of, reader
from orchestrator.api.routes.common import READ_PROBLEMS, entity_ref
from orchestrator.documents import InventoryItemView, LockView
from orchestrator.domain.model import EntityRef
from orchestrator.errors import NotFoundError
from projections.documents import ActiveTasksView, EntityTasksView, TaskEntitiesView

router = APIRouter(prefix="/api/v1", tags=["entities and tasks"], dependencies=[Depends(reader)])
Context = Annotated[ApiContext, Depends(context_of)]
EntityType = Annotated[str, Path(min_length=1, max_length=40, description="vm, disk, image, storage_domain ...")]
EntityId = Annotated[str, Path(min_length=1, max_length=100)]


def _ref(entity_type: str, entity_id: str) -> EntityRef:
    return entity_ref(f"{entity_type}:{entity_id}")


@router.get(
    "/entities/{entity_type}/{entity_id}",
    response_model=InventoryItemView,
    responses=READ_PROBLEMS,
    summary="an inventory entity",
)
def entity(context: Context, entity_type: EntityType, entity_id: EntityId) -> InventoryItemView:
    """One entity of the inventory, its state and its locks (an item of `inventory --json`)."""
    ref = _ref(entity_type, entity_id)
    found = context.gateway.entity(ref)
    if found is None:
        raise NotFoundError(f"no {ref.type.value} {ref.id} in the inventory")
    return found


@router.get(
    "/entities/{entity_type}/{entity_id}/tasks",
    response_model=EntityTasksView,
    responses=READ_PROBLEMS,
    summary="tasks on an entity",
)
def tasks_of_entity(
    context: Context,
    entity_type: EntityType,
    entity_id: EntityId,
    running: Annotated[bool, Query(description="only tasks not yet ended")] = False,
) -> EntityTasksView:
    """Which tasks run on an entity, and does it have any (`orchestrator tasks --entity TYPE:ID`)."""
    return context.gateway.tasks_of_entity(_ref(entity_type, entity_id), running)


@router.get("/tasks/active", response_model=ActiveTasksView, responses=READ_PROBLEMS, summary="active tasks")
def active_tasks(context: Context) -> ActiveTasksView:
    """Every task not yet cleared on the agent; empty when idle (`orchestrator active`)."""
    return context.gateway.active_tasks()


@router.get(
    "/tasks/{task_id}/entities",
    response_model=TaskEntitiesView,
    responses=READ_PROBLEMS,
    summary="entities of a task",
)
def entities_of_task(
    context: Context, task_id: Annotated[str, Path(min_length=1, max_length=200, description="engine task id")]
) -> TaskEntitiesView:
    """The entities a task touches (`orchestrator entities --task ID`)."""
    return context.gateway.entities_of_task(task_id)


@router.get("/locks", response_model=list[LockView], responses=READ_PROBLEMS, summary="entity locks held")
def locks(
    context: Context, entity: Annotated[str | None, Query(max_length=200, description="only this TYPE:ID")] = None
) -> list[LockView]:
    """Entity locks held now (`orchestrator locks`)."""
    return context.gateway.locks(entity_ref(entity) if entity else None)


@router.get("/inventory", response_model=list[InventoryItemView], responses=READ_PROBLEMS, summary="the inventory")
def inventory(
    context: Context,
    include_removed: Annotated[bool, Query(alias="all", description="include removed entities")] = False,
) -> list[InventoryItemView]:
    """The engine-side inventory (`orchestrator inventory`)."""
    return context.gateway.inventory(include_removed)
