"""The invariants of docs/invariants.md, checked against the real store and every pool's agent.

Used by the demo, the tests, the soak script and the benchmarks. Each check
reads the event log, the read models and the simulated agent's own journal
(what the agent really did), never an engine's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.utils import get_topic
from pydantic import BaseModel

from orchestrator.domain.commands import RootCommand
from orchestrator.domain.inventory import Disk, InventoryEntity, StorageDomain, Template, Vm
from orchestrator.domain.model import (
    DEFAULT_POOL,
    CommandStatus,
    EndKind,
    FailureCause,
    TaskStatus,
    VmStatus,
    parse_agent_task_key,
)
from orchestrator.store import writer_of
from orchestrator.testing.simulator_control import InProcessControl, SimulatorControl

if TYPE_CHECKING:
    from orchestrator.bootstrap import Orchestrator
    from orchestrator.testing.simulated_agent import SimulatedAgent

# Each pool's simulated agent, as the checks read it (its journal and its storage).
Agents = Mapping[str, SimulatorControl]


class InvariantResult(BaseModel):
    number: int
    name: str
    ok: bool
    detail: str


@dataclass
class Evidence:
    """What the checks read, once: every command with its events, the inventory, the agent's journal."""

    ids: list[UUID]
    commands: list[RootCommand]
    events: dict[UUID, list[Any]]
    journal: dict[str, dict[str, Any]]
    inventory: list[InventoryEntity]


def all_command_ids(orch: Orchestrator) -> list[UUID]:
    return list(orch.store.originators([get_topic(RootCommand.Accepted)]))


def expected_storage(entities: Iterable[InventoryEntity]) -> set[tuple[str, str, str]]:
    """The volumes the inventory says exist on the agent: (storage domain, image, volume)."""
    out: set[tuple[str, str, str]] = set()
    for e in entities:
        if e.removed:
            continue
        if isinstance(e, Disk):
            out |= {(e.storage_domain_id, e.image_id, v) for v in e.volumes}
        elif isinstance(e, Vm) and e.status is VmStatus.HIBERNATED:
            out |= {(v[0], v[1], v[2]) for v in e.memory_volumes}
        elif isinstance(e, Template):
            out |= {(i[0], i[1], i[2]) for i in e.images}
    return out


def agents_of(agent: SimulatedAgent | Agents) -> Agents:
    """A single in-process simulated agent stands for the default pool's."""
    if isinstance(agent, Mapping):
        return agent
    return {DEFAULT_POOL: InProcessControl(agent.backend)}


def gather(orch: Orchestrator, agents: Agents) -> Evidence:
    ids = all_command_ids(orch)
    commands = [orch.command(i) for i in ids]
    return Evidence(
        ids=ids,
        commands=commands,
        events={c.id: orch.store.events_of(c.id) for c in commands},
        journal={row["key"]: row for control in agents.values() for row in control.journal()},
        inventory=orch.inventory(),
    )


def no_false_success(ev: Evidence) -> list[str]:
    problems = []
    for c in (c for c in ev.commands if c.status is CommandStatus.SUCCEEDED):
        for t in c.tasks.values():
            row = ev.journal.get(c.task_key(t.task_id))
            if t.status is not TaskStatus.SUCCEEDED or t.agent_task_id is None:
                problems.append(f"{c.flow} {c.id} succeeded but task {t.task_id} is {t.status.value}")
            elif row is None or row["state"] != "finished" or row["result"] != "success" or row["reverted"]:
                problems.append(f"{c.flow} {c.id} succeeded but the agent did not finish task {t.task_id}")
    return problems


def no_leak(orch: Orchestrator, ev: Evidence) -> list[str]:
    ours = {c.id for c in ev.commands}
    problems = [
        f"agent still holds task {row['agent_task_id']} ({row['verb']}, {row['state']})"
        for key, row in ev.journal.items()
        if row["cleared_at"] is None and not row["vanished"] and (p := parse_agent_task_key(key)) and p[0] in ours
    ]
    orch.read_models.runner.catch_up()
    return problems + [f"active-tasks view still lists {a.task_id}" for a in orch.read_models.queries.active_tasks()]


def no_stuck_lock(ev: Evidence) -> list[str]:
    in_flight = {c.id for c in ev.commands if c.in_flight}
    return [
        f"{e.ref} locked by {holder} which is not in flight"
        for e in ev.inventory
        for holder in e.locks
        if UUID(holder) not in in_flight
    ]


def every_command_ends(ev: Evidence) -> list[str]:
    return [f"{c.flow} {c.id} is still {c.status.value}" for c in ev.commands if c.in_flight]


def projections_are_true(orch: Orchestrator, ev: Evidence, verify: bool) -> list[str]:
    problems = []
    if verify:
        for projection in orch.read_models.runner.projections:
            result = orch.read_models.runner.verify(projection)
            problems += [f"{projection.name}: {d}" for d in result.differences]
    indexed = set(orch.store.in_flight_ids())
    in_flight = {c.id for c in ev.commands if c.in_flight}
    problems += [f"in-flight index lacks {i}, which is in flight" for i in sorted(in_flight - indexed)]
    problems += [f"in-flight index holds {i}, which is not in flight" for i in sorted(indexed - in_flight)]
    return problems


def nothing_lost(
    ev: Evidence, expected: Iterable[UUID], pruned: Collection[UUID] = frozenset(), left: Iterable[UUID] = ()
) -> list[str]:
    """Expected commands are in the log, except those an operator pruned (`left`: pruned ones that
    still have events: a prune removes a command whole)."""
    ours = set(ev.ids)
    problems = [f"command {i} is not in the log" for i in expected if i not in ours and i not in pruned]
    problems += [f"command {i} was pruned but the store still holds events of it" for i in left]
    if len(ev.ids) != len(ours):
        problems.append("a command was accepted twice")
    for ident, events in ev.events.items():
        versions = [e.originator_version for e in events]
        if versions != list(range(1, len(versions) + 1)):
            problems.append(f"history of {ident} has gaps: {versions}")
    return problems


def truth_matches(agents: Agents, ev: Evidence) -> list[str]:
    """Each pool's agent holds exactly the volumes the inventory says its storage domains hold."""
    pool_of = {e.entity_id: e.pool_id for e in ev.inventory if isinstance(e, StorageDomain)}
    problems: list[str] = []
    for pool, control in sorted(agents.items()):
        expected = {v for v in expected_storage(ev.inventory) if pool_of.get(v[0], DEFAULT_POOL) == pool}
        actual = control.storage().triples()
        problems += _differences(expected, actual, "" if len(agents) == 1 else f" of pool {pool}")
    return problems


def _differences(expected: set[tuple[str, str, str]], actual: set[tuple[str, str, str]], whose: str) -> list[str]:
    problems = [
        f"inventory has {v[2]} ({v[1]} on {v[0]}) but the agent{whose} does not" for v in sorted(expected - actual)
    ]
    return problems + [
        f"agent{whose} has {v[2]} ({v[1]} on {v[0]}) unknown to the inventory" for v in sorted(actual - expected)
    ]


# Task ends that fail a command for a reason of its own.
OWN_TASK_FAILURES = (EndKind.FINISHED, EndKind.REFUSED, EndKind.VANISHED, EndKind.ZOMBIE)


def failure_causes(command: RootCommand, events: Sequence[Any]) -> list[str]:
    """Why a failed command failed, from its history: only reasons that concern it count."""
    causes = [
        f"task {t.task_id[:8]} {t.end_kind.value}"
        for t in command.tasks.values()
        if t.status is TaskStatus.FAILED and t.end_kind in OWN_TASK_FAILURES
    ]
    if command.cancel_reason is not None:
        causes.append("cancelled")
    if command.flagged:
        causes.append("an end action gave up")
    for e in events:
        cut_short = isinstance(e, RootCommand.FailureDecided) and e.cause == FailureCause.SUBMISSION_CUT_SHORT
        if cut_short and writer_of(e).get("phase") == "recovery":
            causes.append("a crash cut its submission short")
    return causes


def no_spurious_failure(ev: Evidence) -> list[str]:
    """A command fails only for a reason of its own; only recovery at an engine start records verdicts."""
    problems = []
    for c in ev.commands:
        events = ev.events[c.id]
        for e in events:
            if isinstance(e, RootCommand.Recovered) and writer_of(e).get("phase") != "recovery":
                problems.append(f"{c.flow} {c.id}: a '{e.verdict}' verdict was recorded outside recovery")
        if c.status is CommandStatus.FAILED and not failure_causes(c, events):
            problems.append(f"{c.flow} {c.id} failed for no reason of its own ({c.outcome_reason})")
    return problems


def fenced_writes(ev: Evidence) -> list[str]:
    """Under leases, one epoch of a pool is one engine, and a command's history never goes back to an
    older epoch (a deposed engine wrote nothing after its successor)."""
    problems = []
    engine_of: dict[tuple[str, int], str] = {}
    for c in ev.commands:
        last = 0
        for e in ev.events[c.id]:
            writer = writer_of(e)
            epoch, engine = writer.get("epoch"), writer.get("engine")
            if not isinstance(epoch, int) or epoch <= 0 or not isinstance(engine, str):
                continue  # not written under a lease (a service call, an engine without leases)
            first = engine_of.setdefault((c.pool_id, epoch), engine)
            if first != engine:
                problems.append(f"pool {c.pool_id} epoch {epoch} was written by two engines: {first} and {engine}")
            if epoch < last:
                problems.append(
                    f"{c.flow} {c.id}: version {e.originator_version} was written at epoch {epoch} after epoch {last}"
                )
            last = max(last, epoch)
    return sorted(set(problems))


def check_invariants(
    orch: Orchestrator,
    agent: SimulatedAgent | Agents,
    *,
    expected_commands: Iterable[UUID] = (),
    verify_projections: bool = True,
    pruned: Iterable[UUID] = (),
) -> list[InvariantResult]:
    """`pruned`: commands an operator pruned (orchestrator/retention/): no longer expected in the log."""
    agents = agents_of(agent)
    gone = set(pruned)
    ev = gather(orch, agents)
    outcomes: dict[str, int] = {}
    for c in ev.commands:
        outcomes[c.status.value] = outcomes.get(c.status.value, 0) + 1
    failed = outcomes.get("failed", 0)
    checks: list[tuple[str, Callable[[], list[str]], str]] = [
        ("no false success", lambda: no_false_success(ev), "every succeeded command's tasks were done on the agent"),
        ("no leak", lambda: no_leak(orch, ev), "agent holds no uncleared task of ours; active-tasks view empty"),
        ("no stuck lock", lambda: no_stuck_lock(ev), "no entity is locked by an ended command"),
        (
            "every command ends",
            lambda: every_command_ends(ev),
            ", ".join(f"{n} {s}" for s, n in sorted(outcomes.items())) or "no commands",
        ),
        (
            "projections are true",
            lambda: projections_are_true(orch, ev, verify_projections),
            "every projection equals a rebuild from the log; the in-flight index equals the log's",
        ),
        (
            "nothing lost",
            lambda: nothing_lost(ev, expected_commands, gone, [i for i in sorted(gone) if orch.store.events_of(i)]),
            f"{len(ev.ids)} command(s), each once, histories complete",
        ),
        ("truth matches", lambda: truth_matches(agents, ev), "inventory and agent agree on every volume"),
        (
            "no spurious failure",
            lambda: no_spurious_failure(ev),
            f"each of {failed} failed command(s) failed for a reason of its own; verdicts only from recovery",
        ),
        (
            "fenced writes",
            lambda: fenced_writes(ev),
            "each pool's epoch is one engine's; no history goes back to an older epoch",
        ),
    ]
    return [_result(n, name, check(), good) for n, (name, check, good) in enumerate(checks, start=1)]


def _result(number: int, name: str, problems: list[str], good: str) -> InvariantResult:
    shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return InvariantResult(number=number, name=name, ok=not problems, detail=shown or good)
