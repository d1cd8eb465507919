"""Flows: what a command of each kind plans, and how it ends (see base.py); found through registry.py."""

from __future__ import annotations

from orchestrator.flows.base import Flow
from orchestrator.flows.registry import ENTRY_POINT_GROUP, FLOWS, get_flow, register_flow

__all__ = ["ENTRY_POINT_GROUP", "FLOWS", "Flow", "get_flow", "register_flow"]
