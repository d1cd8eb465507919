"""What the soak counts (`Figures`), the JSON made of it, each command's outcome, and the table printed at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from rich.table import Table

from orchestrator import Orchestrator, RootCommand
from orchestrator.domain.model import CommandStatus, EndKind, TaskStatus
from orchestrator.testing import InvariantResult
from scripts.soak_config import EARLY_KILL_SECONDS, FAULT_KINDS, FLOW_NAMES


@dataclass
class Figures:
    """Everything the soak counts; the table and the JSON are made from it."""

    seed: int
    store: str
    agent_state: str
    workdir: str
    cycles: int = 0
    engines: int = 1  # engine processes at once
    seconds: float = 0.0
    drain_seconds: float = 0.0
    engine_starts: int = 0
    kills: int = 0
    early_kills: int = 0
    submit_batches: Counter[str] = field(default_factory=Counter)
    submitted: Counter[str] = field(default_factory=Counter)
    refused_locked: int = 0
    refused_state: int = 0
    refused_contention: int = 0
    conflicts_tried: int = 0
    parallel_templates: int = 0
    cancels: int = 0
    cancels_racing: int = 0
    cancels_too_late: int = 0
    agent_kills: int = 0
    recovery_crashes: int = 0
    rebuilds: Counter[str] = field(default_factory=Counter)
    vms_seeded: int = 0
    max_in_flight: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    outcomes_by_flow: dict[str, Counter[str]] = field(default_factory=dict)
    failure_causes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    invariants: list[InvariantResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    truth_checks: int = 0
    truth_compared: int = 0
    write_conflicts: int = 0
    lease_takes: int = 0  # "took the lease of pool" in the engine logs (the drain's excepted)
    lease_losses: int = 0  # "lost the lease of pool" in the engine logs

    @property
    def violations(self) -> int:
        return sum(1 for r in self.invariants if not r.ok) + len(self.problems)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "store": self.store,
            "agent_state": self.agent_state,
            "workdir": self.workdir,
            "cycles": self.cycles,
            "engines": self.engines,
            "seconds": round(self.seconds, 1),
            "drain_seconds": round(self.drain_seconds, 1),
            "engine_starts": self.engine_starts,
            "kills": self.kills,
            "early_kills": self.early_kills,
            "submit_batches": dict(self.submit_batches),
            "commands": {
                "submitted": sum(self.submitted.values()),
                "submitted_by_flow": dict(self.submitted),
                "refused": self.refused_locked + self.refused_state + self.refused_contention,
                "refused_locked": self.refused_locked,
                "refused_state": self.refused_state,
                "refused_contention": self.refused_contention,
                "conflicts_tried": self.conflicts_tried,
                "parallel_templates": self.parallel_templates,
                "cancels_requested": self.cancels,
                "cancels_racing_submission": self.cancels_racing,
                "cancels_too_late": self.cancels_too_late,
                "max_in_flight": self.max_in_flight,
                "ended": dict(self.outcomes),
                "ended_by_flow": {f: dict(c) for f, c in sorted(self.outcomes_by_flow.items())},
                "failure_causes": dict(self.failure_causes),
            },
            "vms_seeded": self.vms_seeded,
            "recovery_crashes": self.recovery_crashes,
            "agent_kills": self.agent_kills,
            "rebuilds": dict(self.rebuilds),
            "faults": {k: self.faults.get(k, 0) for k in FAULT_KINDS},
            "invariants": [r.model_dump() for r in self.invariants],
            "problems": self.problems,
            "diagnosis": self.diagnosis,
            "notes": self.notes,
            "truth_checks_mid_run": self.truth_checks,
            "idle_images_compared_mid_run": self.truth_compared,
            "engine_write_conflicts": self.write_conflicts,
            "lease_takes": self.lease_takes,
            "lease_losses": self.lease_losses,
            "violations": self.violations,
        }


def tally_outcomes(figures: Figures, orch: Orchestrator, accepted: dict[UUID, str]) -> None:
    """How each accepted command (id -> flow) ended, overall and by flow, and why those that failed failed."""
    for command_id, flow in accepted.items():
        command = orch.command(command_id)
        outcome = command.status.value
        if command.status is CommandStatus.FAILED and command.flagged:
            outcome = "flagged"
        elif not command.ended:
            outcome = "in flight"
        figures.outcomes[outcome] += 1
        figures.outcomes_by_flow.setdefault(flow, Counter())[outcome] += 1
        if command.status is CommandStatus.FAILED:
            figures.failure_causes[failure_cause(command)] += 1


def failure_cause(command: RootCommand) -> str:
    """Why a command failed, in a few words (the first cause that applies)."""
    if command.flagged:
        return "end action gave up"
    if command.cancel_reason:
        return "cancelled"
    if command.failure_reason and "no agent task id" in command.failure_reason:
        return "cut short by a crash (G1)"
    kinds = {t.end_kind for t in command.tasks.values() if t.status is TaskStatus.FAILED}
    for kind, words in (
        (EndKind.VANISHED, "task vanished"),
        (EndKind.REFUSED, "task refused"),
        (EndKind.ZOMBIE, "zombie task"),
        (EndKind.FINISHED, "task failed on the agent"),
        (EndKind.STOPPED, "task stopped"),
        (EndKind.NOT_SUBMITTED, "task not submitted"),
    ):
        if kind in kinds:
            return words
    return f"other: {(command.failure_reason or command.outcome_reason)[:60]}"


def render(figures: Figures) -> Table:
    f = figures
    table = Table("what", "figure", title=f"soak: seed {f.seed}, {f.store}", show_lines=False)
    table.add_row("cycles", f"{f.cycles} in {f.seconds:.0f}s (final run until idle: {f.drain_seconds:.1f}s)")
    table.add_row(
        "engine" if f.engines == 1 else f"engines ({f.engines} at once)",
        f"{f.engine_starts} starts, {f.kills} SIGKILLs ({f.early_kills} within {EARLY_KILL_SECONDS}s of a start)",
    )
    table.add_row("pool leases", f"{f.lease_takes} taken, {f.lease_losses} lost (from the engine logs)")
    batches = ", ".join(f"{n}x batch {b}" for b, n in sorted(f.submit_batches.items(), key=lambda i: int(i[0])))
    table.add_row("submit batch per start", batches)
    by_flow = ", ".join(f"{flow} {f.submitted[flow]}" for flow in FLOW_NAMES)
    table.add_row("commands submitted", f"{sum(f.submitted.values())} ({by_flow}); at most {f.max_in_flight} in flight")
    table.add_row(
        "commands refused",
        f"{f.refused_locked + f.refused_state + f.refused_contention} ({f.refused_locked} locked, "
        f"{f.refused_state} by validation, {f.refused_contention} store contention); "
        f"{f.conflicts_tried} deliberate conflicts, {f.parallel_templates} parallel CreateTemplate accepted",
    )
    table.add_row(
        "cancels requested",
        f"{f.cancels} at random, {f.cancels_racing} racing a submission "
        f"(and {f.cancels_too_late} too late: the command had ended or its end action begun)",
    )
    table.add_row("crashes inside recovery", str(f.recovery_crashes))
    table.add_row(
        "read-model rebuilds beside the engine", ", ".join(f"{n} {k}" for k, n in sorted(f.rebuilds.items())) or "none"
    )
    ended = ", ".join(f"{n} {o}" for o, n in sorted(f.outcomes.items()))
    table.add_row("commands ended", ended or "none")
    for flow in FLOW_NAMES:
        counts = f.outcomes_by_flow.get(flow, Counter())
        table.add_row(f"  {flow}", ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "none")
    table.add_row("failed because", ", ".join(f"{n} {c}" for c, n in f.failure_causes.most_common()) or "-")
    table.add_row("faults injected", ", ".join(f"{k} {f.faults.get(k, 0)}" for k in FAULT_KINDS))
    table.add_row("VMs seeded", str(f.vms_seeded))
    table.add_row(
        "truth checked mid-run",
        f"{f.truth_checks} times, {f.truth_compared} idle images compared with the agent",
    )
    table.add_row("engine write conflicts", f"{f.write_conflicts} (store refused a write; the engine re-read)")
    for note in f.notes:
        table.add_row("note", note)
    for r in f.invariants:
        mark = "[green]holds[/]" if r.ok else "[red]VIOLATED[/]"
        table.add_row(f"invariant {r.number}: {r.name}", f"{mark} - {r.detail}")
    for problem in f.problems:
        table.add_row("[red]problem[/]", problem)
    colour = "green" if f.violations == 0 else "red"
    table.add_row("[bold]invariant violations[/]", f"[bold {colour}]{f.violations}[/]")
    return table
