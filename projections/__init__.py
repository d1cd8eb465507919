"""Read models fed from the orchestrator's event log, and their rebuild."""
