"""A long backlog's batches built by a second process while this one writes (projections/backlog.py).

The worker is a real process (`python -m projections.backlog_worker`); the
backlog threshold is lowered so that a few finished commands make a backlog.
Whatever the worker builds is written only if the positions it was built from
still hold under the lock; a worker that dies leaves the rest to this process;
a damaged event is the same clear error it is without the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import projections.backlog as backlog_module
import projections.runner as runner_module
from orchestrator.bootstrap import Orchestrator
from orchestrator.errors import StoreError
from orchestrator.store.url import parse_store_url
from orchestrator.testing import SimulatedAgent
from projections.backlog import BacklogBuilder
from projections.runner import ReadModelRunner
from tests.conftest import events_table, invariants_hold, store_sql, wait_for
from tests.test_catch_up_races import (
    assert_equal_to_a_rebuild,
    assert_whole,
    finished,
    forget_read_models,
    rows_of_each_batch,
)

BATCH = 40  # events a batch: a dozen RemoveVm make several


def worker_pids() -> list[int]:
    """Children of this process running the backlog's worker."""
    return [pid for pid, cmdline in _children() if b"projections.backlog_worker" in cmdline]


@contextmanager
def from_the_worker(
    monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, after_first: Callable[[], object] = lambda: None
) -> Iterator[list[int]]:
    """Catch-ups of `orch` hand every backlog on to the worker; yields the events of each batch it
    built. `after_first` runs once, when the first of them is back (outside any transaction)."""
    monkeypatch.setattr(orch.read_models.runner, "backlog_events", 1)
    built: list[int] = []
    real = ReadModelRunner._collect

    def collect(ahead: Any, builder: BacklogBuilder) -> Any:
        batch = real(ahead, builder)
        if batch is not None:
            built.append(batch.span.events)
            if len(built) == 1:
                after_first()
        return batch

    monkeypatch.setattr(ReadModelRunner, "_collect", staticmethod(collect))
    yield built


def test_a_backlog_built_by_the_worker_equals_a_rebuild(
    monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    head = orch.store.head()
    with from_the_worker(monkeypatch, orch) as built:
        assert orch.read_models.runner.catch_up(batch_size=BATCH) == head
    assert len(built) >= 3 and sum(built) > head // 2, f"the worker built {built} of {head} events"
    assert worker_pids() == [], "the worker outlived the catch-up"
    assert_whole(orch, agent_state, ids)


def test_a_backlog_handed_to_the_worker_is_written_in_larger_bounded_batches(
    monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    """Where the lock stops the engine, the batches of a backlog handed to the worker shrink to about
    BACKLOG_LOCKED_ROWS rows, not to the LOCKED_ROWS of a short one: fewer, larger commits."""
    ids = finished(orch, agent, 12)
    monkeypatch.setattr(orch.read_models.tables, "builds_catch_up_unlocked", True)
    monkeypatch.setattr(runner_module, "LOCKED_ROWS", 5)
    monkeypatch.setattr(runner_module, "MIN_BATCH", 2)
    written = rows_of_each_batch(monkeypatch)
    batches: dict[int, int] = {}
    for backlog_rows in (5, 20):  # the same backlog, under the short one's bound, then four times it
        forget_read_models(orch)
        monkeypatch.setattr(runner_module, "BACKLOG_LOCKED_ROWS", backlog_rows)
        written.clear()
        with from_the_worker(monkeypatch, orch) as built:
            assert orch.read_models.runner.catch_up(batch_size=BATCH) == orch.store.head()
        assert len(built) >= 3, f"the worker built {built}"
        batches[backlog_rows] = len(written)
    assert batches[20] < batches[5] / 2, f"batches written under each bound: {batches}"
    assert_whole(orch, agent_state, ids)


def test_a_worker_killed_midway_leaves_the_rest_to_this_process(
    monkeypatch: pytest.MonkeyPatch,
    orch: Orchestrator,
    agent: SimulatedAgent,
    agent_state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    killed: list[int] = []
    real = BacklogBuilder.result

    def result(builder: BacklogBuilder, writes: Any) -> Any:
        got = real(builder, writes)
        if got is not None and not killed:
            killed.extend(worker_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        return got

    monkeypatch.setattr(BacklogBuilder, "result", result)
    with caplog.at_level(logging.WARNING, "orchestrator.projections"), from_the_worker(monkeypatch, orch) as built:
        assert orch.read_models.runner.catch_up(batch_size=BATCH) == orch.store.head()
    assert len(killed) == 1 and built, "the worker answered once, then was killed"
    assert "backlog builder stopped" in caplog.text and "building in this process" in caplog.text
    assert worker_pids() == []
    assert_equal_to_a_rebuild(orch)
    invariants_hold(orch, agent_state, expected_commands=ids)


def test_a_catch_up_by_another_process_meanwhile_discards_what_the_worker_built(
    monkeypatch: pytest.MonkeyPatch,
    store_url: str,
    orch: Orchestrator,
    agent: SimulatedAgent,
    agent_state: Path,
) -> None:
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    other = Orchestrator.open(store_url, agent_state=agent_state, create=False)
    ours_after: list[int] = []  # batches `orch` wrote once the other had caught up
    caught_up: list[int] = []

    def other_catches_up() -> None:
        caught_up.append(other.read_models.catch_up())

    real = runner_module._CatchUpBatch.write

    def write(batch: Any, cur: Any, tables: Any) -> None:
        if caught_up:  # the other's own writes come before its catch-up returns
            ours_after.append(batch.span.events)
        real(batch, cur, tables)

    try:
        with from_the_worker(monkeypatch, orch, other_catches_up) as built:
            monkeypatch.setattr(runner_module._CatchUpBatch, "write", write)
            orch.read_models.runner.catch_up(batch_size=BATCH)
    finally:
        other.close()
    assert built and caught_up and caught_up[0] > 0, "the other caught up after the worker's first batch"
    assert ours_after == [], "a batch built from positions another process had moved on was written"
    assert_equal_to_a_rebuild(orch)
    invariants_hold(orch, agent_state, expected_commands=ids)


def test_a_damaged_event_in_a_backlog_is_the_same_clear_error_from_the_worker(
    monkeypatch: pytest.MonkeyPatch, store_url: str, orch: Orchestrator, agent: SimulatedAgent
) -> None:
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    last: Any = UUID(str(ids[-1])) if parse_store_url(store_url).kind == "postgresql" else UUID(str(ids[-1])).hex
    store_sql(
        store_url,
        f"UPDATE {events_table(store_url)} SET state = ? WHERE originator_id = ? AND topic LIKE ?",
        (b"\xde\xad\xbe\xef not json", last, "%RootCommand.Ended"),
    )
    before = store_sql(store_url, f"SELECT * FROM {events_table(store_url)} ORDER BY 1, 2")
    with from_the_worker(monkeypatch, orch) as built, pytest.raises(StoreError) as raised:
        orch.read_models.runner.catch_up(batch_size=BATCH)
    assert built, "the worker built the batches before the damaged one"
    message = str(raised.value)
    assert "cannot be read" in message and str(ids[-1]) in message and "Ended" in message
    assert "\n" not in message and "Traceback" not in message
    assert worker_pids() == []
    assert store_sql(store_url, f"SELECT * FROM {events_table(store_url)} ORDER BY 1, 2") == before
    positions = {s.name: s.position for s in orch.read_models.runner.status()}
    damaged = store_sql(
        store_url,
        f"SELECT MIN({'notification_id' if parse_store_url(store_url).kind == 'postgresql' else 'rowid'})"
        f" FROM {events_table(store_url)} WHERE state = ?",
        (b"\xde\xad\xbe\xef not json",),
    )[0][0]
    assert all(0 < p < damaged for p in positions.values()), (positions, damaged)


def test_an_executable_that_does_not_answer_as_the_worker_leaves_the_backlog_to_this_process(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    orch: Orchestrator,
    agent: SimulatedAgent,
    agent_state: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An embedding program's `sys.executable` may not be Python: one that says nothing is killed."""
    ids = finished(orch, agent, 6)
    forget_read_models(orch)
    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexec sleep 600\n")
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))
    monkeypatch.setattr(backlog_module, "START_SECONDS", 0.5)
    with caplog.at_level(logging.WARNING, "orchestrator.projections"), from_the_worker(monkeypatch, orch) as built:
        assert orch.read_models.runner.catch_up(batch_size=BATCH) == orch.store.head()
    assert built == [] and "did not start as the backlog's worker" in caplog.text
    assert not [pid for pid, cmdline in _children() if b"sleep" in cmdline], "the silent one was left running"
    assert_equal_to_a_rebuild(orch)
    invariants_hold(orch, agent_state, expected_commands=ids)


def _children(parent: int | None = None) -> list[tuple[int, bytes]]:
    """The children of a process (this one by default): their pids and command lines."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append((int(entry.name), (entry / "cmdline").read_bytes()))
        except OSError:
            continue
    return found


CATCH_UP_THEN_HANG = """
import sys, time
from orchestrator.bootstrap import Orchestrator
from projections.runner import ReadModelRunner

real = ReadModelRunner._collect

def collect(ahead, builder):
    batch = real(ahead, builder)
    print("worker answered", flush=True)
    time.sleep(600)  # killed here, with batches handed on to the worker
    return batch

ReadModelRunner._collect = staticmethod(collect)
orch = Orchestrator.open(sys.argv[1], agent_state=sys.argv[2], create=False)
orch.read_models.runner.backlog_events = 1
orch.read_models.runner.catch_up(batch_size=int(sys.argv[3]))
"""


def test_the_worker_of_a_catch_up_killed_midway_goes_quietly(
    store_url: str, orch: Orchestrator, agent: SimulatedAgent, agent_state: Path
) -> None:
    """SIGKILL the process catching up while its worker has batches in hand: the worker exits on its
    own (its input ends), prints no traceback, and the next catch-up completes the read models."""
    ids = finished(orch, agent, 12)
    forget_read_models(orch)
    proc = subprocess.Popen(
        [sys.executable, "-c", CATCH_UP_THEN_HANG, store_url, str(agent_state), str(BATCH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"worker answered\n", proc.stderr.read() if proc.stderr else ""
        workers = [pid for pid, cmdline in _children(proc.pid) if b"projections.backlog_worker" in cmdline]
        assert len(workers) == 1
        proc.kill()
        proc.wait(timeout=10)
        wait_for(
            lambda: not Path(f"/proc/{workers[0]}").exists() or _is_zombie(workers[0]), 10, what="the worker to exit"
        )
        _, stderr = proc.communicate(timeout=10)  # the worker's stderr was the killed process's
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-2000:]
    assert orch.read_models.runner.catch_up() > 0
    assert_equal_to_a_rebuild(orch)
    invariants_hold(orch, agent_state, expected_commands=ids)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_whose_answer_nobody_reads_exits_without_a_traceback(
    orch: Orchestrator, agent: SimulatedAgent
) -> None:
    """The catch-up went (killed, interrupted) while the worker built: writing its answer fails, and it
    leaves quietly rather than print a traceback on a terminal that is no longer its own."""
    finished(orch, agent, 3)
    runner = orch.read_models.runner
    with runner.db.read() as cur:
        entries = runner._select(cur, 0, 100)
    worker = subprocess.Popen(
        [sys.executable, "-m", "projections.backlog_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert worker.stdin is not None and worker.stdout is not None
    assert worker.stdout.readline() == backlog_module.HELLO
    worker.stdout.close()  # nobody reads its answer
    backlog_module._send(worker.stdin, (entries, [(p.name, 0) for p in runner.projections]))
    worker.stdin.close()
    assert worker.stderr is not None
    stderr = worker.stderr.read()  # until it exits
    assert worker.wait(timeout=30) == 0 and b"Traceback" not in stderr, stderr.decode(errors="replace")[-2000:]
    worker.stderr.close()
