"""Issue 14: several engines on one PostgreSQL database, fenced leases per pool, no split brain.

Real engine processes (`orchestrator run`), real agent servers, and a PostgreSQL server of
this module's own (`initdb` in a temporary folder, a free port), so that its connections can
be cut and the server itself restarted. Each case reproduces a way two engines could once act
on one store at once; every case ends with the invariants, fenced writes (9) among them, and
with the log read in order: no event of a deposed engine after its successor's first.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.pools import add_pool
from orchestrator.store import writer_of
from orchestrator.store.leases import LeaseSnapshot
from orchestrator.testing import AgentProcess
from orchestrator.testing.postgres_server import PostgresServer, postgres_bin_dir
from tests.conftest import REPO, cli_env, invariants_hold, run_cli, serve_agent, wait_for

pytestmark = pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL server binaries are not installed")

LEASE_TIMEOUT = "2"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def shared_store(server: PostgresServer) -> str:
    return f"{server.url}?schema=t_{uuid.uuid4().hex[:12]}"


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(
        ORCHESTRATOR_POLL_INTERVAL="0.05",
        ORCHESTRATOR_AGENT_BACKOFF_MAX="0.5",
        ORCHESTRATOR_LEASE_TIMEOUT=LEASE_TIMEOUT,
        **extra,
    )


def start_engine(store: str, agent_state: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "orchestrator", "--store", store, "--agent-state", str(agent_state), "run", *args]
    return subprocess.Popen(
        argv, cwd=REPO, env=engine_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def leases(store: str, agent_state: Path) -> LeaseSnapshot:
    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        table = orch.store.dialect.leases()
        try:
            return table.snapshot()
        finally:
            table.close()


def holders(store: str, agent_state: Path) -> dict[str, tuple[str | None, int]]:
    snapshot = leases(store, agent_state)
    return {r.pool: (snapshot.holder(r.pool), r.epoch) for r in snapshot.leases}


@pytest.fixture
def served() -> Iterator[list[AgentProcess]]:
    """The agent servers a test starts, killed at its end (after its checks, which read them)."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def pools_with_agents(
    store: str, agent_state: Path, tmp_path: Path, names: list[str], task_seconds: float, keep: list[AgentProcess]
) -> dict[str, AgentProcess]:
    served = {p: serve_agent(tmp_path / f"{p}.agent", p, tmp_path, task_seconds) for p in names}
    keep.extend(served.values())
    with Orchestrator.open(store, agent_state=agent_state, create=True) as orch:
        for pool, agent in served.items():
            add_pool(orch, pool, agent.url)
            orch.seed(3, 2, pool=pool)
    return served


def submit_all(store: str, agent_state: Path) -> list[str]:
    """A RemoveVm of every VM there is."""
    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        vms = [e.entity_id for e in orch.inventory() if e.ref.type.value == "vm" and not e.removed]
        return [str(orch.submit("RemoveVm", {"vm_id": vm}).command_id) for vm in sorted(vms)]


def all_done(store: str, agent_state: Path, ids: list[str]) -> bool:
    """Every command ended and its tasks cleared on the agent (no longer in flight): what the end checks check."""
    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        return all(not orch.command(i).in_flight for i in ids)


def writes_in_log_order(store: str, agent_state: Path) -> list[tuple[str, int]]:
    """(engine, epoch) of every event written under a lease, in the log's order."""
    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        found = []
        for page in orch.store.notifications(after=0):
            for n in page:
                writer = writer_of(orch.store.app.mapper.to_domain_event(n))
                if isinstance(writer.get("epoch"), int) and writer["epoch"] > 0:
                    found.append((str(writer["engine"]), int(writer["epoch"])))
        return found


def assert_no_write_after_a_successor(writes: list[tuple[str, int]]) -> None:
    """Once an epoch has written, no older epoch writes again (one pool, as in these cases)."""
    highest = 0
    for engine, epoch in writes:
        assert epoch >= highest, f"{engine} wrote at epoch {epoch} after epoch {highest} had written"
        highest = epoch


CUT_SUBMISSION = "expected tasks have no agent task id"  # recovery's verdict on a submission cut short


def end_checks(
    store: str, agent_state: Path, agents: dict[str, AgentProcess], ids: list[str], *, cut_submissions: bool = False
) -> None:
    """Every command succeeded; with `cut_submissions`, one whose submission a freeze cut short between
    the agent's create and its record may instead have failed with recovery's verdict for it."""
    with Orchestrator.open(store, agent_state=agent_state, create=False) as orch:
        outcomes = [(i, orch.command(i).status.value, orch.command(i).outcome_reason or "") for i in ids]
        assert all(
            status == "succeeded" or (cut_submissions and status == "failed" and CUT_SUBMISSION in reason)
            for _, status, reason in outcomes
        ), outcomes
        invariants_hold(orch, agent_state, expected_commands=[UUID(i) for i in ids])


# ---- 1. the lease connection cut (pg_terminate_backend, a failover, a reset) ---------------------


def test_an_engine_whose_lease_connection_is_cut_stops_acting_and_another_takes_over(
    server: PostgresServer, shared_store: str, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    agents = pools_with_agents(shared_store, agent_state, tmp_path, ["p1"], 1.5, served)
    # Pinned, so the fair share never hands p1 over before the cut (which pool an engine gives up
    # first differs from one engine id to the next).
    first = start_engine(shared_store, agent_state, "--pools", "p1")
    second = None
    try:
        wait_for(lambda: holders(shared_store, agent_state).get("p1", (None, 0))[0] is not None, timeout=30)
        second = start_engine(shared_store, agent_state)  # standing by
        ids = submit_all(shared_store, agent_state)
        wait_for(lambda: len(writes_in_log_order(shared_store, agent_state)) > 0, timeout=30, what="first writes")
        assert server.terminate_backends("orchestrator-lease") >= 1
        wait_for(lambda: holders(shared_store, agent_state)["p1"][1] >= 2, timeout=30, what="a new epoch")
        wait_for(lambda: all_done(shared_store, agent_state, ids), timeout=90, what="every command done")
    finally:
        code, stderr = stop(first)
        if second is not None:
            stop(second)
    assert code == 0, stderr[-3000:]
    lost = [line for line in stderr.splitlines() if "lost the lease of pool p1 (epoch 1)" in line]
    assert len(lost) == 1, stderr[-3000:]
    assert_no_write_after_a_successor(writes_in_log_order(shared_store, agent_state))
    end_checks(shared_store, agent_state, agents, ids)
    assert_histories_name_their_writers(shared_store, agent_state, ids)


def assert_histories_name_their_writers(store: str, agent_state: Path, ids: list[str]) -> None:
    """`show --json` gives each event's writer: the user's call accepts, engines at an epoch do the rest."""
    epochs: set[int] = set()
    for ident in ids:
        shown = run_cli("--store", store, "--agent-state", str(agent_state), "show", ident, "--json", check=True)
        history = json.loads(shown.stdout)["history"]
        assert [e["version"] for e in history] == list(range(1, len(history) + 1))
        assert (history[0]["event"], history[0]["phase"], history[0]["engine"]) == ("Accepted", "client", None)
        assert history[-1]["event"] == "TasksCleared"
        for entry in history[1:]:
            assert isinstance(entry["engine"], str) and isinstance(entry["epoch"], int), entry
            epochs.add(entry["epoch"])
    log_epochs = {epoch for _, epoch in writes_in_log_order(store, agent_state)}
    assert epochs and epochs <= log_epochs, (epochs, log_epochs)


# ---- 2. a frozen engine that wakes after a takeover ------------------------------------------------


def test_a_frozen_engine_that_wakes_after_a_takeover_does_nothing_more(
    shared_store: str, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    agents = pools_with_agents(shared_store, agent_state, tmp_path, ["p1"], 3, served)
    # Pinned to p1: unpinned, the fair share might hand p1 to the second engine before the freeze, and
    # the frozen one, holding only the default pool, would then wake still holding it.
    first = start_engine(shared_store, agent_state, "--exit-on-lease-loss", "--pools", "p1")
    second = None
    try:
        wait_for(lambda: holders(shared_store, agent_state).get("p1", (None, 0))[0] is not None, timeout=30)
        first_id = holders(shared_store, agent_state)["p1"][0]
        second = start_engine(shared_store, agent_state)
        wait_for(lambda: len(leases(shared_store, agent_state).live_engines(60)) == 2, timeout=60, what="both up")
        ids = submit_all(shared_store, agent_state)
        wait_for(lambda: len(writes_in_log_order(shared_store, agent_state)) > 0, timeout=30, what="first writes")
        first.send_signal(signal.SIGSTOP)
        wait_for(
            lambda: holders(shared_store, agent_state)["p1"][0] not in (None, first_id),
            timeout=30,
            what="the standby to take the frozen engine's pool",
        )
        wait_for(
            lambda: any(e == 2 for _, e in writes_in_log_order(shared_store, agent_state)),
            timeout=30,
            what="the new engine's first write",
        )
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=60)
        code = first.returncode
        wait_for(lambda: all_done(shared_store, agent_state, ids), timeout=90, what="every command done")
    finally:
        if first.poll() is None:
            stop(first)
        if second is not None:
            stop(second)
    assert code == 12, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: lost the lease of pool "), stderr[-2000:]
    assert_no_write_after_a_successor(writes_in_log_order(shared_store, agent_state))
    # SIGSTOP lands anywhere, also between the agent's create and its record: then the successor's
    # recovery finds the tasks by key, stops and clears them, and the command fails (never a success).
    end_checks(shared_store, agent_state, agents, ids, cut_submissions=True)


# ---- 3. the database restarted under running engines -----------------------------------------------


def test_engines_ride_through_a_database_restart(
    server: PostgresServer, shared_store: str, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    agents = pools_with_agents(shared_store, agent_state, tmp_path, ["p1"], 1.0, served)
    first = start_engine(shared_store, agent_state)
    second = None
    try:
        wait_for(lambda: holders(shared_store, agent_state).get("p1", (None, 0))[0] is not None, timeout=30)
        second = start_engine(shared_store, agent_state)
        wait_for(lambda: len(leases(shared_store, agent_state).live_engines(60)) == 2, timeout=60, what="both up")
        ids = submit_all(shared_store, agent_state)
        wait_for(lambda: len(writes_in_log_order(shared_store, agent_state)) > 0, timeout=30, what="first writes")
        server.restart(down_seconds=3)
        wait_for(lambda: all_done(shared_store, agent_state, ids), timeout=120, what="every command done")
        assert first.poll() is None and second.poll() is None, "an engine exited over the restart:\n" + "\n".join(
            p.communicate()[1][-3000:] for p in (first, second) if p.poll() is not None
        )
    finally:
        first_code, first_err = stop(first)
        second_code, second_err = stop(second) if second is not None else (0, "")
    assert first_code == 0 and second_code == 0, first_err[-2000:] + second_err[-2000:]
    says = [line for line in first_err.splitlines() if "the store cannot be reached" in line]
    assert len(says) <= 1, "said once, not per attempt:\n" + "\n".join(says)
    assert_no_write_after_a_successor(writes_in_log_order(shared_store, agent_state))
    # A restart between the agent's create and its record cuts a submission short (G1: it fails).
    end_checks(shared_store, agent_state, agents, ids, cut_submissions=True)


# ---- 4. engines sharing the pools; one pinned ------------------------------------------------------


def test_engines_share_the_pools_fairly_and_a_pinned_engine_takes_its_own(
    shared_store: str, agent_state: Path, tmp_path: Path, served: list[AgentProcess]
) -> None:
    agents = pools_with_agents(shared_store, agent_state, tmp_path, ["p1", "p2", "p3"], 0.5, served)
    engines = [start_engine(shared_store, agent_state), start_engine(shared_store, agent_state)]
    try:

        def split() -> list[int]:
            held = holders(shared_store, agent_state)
            counts: dict[str, int] = {}
            for holder, _ in held.values():
                if holder is not None:
                    counts[holder] = counts.get(holder, 0) + 1
            return sorted(counts.values())

        # four pools: p1, p2, p3 and the default one
        wait_for(lambda: split() == [2, 2], timeout=30, what="two engines to share four pools")
        listed = run_cli("--store", shared_store, "--agent-state", str(agent_state), "engines", "--json")
        assert listed.returncode == 0, listed.stderr
        doc: dict[str, Any] = json.loads(listed.stdout)
        running = [e for e in doc["engines"] if e["state"] == "running"]
        assert len(running) == 2 and sorted(len(e["pools"]) for e in running) == [2, 2]
        held = holders(shared_store, agent_state)
        wait_for(
            lambda: all(
                a["engine"] is not None and a["engine"]["answered_at"] is not None
                for a in json.loads(
                    run_cli("--store", shared_store, "--agent-state", str(agent_state), "agents", "--json").stdout
                )
                if a["pool_id"] != "default"
            ),
            timeout=30,
            what="each pool's engine to report how its agent answers",
        )
        seen = json.loads(
            run_cli("--store", shared_store, "--agent-state", str(agent_state), "agents", "--json").stdout
        )
        by_pool = {a["pool_id"]: a for a in seen}
        for pool in ("p1", "p2", "p3"):
            assert by_pool[pool]["reachable"] and by_pool[pool]["engine"]["engine_id"] == held[pool][0]
            assert by_pool[pool]["engine"]["consecutive_errors"] == 0
        engines.append(start_engine(shared_store, agent_state, "--pools", "p3"))
        wait_for(
            lambda: any(
                e["pinned_pools"] == ["p3"] and [p["pool_id"] for p in e["pools"]] == ["p3"]
                for e in json.loads(
                    run_cli("--store", shared_store, "--agent-state", str(agent_state), "engines", "--json").stdout
                )["engines"]
            ),
            timeout=30,
            what="the pinned engine to take p3",
        )
        wait_for(lambda: split() == [1, 1, 2], timeout=30, what="the other two to share the other three")
        ids = submit_all(shared_store, agent_state)
        wait_for(lambda: all_done(shared_store, agent_state, ids), timeout=90, what="every command done")
    finally:
        codes = [stop(e) for e in engines]
    assert all(code == 0 for code, _ in codes), [err[-1500:] for _, err in codes]
    end_checks(shared_store, agent_state, agents, ids)
