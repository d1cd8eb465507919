"""Issue 13: agents over the network, one per storage pool, on both stores.

Real agent server processes (`orchestrator agent serve`) on loopback, a real engine
process (`orchestrator run`), and faults that really happen: an agent server SIGKILLed
while its tasks run, a dead pool beside a live one, a slow one, and hostile answers
(garbage, bodies above the limit, a trickle of bytes, statuses of tasks never given,
another pool's identity, a protocol version from the future). Nothing is ever decided
from silence or garbage, and the other pools keep being served.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.pools import add_pool
from orchestrator.testing import FaultConfig, NetworkFault, SimulatorAdmin
from tests.conftest import REPO, ServedAgent, cli_env, engine_args, invariants_hold, run_cli, serve_agent, wait_for
from tests.test_agent_protocol import MinimalAgent


def engine_env(**extra: str) -> dict[str, str]:
    return cli_env(ORCHESTRATOR_POLL_INTERVAL="0.05", ORCHESTRATOR_AGENT_BACKOFF_MAX="0.5", **extra)


def start_engine(store_url: str, agent_state: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *engine_args(store_url, agent_state, *args)],
        cwd=REPO,
        env=engine_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def status_of(store_url: str, agent_state: Path, command_id: str) -> str:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        return orch.command(command_id).status.value


def head_of(store_url: str, agent_state: Path) -> int:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        return orch.store.head()


def two_pools(store_url: str, agent_state: Path, tmp_path: Path, task_seconds: float = 0.3) -> dict[str, ServedAgent]:
    """Pools p1 and p2, each with an agent server of its own and a VM with two disks."""
    served = {p: serve_agent(tmp_path / f"{p}.agent", p, tmp_path, task_seconds) for p in ("p1", "p2")}
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        for pool, agent in served.items():
            add_pool(orch, pool, agent.url)
            orch.seed(1, 2, pool=pool)  # p1: vm-0001, p2: vm-0002
    return served


@pytest.fixture
def pools(store_url: str, agent_state: Path, tmp_path: Path) -> Iterator[dict[str, ServedAgent]]:
    served = two_pools(store_url, agent_state, tmp_path)
    yield served
    for agent in served.values():
        agent.kill()


def submit(store_url: str, agent_state: Path, flow: str, params: dict[str, Any]) -> str:
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        return str(orch.submit(flow, params).command_id)


# ---- an agent server killed and restarted --------------------------------------------------------


def test_nothing_is_decided_while_an_agent_server_is_down_and_all_ends_well_after(
    store_url: str, agent_state: Path, http_agent: ServedAgent
) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(1, 3)
        command_id = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
    http_agent.task_seconds = 2.0
    http_agent.restart()  # tasks long enough to be running when the server dies
    engine = start_engine(store_url, agent_state)
    try:
        wait_for(
            lambda: status_of(store_url, agent_state, command_id) == "running", timeout=30, what="the tasks submitted"
        )
        http_agent.kill()
        head = head_of(store_url, agent_state)
        deadline = time.monotonic() + 3.0  # past the tasks' end: the engine would see them end if it could
        while time.monotonic() < deadline:
            assert head_of(store_url, agent_state) == head, "the engine decided something without its agent"
            time.sleep(0.1)
        http_agent.restart()
        wait_for(lambda: status_of(store_url, agent_state, command_id) == "succeeded", timeout=30)
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state, expected_commands=[orch.command(command_id).id])


# ---- pools are independent -----------------------------------------------------------------------


def test_a_dead_pool_agent_does_not_hold_back_the_other_pool(
    store_url: str, agent_state: Path, pools: dict[str, ServedAgent]
) -> None:
    pools["p2"].kill()
    live = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    dead = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0002"})
    engine = start_engine(store_url, agent_state)
    try:
        started = time.monotonic()
        wait_for(lambda: status_of(store_url, agent_state, live) == "succeeded", timeout=20, what="pool p1's command")
        assert time.monotonic() - started < 15
        assert status_of(store_url, agent_state, dead) == "accepted", "pool p2's command waits for its agent"
        pools["p2"].restart()
        wait_for(lambda: status_of(store_url, agent_state, dead) == "succeeded", timeout=30, what="pool p2's command")
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state)


def test_a_slow_pool_agent_delays_only_its_own_pool(
    store_url: str, agent_state: Path, pools: dict[str, ServedAgent]
) -> None:
    with SimulatorAdmin(pools["p2"].url) as admin:
        admin.set_faults(FaultConfig(call_latency=30.0, timeout_seconds=60.0))  # slower than the engine waits
    live = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    slow = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0002"})
    engine = start_engine(store_url, agent_state, ORCHESTRATOR_AGENT_TIMEOUT="2")
    try:
        started = time.monotonic()
        wait_for(lambda: status_of(store_url, agent_state, live) == "succeeded", timeout=20, what="pool p1's command")
        assert time.monotonic() - started < 8, "pool p1 went on while pool p2's agent was slow"
        assert status_of(store_url, agent_state, slow) == "accepted"
        with SimulatorAdmin(pools["p2"].url) as admin:
            admin.set_faults(FaultConfig())
        wait_for(lambda: status_of(store_url, agent_state, slow) == "succeeded", timeout=40, what="pool p2's command")
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state)


# ---- a hostile agent -----------------------------------------------------------------------------


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("garbage", {"network_fault": "garbage"}, "not JSON"),
    ("oversize", {"network_fault": "oversize"}, "larger than"),
    ("trickle", {"network_fault": "trickle"}, "p2"),
    ("another pool's identity", {"network_fault": "wrong_pool"}, "pool"),
    ("a protocol from the future", {"network_fault": "future_version"}, "protocol"),
    ("malformed statuses", {"malformed_share": 1.0}, "malformed"),
]


@pytest.mark.parametrize(("faults", "says"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_agent_gets_one_clear_error_decides_nothing_and_the_other_pool_goes_on(
    store_url: str, agent_state: Path, pools: dict[str, ServedAgent], faults: dict[str, Any], says: str
) -> None:
    fault: dict[str, Any] = {**faults}
    if "network_fault" in fault:
        kind: NetworkFault = fault["network_fault"]
        fault = {"network_fault": kind, "network_fault_until": time.time() + 600}
    with SimulatorAdmin(pools["p2"].url) as admin:
        admin.set_faults(FaultConfig(**fault))
    live = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0001"})
    hostile = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0002"})
    ran = run_cli(
        *engine_args(store_url, agent_state, "--until-idle", "--timeout", "8"),
        env=engine_env(ORCHESTRATOR_AGENT_TIMEOUT="1.5"),
        timeout=60,
    )
    assert ran.returncode in (7, 9), ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr
    assert says in ran.stderr, ran.stderr[-2000:]
    assert status_of(store_url, agent_state, live) == "succeeded", "the other pool was served"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        command = orch.command(hostile)
        assert command.status.value == "accepted" and not command.recoveries, "nothing decided from that answer"
    with SimulatorAdmin(pools["p2"].url) as admin:
        admin.set_faults(FaultConfig())
    again = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=engine_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert status_of(store_url, agent_state, hostile) == "succeeded"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        invariants_hold(orch, agent_state)


def test_statuses_of_tasks_never_given_are_ignored_over_the_network(
    store_url: str, agent_state: Path, pools: dict[str, ServedAgent]
) -> None:
    with SimulatorAdmin(pools["p2"].url) as admin:
        admin.set_faults(FaultConfig(phantom_tasks=5))
    command_id = submit(store_url, agent_state, "RemoveVm", {"vm_id": "vm-0002"})
    ran = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=engine_env())
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "never given by this engine" in ran.stderr
    assert status_of(store_url, agent_state, command_id) == "succeeded"


# ---- an agent written from the protocol document alone ---------------------------------------------


class _MinimalServer:
    """The test's own agent (tests/test_agent_protocol.py), served by the standard library."""

    def __init__(self, agent: MinimalAgent) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = json.dumps(agent.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rpc"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MinimalStorage:
    """Seeding's agent side for the test's own agent (it has no simulator extension: written directly)."""

    def __init__(self, agent: MinimalAgent) -> None:
        self.agent = agent

    def seed_storage(self, domains: Any, volumes: Any, token: str | None = None) -> list[str]:
        with self.agent.lock:
            for sd, image, volume in volumes:
                self.agent.volumes.append(
                    {"storage_domain_id": sd, "image_id": image, "volume_id": volume, "parent_id": None}
                )
        return []

    def unseed(self, token: str, volume_ids: Any) -> int:
        return 0


def test_an_agent_written_from_the_protocol_document_works_with_the_engine(store_url: str, agent_state: Path) -> None:
    from orchestrator.testing import seed_inventory

    agent = MinimalAgent("mini")
    server = _MinimalServer(agent)
    try:
        with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
            add_pool(orch, "mini", server.url)
            seed_inventory(orch, _MinimalStorage(agent), 1, 2, pool="mini")
            removal = str(orch.submit("RemoveVm", {"vm_id": "vm-0001"}).command_id)
        ran = run_cli(*engine_args(store_url, agent_state, "--until-idle", "--timeout", "60"), env=engine_env())
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert status_of(store_url, agent_state, removal) == "succeeded"
        with agent.lock:
            tasks = list(agent.tasks.values())
        assert len(tasks) == 2 and all(t.get("cleared") for t in tasks), tasks
    finally:
        server.close()
