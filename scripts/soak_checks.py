"""What the soak checks besides the invariants: the truth mid-run, its own views, the engine logs; and diagnosis.

Mid-run, every entity no command holds is compared with the agent's storage
(a mismatch can be undone by later commands before the end). At the end, every
cancel that returned must be on record, the soak's long-lived Orchestrator must
show what a fresh one reads, and no engine log may hold a traceback. Each
volume the inventory and the agent disagree on is explained: which agent task
made or deleted it, and what the engine made of that task.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

from orchestrator import Orchestrator, RootCommand
from orchestrator.domain.inventory import Disk, Template, Vm
from orchestrator.domain.model import parse_agent_task_key
from orchestrator.testing import SimulatedAgent, expected_storage
from scripts.soak_report import Figures

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
Image = tuple[str, str]  # (storage domain, image)


class TruthCheck:
    """Invariant 7 while the engine runs, on every entity no command holds.

    Only the soak accepts commands and it is busy here, so an entity without locks now has no
    command in flight and none can start: its volumes on the agent must be what the inventory
    says. An image on the agent that neither the inventory nor a command in flight names must
    not exist. (The final check alone can miss a mismatch that later commands happen to undo.)
    """

    def __init__(self, agent: SimulatedAgent, figures: Figures) -> None:
        self.agent = agent
        self.figures = figures
        self.reported: set[str] = set()  # images already reported: one problem each

    def run(self, orch: Orchestrator, in_flight: Iterable[UUID], cycle: int) -> None:
        busy = busy_images(orch, in_flight)  # read before the inventory: a command ending meanwhile is in both
        claims = inventory_claims(orch)
        on_agent = agent_volumes(self.agent)
        wrong: list[tuple[str, str]] = []
        self.figures.truth_checks += 1
        for key, (entity, volumes, idle) in claims.items():
            self.figures.truth_compared += idle
            if idle and on_agent.get(key, set()) != volumes:
                have = ", ".join(sorted(on_agent.get(key, set()))) or "nothing"
                wrong.append((key[1], f"{entity} is idle; the inventory has {sorted(volumes)}, the agent {have}"))
        for key, volumes in on_agent.items():
            if key not in claims and key[1] not in busy:
                wrong.append((key[1], f"the agent has {', '.join(sorted(volumes))} unknown to the inventory"))
        if not wrong:
            return
        journal = self.agent.backend.journal()
        for image, text in wrong:
            if image in self.reported:
                continue
            self.reported.add(image)
            self.figures.problems.append(f"cycle {cycle}: truth differs on image {image}: {text}")
            self.figures.diagnosis += [f"cycle {cycle}, image {image}: {text}", *tasks_behind(orch, journal, image)]


def busy_images(orch: Orchestrator, in_flight: Iterable[UUID]) -> set[str]:
    """The images the tasks of commands in flight name."""
    busy: set[str] = set()
    for command_id in in_flight:
        for task in orch.command(command_id).tasks.values():
            busy |= {str(task.args[k]) for k in ("image_id", "target_image_id") if k in task.args}
    return busy


def inventory_claims(orch: Orchestrator) -> dict[Image, tuple[str, set[str], bool]]:
    """(storage domain, image) -> (the entity that claims it, the volumes it should hold, whether it is idle)."""
    claims: dict[Image, tuple[str, set[str], bool]] = {}
    for e in orch.inventory():
        idle = not e.locks
        if isinstance(e, Disk):
            claims[(e.storage_domain_id, e.image_id)] = (str(e.ref), set() if e.removed else set(e.volumes), idle)
        elif isinstance(e, Template):
            for sd, image, volume in e.images:
                claims[(sd, image)] = (str(e.ref), set() if e.removed else {volume}, idle)
        elif isinstance(e, Vm) and e.status == "hibernated" and not e.removed:
            for sd, image, volume in e.memory_volumes:
                claims[(sd, image)] = (str(e.ref), {volume}, idle)
    return claims


def agent_volumes(agent: SimulatedAgent) -> dict[Image, set[str]]:
    on_agent: dict[Image, set[str]] = {}
    for v in agent.backend.storage_snapshot()["volumes"]:
        on_agent.setdefault((v["storage_domain_id"], v["image_id"]), set()).add(v["volume_id"])
    return on_agent


def diagnose(orch: Orchestrator, agent: SimulatedAgent) -> list[str]:
    """For each volume the inventory and the agent disagree on, the agent tasks and commands behind it."""
    expected = expected_storage(orch.inventory())
    actual = agent.storage().triples()
    journal = agent.backend.journal()
    lines = []
    for side, triples in (("only in the inventory", expected - actual), ("only on the agent", actual - expected)):
        for sd, image, volume in sorted(triples):
            lines.append(f"{volume} ({image} on {sd}) is {side}")
            lines += tasks_behind(orch, journal, image, volume)
    return lines


def tasks_behind(orch: Orchestrator, journal: list[dict[str, Any]], image: str, volume: str | None = None) -> list[str]:
    """The agent tasks that made or deleted a volume (or deleted its image), and what the engine made of them."""
    lines = []
    for row in journal:
        names_image = f'"{image}"' in row["args"]
        deleted_image = row["verb"] == "delete_image" and names_image
        made = f'"{volume}"' in row["args"] if volume else names_image and row["verb"] != "delete_image"
        if not (made or deleted_image):
            continue
        parsed = parse_agent_task_key(row["key"])
        detail = ""
        if parsed is not None:
            command = orch.command(parsed[0])
            task = command.tasks.get(parsed[1])
            seen = f"{task.status.value} ({task.end_kind})" if task else "unknown task"
            detail = (
                f" - {command.flow} {command.id} {command.status.value} ({command.outcome_reason}); "
                f"the engine has this task as {seen}"
            )
        state = f"{row['state']}/{row['result'] or '-'}" + (" reverted" if row["reverted"] else "")
        lines.append(f"    agent task {row['verb']} {state}{detail}")
    return lines


def compare_views(
    figures: Figures, truth: Orchestrator, long_lived: Orchestrator, accepted: dict[UUID, str], cancelled: list[UUID]
) -> None:
    """The soak's first Orchestrator object against the store; every cancel that returned is recorded."""
    for command_id in cancelled:
        if truth.command(command_id).cancel_reason is None:
            figures.problems.append(
                f"request_cancel of {accepted[command_id]} {command_id} returned, but the store has no cancel request"
            )
    stale = [
        f"{flow} {command_id}"
        for command_id, flow in accepted.items()
        if command_view(long_lived.command(command_id)) != command_view(truth.command(command_id))
    ]
    if stale:
        figures.problems.append(
            f"the soak's long-lived Orchestrator shows {len(stale)} command(s) otherwise than the store "
            f"(e.g. {', '.join(stale[:3])})"
        )


def command_view(command: RootCommand) -> tuple[Any, ...]:
    """What a user reads of a command: version, status, cancel request, and each task's state."""
    tasks = sorted((t.task_id, t.status.value, t.agent_task_id, t.cleared) for t in command.tasks.values())
    return command.version, command.status.value, command.cancel_reason, tasks


def scan_logs(figures: Figures, workdir: Path) -> None:
    """An engine traceback is a problem; a log record of several lines is worth a note; the leases
    taken and lost are counted."""
    multi_line = 0
    example = ""
    for path in sorted(workdir.glob("engine-*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            last = text.strip().splitlines()[-1]
            figures.problems.append(f"traceback in {path}: {last}")
        figures.write_conflicts += text.count("store refused a write")
        figures.lease_takes += text.count("took the lease of pool")
        figures.lease_losses += text.count("lost the lease of pool")
        for line in text.splitlines():
            if line.strip() and not LOG_RECORD.match(line) and not line.startswith("orchestrator: crash point"):
                multi_line += 1
                example = example or f"{path.name}: {line.strip()[:150]}"
    if multi_line:
        figures.notes.append(f"{multi_line} engine log line(s) continue a record over several lines, e.g. {example}")
