"""Removing the read-model rows of pruned root commands (an operator's prune: orchestrator/retention/).

Every row a read model holds about a root command was inserted by the command's
`Accepted` event (later events only update or delete those rows), so the rows
to remove are found from that event alone, each by its key: the command and its
children in `proj_commands`, the entities each declared in
`proj_command_entities`, each task in `proj_entity_tasks` and
`proj_active_tasks`. The statements run in the caller's transaction, the one
that deletes the commands' events, so a read model never shows a command the
log no longer holds, and a rebuild from the log gives the same rows. The
transaction also counts itself in the tracking table, so that a catch-up built
from the log before it is not written after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.store.tables import Cursor, Tables
from projections.runner import TRACKING_TABLE
from projections.statements import StatementBatch

# A row of the tracking table that counts the prunes' transactions: a catch-up that read its batch
# before one (and writes it only now, under the lock) finds the count changed and reads it again.
PRUNES_ROW = "(prunes)"
COUNT_PRUNE = (
    f"INSERT INTO {TRACKING_TABLE} VALUES (?, 1) "
    f"ON CONFLICT (projection) DO UPDATE SET position = {TRACKING_TABLE}.position + 1"
)
DELETE_COMMAND_ENTITY = "DELETE FROM proj_command_entities WHERE entity_type = ? AND entity_id = ? AND command_id = ?"


def delete_command_rows(cursor: Cursor, tables: Tables, accepted: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Delete every read-model row of these root commands, given each one's id and the state of its
    `Accepted` event (as stored: `entities`, `children` with their `tasks`). Returns the keys deleted."""
    out = StatementBatch()
    for root, state in accepted:
        out.delete("proj_commands", "command_id", root)
        for etype, eid, _mode in state.get("entities", ()):
            out.add(DELETE_COMMAND_ENTITY, etype, eid, root)
        for child in state.get("children", ()):
            child_id = str(child["child_id"])
            if child_id != root:
                out.delete("proj_commands", "command_id", child_id)
                declared = {(etype, eid) for task in child["tasks"] for etype, eid, _mode in task["entities"]}
                for etype, eid in sorted(declared):
                    out.add(DELETE_COMMAND_ENTITY, etype, eid, child_id)
            for task in child["tasks"]:
                out.delete("proj_entity_tasks", "task_id", str(task["task_id"]))
                out.delete("proj_active_tasks", "task_id", str(task["task_id"]))
    keys = len(out)
    if keys:
        out.run(cursor, tables)
    cursor.execute(COUNT_PRUNE, (PRUNES_ROW,))
    return keys
