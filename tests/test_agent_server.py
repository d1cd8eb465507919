"""The agent server as a real process on loopback, driven through the HTTP client.

Each server is `python -m orchestrator.testing.agent_server` in a subprocess; every
wait is a condition with a deadline, and every call is bounded by the client's
timeouts, so each test finishes in seconds.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.port import AgentPort, AgentTaskResult, AgentTaskState, TaskSpec
from orchestrator.agent.protocol import Fence, StaleEpochError
from orchestrator.errors import AgentError, AgentProtocolError, AgentUnavailableError
from orchestrator.serving import GRACEFUL_SHUTDOWN_SECONDS
from orchestrator.testing import FaultConfig, NetworkFault, SimulatorAdmin
from tests.conftest import REPO, cli_env, wait_for

POOL = "pool-a"
DOMAIN = "sd-1"
MIB = 1024 * 1024
ANNOUNCEMENT = re.compile(r"^agent (\S+) for pool (\S+) serving at (http://127\.0\.0\.1:(\d+)/rpc)$")


@dataclass
class AgentServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    stdout: Path
    stderr: Path
    url_file: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            raise AssertionError(f"agent server did not stop within {timeout}s of signal {sig}") from None


StartServer = Callable[..., AgentServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start agent servers (subprocesses); every one still running is stopped afterwards."""
    started: list[AgentServerProcess] = []

    def start(
        state: Path | None = None, *, pool: str = POOL, listen: str = "127.0.0.1:0", task_seconds: float = 0.3
    ) -> AgentServerProcess:
        n = len(started)
        url_file = tmp_path / f"agent-{n}.url"
        stdout, stderr = tmp_path / f"agent-{n}.out", tmp_path / f"agent-{n}.err"
        args = [
            sys.executable,
            "-m",
            "orchestrator.testing.agent_server",
            "--state",
            str(state or tmp_path / "agent.db"),
            "--pool",
            pool,
            "--listen",
            listen,
            "--url-file",
            str(url_file),
            "--task-seconds",
            str(task_seconds),
        ]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(args, stdout=out, stderr=err, env=cli_env(), cwd=REPO)

        def announced() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"agent server exited {proc.returncode}: {stderr.read_text()}")
            return url_file.exists() and stdout.read_text().endswith("\n")

        wait_for(announced, timeout=20, what="the agent server's URL file and announcement")
        url = url_file.read_text().strip()
        server = AgentServerProcess(proc, url, int(url.rsplit(":", 1)[1].split("/")[0]), stdout, stderr, url_file)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


def fast_agent(
    url: str, *, read_timeout: float = 1.0, fence: Fence | None = None, max_answer_bytes: int = MIB
) -> HttpAgent:
    """A client with short timeouts, so a faulty server fails a call within a couple of seconds."""
    return HttpAgent(
        url,
        expected_pool=POOL,
        fence=fence,
        connect_timeout=1.0,
        read_timeout=read_timeout,
        call_timeout=2.0,
        max_answer_bytes=max_answer_bytes,
    )


def seed_image(admin: SimulatorAdmin, image: str) -> None:
    assert admin.seed([DOMAIN], [(DOMAIN, image, f"{image}-vol")]) == []


def delete_image(key: str, image: str) -> TaskSpec:
    return TaskSpec(key=key, verb="delete_image", args={"storage_domain_id": DOMAIN, "image_id": image})


def set_network_fault(admin: SimulatorAdmin, fault: NetworkFault, seconds: float = 60.0) -> None:
    admin.set_faults(FaultConfig(network_fault=fault, network_fault_until=time.time() + seconds))


def assert_one_line(exc: BaseException, url: str) -> None:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    assert url in text, text


# ---- serving --------------------------------------------------------------------------------------


def test_announces_once_listening_and_stops_cleanly_on_sigterm(start_server: StartServer) -> None:
    server = start_server()
    lines = server.stdout.read_text().splitlines()
    assert len(lines) == 1, lines
    match = ANNOUNCEMENT.match(lines[0])
    assert match, lines[0]
    assert match.group(2) == POOL and match.group(3) == server.url
    assert stat.S_IMODE(os.stat(server.url_file).st_mode) == 0o600
    with fast_agent(server.url) as agent:
        identity = agent.identify()
    assert (identity.agent_id, identity.pool_id, identity.protocol_version) == (match.group(1), POOL, "1.0")

    assert server.stop(signal.SIGTERM) == 0
    assert not server.url_file.exists(), "a clean stop removes the URL file it wrote"
    assert "Traceback" not in server.stderr.read_text()


def test_sigterm_during_a_trickling_answer_stops_promptly(start_server: StartServer) -> None:
    server = start_server()
    with SimulatorAdmin(server.url) as admin:
        set_network_fault(admin, "trickle")
    outcome: list[BaseException] = []

    def slow_reader() -> None:
        with HttpAgent(server.url, read_timeout=10, call_timeout=30) as agent:
            try:
                agent.identify()
            except AgentError as exc:
                outcome.append(exc)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    wait_for(lambda: "simulated network fault trickle" in server.stderr.read_text(), timeout=10, what="the trickle")
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < GRACEFUL_SHUTDOWN_SECONDS, "the trickle gave up rather than hold the stop"
    reader.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], AgentUnavailableError)
    assert "Traceback" not in server.stderr.read_text() and "ERROR" not in server.stderr.read_text()


def test_sigint_stops_cleanly_too(start_server: StartServer) -> None:
    server = start_server()
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.stderr.read_text()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--listen", "127.0.0.1"],
            "error: --listen '127.0.0.1' is not HOST:PORT (e.g. 127.0.0.1:0 for any free port)",
        ),
        (["--pool", ""], "error: the pool id must be 1 to 200 characters"),
        (
            ["--url-file", "/nonexistent/dir/url"],
            "error: cannot write the URL file /nonexistent/dir/url: directory does not exist",
        ),
        (["--task-seconds", "-1"], "error: --task-seconds must not be negative"),
    ],
)
def test_refuses_bad_arguments_in_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    base = ["--state", str(tmp_path / "a.db"), "--pool", POOL]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.testing.agent_server", *base, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == [error]
    assert proc.stdout == ""


# ---- tasks ----------------------------------------------------------------------------------------------


def test_tasks_end_on_the_agents_clock_while_no_client_is_connected(start_server: StartServer) -> None:
    server = start_server(task_seconds=0.5)
    with SimulatorAdmin(server.url) as admin:
        for image in ("img-1", "img-2"):
            seed_image(admin, image)
    with fast_agent(server.url) as agent:
        results = agent.create_tasks([delete_image("k-1", "img-1"), delete_image("k-2", "img-2")])
        assert all(r.accepted for r in results)
        created = {s.key: s for s in agent.task_statuses()}
        assert {s.state for s in created.values()} == {AgentTaskState.RUNNING}
    # Nobody talks to the agent now; its clock runs on. Wait for the clock, not for an answer.
    due = max(s.created_at.timestamp() for s in created.values()) + 0.5
    wait_for(lambda: time.time() > due + 0.1, timeout=10, what="the tasks' due time")
    with fast_agent(server.url) as agent:
        first_look = {s.key: s for s in agent.task_statuses()}
        assert {k: (s.state, s.result) for k, s in first_look.items()} == {
            "k-1": (AgentTaskState.FINISHED, AgentTaskResult.SUCCESS),
            "k-2": (AgentTaskState.FINISHED, AgentTaskResult.SUCCESS),
        }
        assert agent.storage().volumes == [], "the tasks' effect (images deleted) is applied"


def test_create_is_idempotent_by_key_across_clients(start_server: StartServer) -> None:
    server = start_server(task_seconds=5)
    with SimulatorAdmin(server.url) as admin:
        seed_image(admin, "img-1")
        with fast_agent(server.url) as first, fast_agent(server.url) as second:
            (a,) = first.create_tasks([delete_image("same-key", "img-1")])
            (b,) = second.create_tasks([delete_image("same-key", "img-1")])
            (c,) = first.create_tasks([delete_image("same-key", "img-1")])
        assert a.accepted and a.agent_task_id
        assert a.agent_task_id == b.agent_task_id == c.agent_task_id
        assert [e["key"] for e in admin.journal()] == ["same-key"]


def test_stop_clear_and_revert_over_http(start_server: StartServer) -> None:
    server = start_server(task_seconds=0.2)
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url) as agent:
        engine_view: AgentPort = agent  # what the engine needs (checked by mypy, and at run time below)
        assert isinstance(engine_view, AgentPort)
        seed_image(admin, "img-1")
        volume = {"storage_domain_id": DOMAIN, "image_id": "img-1", "volume_id": "vol-new", "parent_id": "img-1-vol"}
        (made,) = agent.create_tasks([TaskSpec(key="mk", verb="create_volume", args=volume)])
        assert made.agent_task_id
        wait_for(
            lambda: {s.key: s.succeeded for s in agent.task_statuses()} == {"mk": True},
            timeout=10,
            what="create_volume to succeed",
        )
        assert ("sd-1", "img-1", "vol-new") in agent.storage().triples()
        outcomes = agent.revert_tasks([made.agent_task_id, made.agent_task_id, "no-such-task"])
        assert [(o.reverted, o.error) for o in outcomes] == [(True, ""), (True, ""), (False, "")]
        assert agent.revert_task(made.agent_task_id), "undone already: the same answer again"
        assert ("sd-1", "img-1", "vol-new") not in agent.storage().triples()

        slow = agent.create_tasks([delete_image("slow", "img-1")])
        agent.stop_tasks([r.agent_task_id for r in slow if r.agent_task_id])
        states = {s.key: (s.state, s.message) for s in agent.task_statuses()}
        assert states["slow"] == (AgentTaskState.ABORTED, "stopped")

        agent.clear_tasks([s.agent_task_id for s in agent.task_statuses()])
        assert agent.task_statuses() == []
        assert agent.calls["Agent.identify"] == 1, "identity is checked once while the agent stays reachable"


def test_revert_that_cannot_be_undone_is_one_protocol_error(start_server: StartServer) -> None:
    server = start_server(task_seconds=0.1)
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url) as agent:
        seed_image(admin, "img-1")
        (r,) = agent.create_tasks([delete_image("del", "img-1")])
        assert r.agent_task_id
        wait_for(lambda: all(s.ended for s in agent.task_statuses()), timeout=10, what="the delete to end")
        with pytest.raises(AgentProtocolError, match=r"could not revert task .*delete_image cannot be reverted") as err:
            agent.revert_task(r.agent_task_id)
        assert_one_line(err.value, server.url)


def test_slow_calls_are_served_side_by_side(start_server: StartServer) -> None:
    server = start_server()
    latency, clients = 1.5, 4
    with SimulatorAdmin(server.url) as admin:
        admin.set_faults(FaultConfig(call_latency=latency))
        answered: list[int] = []

        def slow_call() -> None:
            with HttpAgent(server.url, read_timeout=10, call_timeout=10) as agent:
                answered.append(len(agent.task_statuses()))

        workers = [threading.Thread(target=slow_call, daemon=True) for _ in range(clients)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        admin_started = time.monotonic()
        admin.journal()  # the administration is not slowed down, nor held up by the slow calls
        assert time.monotonic() - admin_started < latency
        for worker in workers:
            worker.join(timeout=15)
        elapsed = time.monotonic() - started
        assert answered == [0] * clients
        assert elapsed < latency * clients * 0.6, (
            f"{clients} calls of {latency}s took {elapsed:.1f}s: served one by one"
        )


# ---- faults -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "says"),
    [
        ("http_500", AgentUnavailableError, "HTTP 500"),
        ("drop", AgentUnavailableError, "closed the connection before its answer"),
        ("garbage", AgentProtocolError, "not JSON (text/html"),
        ("oversize", AgentProtocolError, "larger than"),
        ("trickle", AgentUnavailableError, "did not finish answering"),
    ],
)
def test_each_network_fault_is_one_clear_error_within_the_timeouts(
    start_server: StartServer, fault: NetworkFault, error: type[AgentError], says: str
) -> None:
    server = start_server()
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url) as agent:
        agent.identify()
        set_network_fault(admin, fault)
        for call in (agent.task_statuses, agent.identify):
            started = time.monotonic()
            with pytest.raises(error, match=re.escape(says)) as raised:
                call()
            assert type(raised.value) is error
            assert time.monotonic() - started < 4.0, "bounded by the client's timeouts"
            assert_one_line(raised.value, server.url)
        admin.set_faults(FaultConfig())
        assert agent.task_statuses() == [], "the same client works again once the fault is gone"


def test_a_dropped_answer_was_carried_out_and_a_retry_is_idempotent(start_server: StartServer) -> None:
    server = start_server(task_seconds=5)
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url) as agent:
        seed_image(admin, "img-1")
        agent.identify()
        set_network_fault(admin, "drop")
        with pytest.raises(AgentUnavailableError):
            agent.create_tasks([delete_image("lost-answer", "img-1")])
        admin.set_faults(FaultConfig())
        (retry,) = agent.create_tasks([delete_image("lost-answer", "img-1")])
        assert [(e["key"], e["agent_task_id"]) for e in admin.journal()] == [("lost-answer", retry.agent_task_id)]


def test_outage_and_latency_are_unavailable_within_the_timeouts(start_server: StartServer) -> None:
    server = start_server()
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url, read_timeout=0.5) as agent:
        admin.set_faults(FaultConfig(unreachable_until=time.time() + 60))
        with pytest.raises(AgentUnavailableError, match="is unavailable: agent unreachable") as outage:
            agent.task_statuses()
        assert_one_line(outage.value, server.url)
        admin.set_faults(FaultConfig(call_latency=2.0))
        started = time.monotonic()
        with pytest.raises(AgentUnavailableError, match=r"did not answer Tasks.statuses within 0.5s"):
            agent.task_statuses()
        assert time.monotonic() - started < 2.0
        admin.set_faults(FaultConfig())
        assert agent.task_statuses() == []


def test_malformed_answers_are_refused_by_the_client(start_server: StartServer) -> None:
    server = start_server(task_seconds=5)
    with SimulatorAdmin(server.url) as admin, fast_agent(server.url) as agent:
        seed_image(admin, "img-1")
        agent.create_tasks([delete_image("k", "img-1")])
        admin.set_faults(FaultConfig(malformed_until=time.time() + 60))
        with pytest.raises(AgentProtocolError, match="gave a malformed answer to task_statuses") as raised:
            agent.task_statuses()
        assert_one_line(raised.value, server.url)
        with pytest.raises(AgentProtocolError, match="gave a malformed answer to create_tasks"):
            agent.create_tasks([delete_image("k", "img-1")])


def test_wrong_pool_and_future_version_are_refused(start_server: StartServer) -> None:
    server = start_server()
    with SimulatorAdmin(server.url) as admin:
        set_network_fault(admin, "wrong_pool")
        with fast_agent(server.url) as agent, pytest.raises(AgentProtocolError) as wrong_pool:
            agent.task_statuses()  # identity is checked on first use
        assert f"serves pool 'not-{POOL}', not pool '{POOL}'" in str(wrong_pool.value)
        assert_one_line(wrong_pool.value, server.url)

        set_network_fault(admin, "future_version")
        with fast_agent(server.url) as agent:
            with pytest.raises(AgentProtocolError) as future:
                agent.create_tasks([delete_image("never", "img-1")])
            assert "speaks protocol 2.0; this engine speaks 1.x; upgrade the engine" in str(future.value)
            assert_one_line(future.value, server.url)
            assert "Tasks.create" not in agent.calls, "nothing is asked of an agent that failed its identity check"
        assert admin.journal() == []


# ---- crashes and fencing ---------------------------------------------------------------------------------------


def test_a_killed_server_is_unavailable_and_a_restart_on_the_same_state_holds_the_tasks(
    start_server: StartServer, tmp_path: Path
) -> None:
    state = tmp_path / "agent.db"
    server = start_server(state, task_seconds=60)
    with SimulatorAdmin(server.url) as admin:
        seed_image(admin, "img-1")
    agent = fast_agent(server.url)
    try:
        created = agent.create_tasks([delete_image("survivor", "img-1")])
        server.stop(signal.SIGKILL)
        with pytest.raises(AgentUnavailableError, match="is unreachable: connection refused") as refused:
            agent.task_statuses()
        assert_one_line(refused.value, server.url)

        restarted = start_server(state, listen=f"127.0.0.1:{server.port}", task_seconds=60)
        assert restarted.url == server.url
        (held,) = agent.task_statuses()  # the same client, reconnected
        assert (held.key, held.agent_task_id, held.state) == ("survivor", created[0].agent_task_id, "running")
        assert agent.calls["Agent.identify"] == 2, "identity is checked again after the agent was lost"
    finally:
        agent.close()


def test_a_stale_epoch_is_refused_and_remembered_across_restarts(start_server: StartServer, tmp_path: Path) -> None:
    state = tmp_path / "agent.db"
    server = start_server(state, task_seconds=60)
    with SimulatorAdmin(server.url) as admin:
        seed_image(admin, "img-1")
    old = fast_agent(server.url, fence=Fence(engine_id="engine-a", epoch=1))
    new = fast_agent(server.url, fence=Fence(engine_id="engine-b", epoch=2))
    try:
        (task,) = old.create_tasks([delete_image("a-1", "img-1")])
        assert task.agent_task_id
        new.stop_tasks([task.agent_task_id])  # engine-b takes over: epoch 2
        deposed: list[Callable[[], object]] = [
            lambda: old.create_tasks([delete_image("a-2", "img-1")]),
            lambda: old.stop_tasks(["x"]),
            lambda: old.clear_tasks([task.agent_task_id or ""]),
            lambda: old.revert_tasks([task.agent_task_id or ""]),
        ]
        for call in deposed:
            with pytest.raises(StaleEpochError, match="stale epoch: engine engine-a at epoch 1") as stale:
                call()
            assert_one_line(stale.value, server.url)
        impostor = fast_agent(server.url, fence=Fence(engine_id="engine-c", epoch=2))
        with pytest.raises(StaleEpochError):
            impostor.clear_tasks(["x"])
        impostor.close()
        old.fence = None  # unfenced calls are accepted
        old.clear_tasks([task.agent_task_id])
        assert old.task_statuses() == []

        server.stop(signal.SIGTERM)
        start_server(state, listen=f"127.0.0.1:{server.port}")
        old.fence = Fence(engine_id="engine-a", epoch=1)
        with pytest.raises(StaleEpochError):
            old.stop_tasks(["x"])
        new.stop_tasks(["x"])
        with SimulatorAdmin(server.url) as admin:
            assert {e["key"] for e in admin.journal()} == {"a-1"}
    finally:
        old.close()
        new.close()


def test_a_new_epoch_waits_for_the_calls_of_the_old_one(start_server: StartServer, tmp_path: Path) -> None:
    state = tmp_path / "agent.db"
    server = start_server(state, task_seconds=60)
    fence_file = tmp_path / "agent.db.fence.json"
    with SimulatorAdmin(server.url) as admin:
        seed_image(admin, "img-1")
        admin.set_faults(FaultConfig(call_latency=1.0))

        def old_engine_creates() -> None:
            with HttpAgent(server.url, fence=Fence(engine_id="engine-a", epoch=1), call_timeout=10) as old:
                old.create_tasks([delete_image("from-a", "img-1")])

        worker = threading.Thread(target=old_engine_creates, daemon=True)
        worker.start()
        # The fence file appears once the old engine's call is admitted (and sleeping in the backend).
        wait_for(lambda: fence_file.exists() and '"epoch":1' in fence_file.read_text(), timeout=10, what="epoch 1")
        admin.set_faults(FaultConfig())  # the new engine's call is fast: only the wait can order it after
        with fast_agent(server.url, fence=Fence(engine_id="engine-b", epoch=2)) as new:
            new.create_tasks([delete_image("from-b", "img-1")])
        worker.join(timeout=10)
        # Without the wait the new engine's task would come first: the old call sleeps in the backend.
        assert [e["key"] for e in admin.journal()] == ["from-a", "from-b"]
    assert stat.S_IMODE(os.stat(fence_file).st_mode) == 0o600
