"""The API's routers, one module per resource; `ROUTERS` is what the app mounts.

New resources go here as modules of their own: storage pools and their agents
(`pools.py`, `agents.py`) and engines (`engines.py`) once they exist, each with
its documented models in orchestrator/api/models.py (or the CLI's, when it has one).
"""

from __future__ import annotations

from fastapi import APIRouter

from orchestrator.api.routes import commands, inventory, system

ROUTERS: list[APIRouter] = [commands.router, inventory.router, system.router]

__all__ = ["ROUTERS"]
