"""Event-sourced command orchestrator."""
