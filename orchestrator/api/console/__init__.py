"""The web console: pages (pages.py), what they show (views.py), the chart (chart.py), templates and static files."""

from __future__ import annotations

from orchestrator.api.console.pages import STATIC_DIR, SignedOut, error_page, router, signed_out_redirect

__all__ = ["STATIC_DIR", "SignedOut", "error_page", "router", "signed_out_redirect"]
