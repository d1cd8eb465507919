"""The simulated agent's clock and storage: tasks end by themselves, and their effect is applied then.

The verbs (docs/agent-protocol.md, Verbs) and what each does to the storage
model (storage domains, images and their volumes, in the agent's state file)
when it finishes with success, or when it is reverted. Every function works
inside the caller's write transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Set
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class VerbArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeleteImageArgs(VerbArgs):
    storage_domain_id: str
    image_id: str


class CreateVolumeArgs(VerbArgs):
    storage_domain_id: str
    image_id: str
    volume_id: str
    parent_id: str = ""


class CopyImageArgs(VerbArgs):
    source_storage_domain_id: str
    source_image_id: str
    target_storage_domain_id: str
    target_image_id: str
    target_volume_id: str


VERB_ARGS: dict[str, type[VerbArgs]] = {
    "delete_image": DeleteImageArgs,
    "create_volume": CreateVolumeArgs,
    "copy_image": CopyImageArgs,
}


def argument_problem(verb: str, args: dict[str, Any], domains: Set[str]) -> str:
    """Why a known verb cannot be created with these args on these storage domains; "" if it can."""
    try:
        parsed = VERB_ARGS[verb].model_validate(args)
    except ValidationError as exc:
        return f"bad arguments for {verb}: {exc.errors()[0]['msg']}"
    for name, value in parsed.model_dump().items():
        if name.endswith("storage_domain_id") and value not in domains:
            return f"unknown storage domain {value}"
    return ""


def advance(conn: sqlite3.Connection, now: float) -> None:
    """End every running task that is due, as its fate says; apply the effect of those that succeed."""
    due = conn.execute(
        "SELECT agent_task_id, verb, args, fate FROM tasks WHERE state = 'running' AND due_at <= ? ORDER BY due_at",
        (now,),
    ).fetchall()
    for agent_task_id, verb, args_json, fate in due:
        if fate == "vanish":
            conn.execute(
                "UPDATE tasks SET vanished = 1, state = 'aborted', result = 'failure',"
                " message = 'vanished', ended_at = ? WHERE agent_task_id = ?",
                (now, agent_task_id),
            )
            continue
        if fate == "fail":
            ok, message = False, "task failed (simulated fault)"
        else:
            ok, message = apply_effect(conn, verb, json.loads(args_json))
        conn.execute(
            "UPDATE tasks SET state = 'finished', result = ?, message = ?, ended_at = ?,"
            " effect_applied = ? WHERE agent_task_id = ?",
            ("success" if ok else "failure", message, now, 1 if ok else 0, agent_task_id),
        )


def apply_effect(conn: sqlite3.Connection, verb: str, args: dict[str, Any]) -> tuple[bool, str]:
    """Do what a finishing task does to the storage: (True, "") or (False, why it failed)."""

    def image_exists(sd: str, image: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM volumes WHERE storage_domain_id = ? AND image_id = ? LIMIT 1", (sd, image)
            ).fetchone()
            is not None
        )

    if verb == "delete_image":
        sd, image = args["storage_domain_id"], args["image_id"]
        if not image_exists(sd, image):
            return False, f"image {image} not found on {sd}"
        conn.execute("DELETE FROM volumes WHERE storage_domain_id = ? AND image_id = ?", (sd, image))
        return True, ""
    if verb == "create_volume":
        if conn.execute("SELECT 1 FROM volumes WHERE volume_id = ?", (args["volume_id"],)).fetchone():
            return False, f"volume {args['volume_id']} already exists"
        parent = args.get("parent_id")
        if (
            parent
            and not conn.execute(
                "SELECT 1 FROM volumes WHERE volume_id = ? AND image_id = ? AND storage_domain_id = ?",
                (parent, args["image_id"], args["storage_domain_id"]),
            ).fetchone()
        ):
            return False, f"parent volume {parent} not found in image {args['image_id']}"
        conn.execute(
            "INSERT INTO volumes (volume_id, image_id, storage_domain_id, parent_id) VALUES (?, ?, ?, ?)",
            (args["volume_id"], args["image_id"], args["storage_domain_id"], args.get("parent_id") or None),
        )
        return True, ""
    if verb == "copy_image":
        if not image_exists(args["source_storage_domain_id"], args["source_image_id"]):
            return False, f"source image {args['source_image_id']} not found"
        if image_exists(args["target_storage_domain_id"], args["target_image_id"]):
            return False, f"target image {args['target_image_id']} already exists"
        conn.execute(
            "INSERT INTO volumes (volume_id, image_id, storage_domain_id, parent_id) VALUES (?, ?, ?, NULL)",
            (args["target_volume_id"], args["target_image_id"], args["target_storage_domain_id"]),
        )
        return True, ""
    return False, f"unknown verb {verb}"


def undo_effect(conn: sqlite3.Connection, verb: str, args: dict[str, Any]) -> str:
    """Undo what a successful task did to the storage: "" once undone, or why it cannot be."""
    if verb == "create_volume":
        conn.execute("DELETE FROM volumes WHERE volume_id = ?", (args["volume_id"],))
    elif verb == "copy_image":
        conn.execute(
            "DELETE FROM volumes WHERE storage_domain_id = ? AND image_id = ?",
            (args["target_storage_domain_id"], args["target_image_id"]),
        )
    else:
        return f"{verb} cannot be reverted"
    return ""
