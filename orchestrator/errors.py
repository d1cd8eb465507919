"""Errors a user can act on.

Every error the CLI shows is one of these: one line saying what is wrong and
what to do. Exit codes are part of the CLI contract (see README).
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class: a problem the user can fix; never a bug."""

    exit_code = 1


class StoreError(OrchestratorError):
    """The store URL is wrong, unreachable, or points at something not ours."""

    exit_code = 3


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (a connection refused or dropped); it may come back."""


class InputError(OrchestratorError):
    """Invalid parameters, unknown flow, malformed JSON, bad option value."""

    exit_code = 4


class UnknownFlowError(InputError):
    pass


class InvalidParametersError(InputError):
    pass


class CommandRefusedError(OrchestratorError):
    """Validation refused a command (the reference engine's canDoAction)."""

    exit_code = 5


class EntityLockedError(CommandRefusedError):
    pass


class DuplicateCommandError(CommandRefusedError):
    pass


class SeedConflictError(CommandRefusedError):
    """Another seed wrote the same entities at the same time; this one left nothing behind."""


class NotFoundError(OrchestratorError):
    exit_code = 6


class AgentError(OrchestratorError):
    """The agent cannot be used right now; the engine waits and retries."""

    exit_code = 7


class AgentUnavailableError(AgentError):
    pass


class AgentProtocolError(AgentError):
    """The agent answered something that is not a valid answer."""


class EngineBusyError(OrchestratorError):
    """Another engine process holds the engine lease on this store."""

    exit_code = 8


class LeaseLostError(OrchestratorError):
    """This engine's lease of a pool is no longer its own (another engine took over, or it expired)."""

    exit_code = 12


def damaged_event(originator_id: object, version: object, topic: str, detail: str) -> StoreError:
    """An event in the store cannot be read: stop, say where, change nothing."""
    return StoreError(
        f"the store holds an event that cannot be read (aggregate {originator_id}, event {version}, "
        f"{topic.rsplit(':', 1)[-1]}: {detail}); nothing was changed; restore the store from a backup"
    )
