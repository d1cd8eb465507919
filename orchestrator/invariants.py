"""The seven invariants of DESIGN.md section 7, checked against the real store and agent.

Used by the demo, the tests, the soak script and the benchmarks. Each check
reads the event log, the read models and the simulated agent's own journal
(what the agent really did), never the engine's memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from eventsourcing.utils import get_topic
from pydantic import BaseModel

from orchestrator.agent.simulator import SimulatedAgent
from orchestrator.application import Orchestrator
from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, InventoryEntity, Template, Vm
from orchestrator.domain.model import CommandStatus, TaskStatus, parse_agent_task_key


class InvariantResult(BaseModel):
    number: int
    name: str
    ok: bool
    detail: str


def all_command_ids(orch: Orchestrator) -> list[UUID]:
    ids: list[UUID] = []
    position = 0
    topic = get_topic(RootCommand.Accepted)
    while True:
        page = orch.app.recorder.select_notifications(
            start=position, limit=1000, topics=[topic], inclusive_of_start=False
        )
        ids += [UUID(str(n.originator_id)) for n in page]
        if len(page) < 1000:
            return ids
        position = page[-1].id


def expected_storage(entities: Iterable[InventoryEntity]) -> set[tuple[str, str, str]]:
    """The volumes the inventory says exist on the agent: (storage domain, image, volume)."""
    out: set[tuple[str, str, str]] = set()
    for e in entities:
        if e.removed:
            continue
        if isinstance(e, Disk):
            out |= {(e.storage_domain_id, e.image_id, v) for v in e.volumes}
        elif isinstance(e, Vm) and e.status == "hibernated":
            out |= {(v[0], v[1], v[2]) for v in e.memory_volumes}
        elif isinstance(e, Template):
            out |= {(i[0], i[1], i[2]) for i in e.images}
    return out


def check_invariants(
    orch: Orchestrator,
    agent: SimulatedAgent,
    *,
    expected_commands: Iterable[UUID] = (),
    verify_projections: bool = True,
) -> list[InvariantResult]:
    ids = all_command_ids(orch)
    commands = [orch.command(i) for i in ids]
    journal = {row["key"]: row for row in agent.backend.journal()}
    inventory = orch.inventory()
    results: list[InvariantResult] = []

    def add(number: int, name: str, problems: list[str], good: str) -> None:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        results.append(InvariantResult(number=number, name=name, ok=not problems, detail=shown or good))

    # 1. No false success.
    problems = []
    succeeded = [c for c in commands if c.status is CommandStatus.SUCCEEDED]
    for c in succeeded:
        for t in c.tasks.values():
            row = journal.get(c.task_key(t.task_id))
            if t.status is not TaskStatus.SUCCEEDED or t.agent_task_id is None:
                problems.append(f"{c.flow} {c.id} succeeded but task {t.task_id} is {t.status.value}")
            elif row is None or row["state"] != "finished" or row["result"] != "success" or row["reverted"]:
                problems.append(f"{c.flow} {c.id} succeeded but the agent did not finish task {t.task_id}")
    add(1, "no false success", problems, f"{len(succeeded)} succeeded command(s), every task done on the agent")

    # 2. No leak.
    ours = {c.id for c in commands}
    problems = [
        f"agent still holds task {row['agent_task_id']} ({row['verb']}, {row['state']})"
        for key, row in journal.items()
        if row["cleared_at"] is None and not row["vanished"] and (p := parse_agent_task_key(key)) and p[0] in ours
    ]
    orch.projections.catch_up()
    active = orch.queries.active_tasks()
    problems += [f"active-tasks view still lists {a.task_id}" for a in active]
    add(2, "no leak", problems, "agent holds no uncleared task of ours; active-tasks view empty")

    # 3. No stuck lock.
    in_flight = {c.id for c in commands if c.in_flight}
    problems = [
        f"{e.ref} locked by {holder} which is not in flight"
        for e in inventory
        for holder in e.locks
        if UUID(holder) not in in_flight
    ]
    add(3, "no stuck lock", problems, "no entity is locked by an ended command")

    # 4. Every command ends.
    problems = [f"{c.flow} {c.id} is still {c.status.value}" for c in commands if c.in_flight]
    by_outcome: dict[str, int] = {}
    for c in commands:
        by_outcome[c.status.value] = by_outcome.get(c.status.value, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(by_outcome.items())) or "no commands"
    add(4, "every command ends", problems, summary)

    # 5. Projections are true.
    problems = []
    if verify_projections:
        for projection in orch.projections.projections:
            result = orch.projections.verify(projection)
            problems += [f"{projection.name}: {d}" for d in result.differences]
    add(5, "projections are true", problems, "every projection equals a rebuild from the log")

    # 6. Nothing lost.
    problems = [f"command {i} is not in the log" for i in expected_commands if i not in ours]
    if len(ids) != len(set(ids)):
        problems.append("a command was accepted twice")
    for c in commands:
        versions = [e.originator_version for e in orch.app.events.get(c.id)]
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"history of {c.id} has gaps: {versions}")
    add(6, "nothing lost", problems, f"{len(ids)} command(s), each once, histories complete")

    # 7. Truth matches.
    expected = expected_storage(inventory)
    actual = agent.storage().triples()
    problems = [f"inventory has {v[2]} ({v[1]} on {v[0]}) but the agent does not" for v in sorted(expected - actual)]
    problems += [f"agent has {v[2]} ({v[1]} on {v[0]}) unknown to the inventory" for v in sorted(actual - expected)]
    add(7, "truth matches", problems, f"inventory and agent agree on {len(actual)} volume(s)")
    return results
