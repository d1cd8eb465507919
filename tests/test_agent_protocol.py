"""The agent protocol: its schema, its JSON-RPC errors, and an agent written from its document alone.

`MinimalAgent` below is written only from docs/agent-protocol.md (it imports
nothing of the orchestrator): if the engine's client can drive it, the
document is enough to write an agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.agent.http_agent import HttpAgent
from orchestrator.agent.port import AgentTaskResult, AgentTaskState, TaskSpec
from orchestrator.agent.protocol import METHODS, SCHEMA_PATH, Fence, StaleEpochError, protocol_schema
from orchestrator.agent.rpc import RpcClient
from orchestrator.errors import AgentProtocolError
from orchestrator.testing import SIMULATOR_METHODS, SIMULATOR_SCHEMA_PATH, simulator_schema
from tests.conftest import REPO, cli_env, wait_for
from tests.test_agent_server import AgentServerProcess, StartServer, start_server

__all__ = ["start_server"]  # the fixture, shared with test_agent_server

DOC = REPO / "docs" / "agent-protocol.md"


# ---- the schema and the document ------------------------------------------------------------------


SCHEMAS = [
    pytest.param("orchestrator.agent.protocol", SCHEMA_PATH, protocol_schema, id="protocol"),
    pytest.param(
        "orchestrator.testing.simulator_protocol", SIMULATOR_SCHEMA_PATH, simulator_schema, id="simulator-extension"
    ),
]


@pytest.mark.parametrize(("module", "path", "schema"), SCHEMAS)
def test_checked_in_schema_matches_the_models(module: str, path: Path, schema: Callable[[], dict[str, Any]]) -> None:
    checked_in = json.loads(path.read_text())
    assert checked_in == json.loads(json.dumps(schema())), (
        f"{path.name} is out of date with the models; run `python -m {module} --write`"
    )


@pytest.mark.parametrize(("module", "path", "schema"), SCHEMAS)
def test_schema_command_prints_the_checked_in_schema(
    module: str, path: Path, schema: Callable[[], dict[str, Any]]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--schema"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert proc.stdout == path.read_text()


def test_the_protocol_schema_leaves_the_simulator_extension_out() -> None:
    protocol, extension = protocol_schema(), simulator_schema()
    assert not any(name.startswith("Simulator.") for name in protocol["methods"])
    assert set(extension["methods"]) == set(SIMULATOR_METHODS)
    assert not set(extension["methods"]) & set(protocol["methods"])


def test_the_engines_side_does_not_import_the_test_doubles() -> None:
    code = (
        "import sys\n"
        "import orchestrator.agent.http_agent, orchestrator.agent.port, orchestrator.agent.protocol\n"
        "print(sorted(m for m in sys.modules if m.startswith('orchestrator.testing')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_the_document_covers_every_method_and_error_code() -> None:
    text = DOC.read_text()
    schema = protocol_schema()
    for method in [*METHODS, *SIMULATOR_METHODS]:
        assert f"`{method}`" in text, f"{DOC.name} does not document {method}"
    for code in schema["error_codes"]:
        assert f"`{code}`" in text, f"{DOC.name} does not document error {code}"
    assert f"version {schema['protocol_version']}" in text


# ---- JSON-RPC errors from a real server ---------------------------------------------------------------


@pytest.fixture
def server(start_server: StartServer) -> AgentServerProcess:
    return start_server()


def post(url: str, body: bytes | str) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=10)


def rpc_error(response: httpx.Response) -> tuple[Any, int, str]:
    assert response.status_code == 200, response.text
    doc = response.json()
    assert set(doc) == {"jsonrpc", "id", "error"} and doc["jsonrpc"] == "2.0", doc
    return doc["id"], doc["error"]["code"], doc["error"]["message"]


def test_a_body_that_is_not_json_is_a_parse_error(server: AgentServerProcess) -> None:
    assert rpc_error(post(server.url, "{not json")) == (None, -32700, "parse error: the body is not JSON")
    assert rpc_error(post(server.url, b"\xff\xfe"))[1] == -32700


@pytest.mark.parametrize(
    ("body", "echoed_id", "says"),
    [
        ("[]", None, "batch requests are not supported"),
        ('[{"jsonrpc": "2.0", "id": 1, "method": "Agent.identify"}]', None, "batch requests are not supported"),
        ('"hello"', None, "not a JSON-RPC 2.0 request"),
        ('{"jsonrpc": "2.0", "method": "Agent.identify"}', None, "notifications are not supported"),
        ('{"jsonrpc": "1.0", "id": 3, "method": "Agent.identify"}', 3, "jsonrpc"),
        ('{"jsonrpc": "2.0", "id": 4.5, "method": "Agent.identify"}', None, "id"),
        ('{"jsonrpc": "2.0", "id": "x", "method": 7}', "x", "method"),
        ('{"jsonrpc": "2.0", "id": 5, "method": "Agent.identify", "extra": 1}', 5, "extra"),
    ],
)
def test_what_is_not_one_json_rpc_request_is_an_invalid_request(
    server: AgentServerProcess, body: str, echoed_id: Any, says: str
) -> None:
    rpc_id, code, message = rpc_error(post(server.url, body))
    assert (rpc_id, code) == (echoed_id, -32600)
    assert says in message


def test_an_unknown_method_is_method_not_found(server: AgentServerProcess) -> None:
    body = '{"jsonrpc": "2.0", "id": "abc", "method": "Tasks.explode", "params": {}}'
    assert rpc_error(post(server.url, body)) == ("abc", -32601, "method not found: Tasks.explode")


@pytest.mark.parametrize(
    ("method", "params", "says"),
    [
        ("Tasks.create", {"tasks": [{"key": "", "verb": "delete_image"}]}, "tasks.0.key"),
        ("Tasks.create", {"tasks": [], "bogus": True}, "bogus"),
        ("Tasks.create", {}, "tasks"),
        ("Tasks.stop", {"agent_task_ids": ["a"], "fence": {"engine_id": "e", "epoch": "1"}}, "fence.epoch"),
        ("Tasks.clear", {"agent_task_ids": ["a"], "fence": {"engine_id": "e", "epoch": -1}}, "fence.epoch"),
        ("Tasks.statuses", {"all": True}, "all"),
        ("Tasks.revert", ["a", "b"], "params must be an object"),
    ],
)
def test_params_that_do_not_validate_are_invalid_params(
    server: AgentServerProcess, method: str, params: Any, says: str
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params})
    rpc_id, code, message = rpc_error(post(server.url, body))
    assert (rpc_id, code) == (9, -32602)
    assert says in message


def test_params_may_be_omitted_for_a_method_without_params(server: AgentServerProcess) -> None:
    answer = post(server.url, '{"jsonrpc": "2.0", "id": 1, "method": "Tasks.statuses"}').json()
    assert answer == {"jsonrpc": "2.0", "id": 1, "result": {"tasks": []}}


def test_transport_errors_are_http_statuses(server: AgentServerProcess) -> None:
    assert httpx.get(server.url, timeout=10).status_code == 405
    assert httpx.post(server.url.replace("/rpc", "/other"), content=b"{}", timeout=10).status_code == 404
    huge = b'{"jsonrpc": "2.0", "id": 1, "method": "Tasks.statuses", "params": {"x": "' + b"x" * (9 << 20) + b'"}}'
    assert post(server.url, huge).status_code == 413


def test_the_client_reports_json_rpc_errors_as_protocol_errors(server: AgentServerProcess) -> None:
    rpc = RpcClient(server.url, call_timeout=5)
    try:
        with pytest.raises(
            AgentProtocolError, match=r"refused Tasks.explode: method not found.*\(JSON-RPC error -32601\)"
        ):
            rpc.call("Tasks.explode", {})
        with pytest.raises(
            AgentProtocolError, match=r"refused Tasks.create: invalid params.*\(JSON-RPC error -32602\)"
        ):
            rpc.call("Tasks.create", {"bogus": 1})
        with pytest.raises(AgentProtocolError, match=r"refused Tasks.create with HTTP 413"):
            rpc.call("Tasks.create", {"tasks": [{"key": "k" * 100, "verb": "v" * 10}] * 100_000})
    finally:
        rpc.close()


# ---- an agent written from the document alone ---------------------------------------------------------


class MinimalAgent:
    """docs/agent-protocol.md, implemented in memory: tasks finish on their own clock."""

    VERBS = {
        "delete_image": {"storage_domain_id", "image_id"},
        "create_volume": {"storage_domain_id", "image_id", "volume_id", "parent_id"},
    }

    def __init__(self, pool_id: str) -> None:
        self.pool_id = pool_id
        self.protocol_version = "1.3"
        self.task_seconds = 0.1  # for tasks created from now on
        self.lock = threading.Lock()
        self.tasks: dict[str, dict[str, Any]] = {}  # by agent task id, cleared ones included
        self.ids_by_key: dict[str, str] = {}  # every key ever given
        self.volumes: list[dict[str, Any]] = [
            {"storage_domain_id": "sd-1", "image_id": "img-1", "volume_id": "vol-1", "parent_id": None}
        ]
        self.fence: dict[str, Any] | None = None

    # The envelope.

    def answer(self, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except ValueError:
            return self.error(None, -32700, "parse error")
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or type(request.get("id")) not in (int, str)
            or not isinstance(request.get("method"), str)
        ):
            return self.error(None, -32600, "invalid request")
        rpc_id, params = request["id"], request.get("params", {})
        methods: dict[str, tuple[Callable[[dict[str, Any]], Any], set[str]]] = {
            "Agent.identify": (self.identify, set()),
            "Tasks.create": (self.create, {"tasks", "fence"}),
            "Tasks.statuses": (self.statuses, set()),
            "Tasks.stop": (self.stop, {"agent_task_ids", "fence"}),
            "Tasks.clear": (self.clear, {"agent_task_ids", "fence"}),
            "Tasks.revert": (self.revert, {"agent_task_ids", "fence"}),
            "Storage.view": (self.storage, set()),
        }
        if request["method"] not in methods:
            return self.error(rpc_id, -32601, "method not found")
        method, allowed = methods[request["method"]]
        if not isinstance(params, dict) or not set(params) <= allowed:
            return self.error(rpc_id, -32602, "invalid params")
        with self.lock:
            fence = params.get("fence")
            if fence is not None:
                current = self.fence
                if current is not None and (
                    fence["epoch"] < current["epoch"]
                    or (fence["epoch"] == current["epoch"] and fence["engine_id"] != current["engine_id"])
                ):
                    return self.error(rpc_id, -32001, "stale epoch", current)
                self.fence = fence
            self.advance()
            return {"jsonrpc": "2.0", "id": rpc_id, "result": method(params)}

    @staticmethod
    def error(rpc_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
        error = {"code": code, "message": message} | ({"data": data} if data is not None else {})
        return {"jsonrpc": "2.0", "id": rpc_id, "error": error}

    # The clock: a task finishes by itself when its time comes; its effect is applied then.

    def advance(self) -> None:
        for task in self.tasks.values():
            if task["state"] == "running" and time.time() >= task["due"]:
                ok, message = self.apply(task["verb"], task["args"])
                task.update(state="finished", result="success" if ok else "failure", message=message, applied=ok)

    def apply(self, verb: str, args: dict[str, Any]) -> tuple[bool, str]:
        where = (args["storage_domain_id"], args["image_id"])
        in_image = [v for v in self.volumes if (v["storage_domain_id"], v["image_id"]) == where]
        if verb == "delete_image":
            if not in_image:
                return False, "image not found"
            self.volumes = [v for v in self.volumes if v not in in_image]
            return True, ""
        parent = args.get("parent_id") or None
        if parent and parent not in {v["volume_id"] for v in in_image}:
            return False, "parent not found"
        sd, image = where
        self.volumes.append(
            {"storage_domain_id": sd, "image_id": image, "volume_id": args["volume_id"], "parent_id": parent}
        )
        return True, ""

    # The methods.

    def identify(self, _: dict[str, Any]) -> Any:
        return {
            "agent_id": "minimal-1",
            "pool_id": self.pool_id,
            "protocol_version": self.protocol_version,
            "software": "minimal/0",
        }

    def create(self, params: dict[str, Any]) -> Any:
        results = []
        for spec in params["tasks"]:
            key, verb, args = spec["key"], spec["verb"], spec.get("args", {})
            if key in self.ids_by_key:
                results.append({"key": key, "accepted": True, "agent_task_id": self.ids_by_key[key]})
            elif verb not in self.VERBS or not set(args) <= self.VERBS[verb]:
                results.append({"key": key, "accepted": False, "error": f"cannot {verb} with {sorted(args)}"})
            else:
                agent_task_id = str(uuid.uuid4())
                self.ids_by_key[key] = agent_task_id
                self.tasks[agent_task_id] = {
                    "key": key,
                    "verb": verb,
                    "args": args,
                    "state": "running",
                    "result": "",
                    "message": "",
                    "created": time.time(),
                    "due": time.time() + self.task_seconds,
                    "cleared": False,
                    "applied": False,
                    "reverted": False,
                }
                results.append({"key": key, "accepted": True, "agent_task_id": agent_task_id})
        return {"results": results}

    def statuses(self, _: dict[str, Any]) -> Any:
        return {
            "tasks": [
                {
                    "agent_task_id": agent_task_id,
                    "key": t["key"],
                    "verb": t["verb"],
                    "state": t["state"],
                    "result": t["result"],
                    "message": t["message"],
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t["created"])),
                }
                for agent_task_id, t in self.tasks.items()
                if not t["cleared"]
            ]
        }

    def stop(self, params: dict[str, Any]) -> Any:
        for agent_task_id in params["agent_task_ids"]:
            task = self.tasks.get(agent_task_id)
            if task and task["state"] == "running":
                task.update(state="aborted", result="failure", message="stopped")
        return {}

    def clear(self, params: dict[str, Any]) -> Any:
        for agent_task_id in params["agent_task_ids"]:
            task = self.tasks.get(agent_task_id)
            if task and task["state"] != "running":
                task["cleared"] = True
        return {}

    def revert(self, params: dict[str, Any]) -> Any:
        results = []
        for agent_task_id in params["agent_task_ids"]:
            task = self.tasks.get(agent_task_id)
            outcome = {"agent_task_id": agent_task_id, "reverted": False, "error": ""}
            if task and task["applied"]:
                if task["verb"] == "delete_image":
                    outcome["error"] = "delete_image cannot be reverted"
                elif not task["reverted"]:
                    self.volumes = [v for v in self.volumes if v["volume_id"] != task["args"]["volume_id"]]
                    task["reverted"] = True
                outcome["reverted"] = task["reverted"]
            results.append(outcome)
        return {"results": results}

    def storage(self, _: dict[str, Any]) -> Any:
        return {"storage_domains": ["sd-1"], "volumes": list(self.volumes)}


@pytest.fixture
def minimal_agent() -> Iterator[tuple[MinimalAgent, str]]:
    agent = MinimalAgent("pool-m")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            answer = json.dumps(agent.answer(body)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent, f"http://127.0.0.1:{httpd.server_address[1]}/rpc"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_the_client_drives_an_agent_written_from_the_document(minimal_agent: tuple[MinimalAgent, str]) -> None:
    agent, url = minimal_agent
    delete = TaskSpec(key="k-delete", verb="delete_image", args={"storage_domain_id": "sd-1", "image_id": "img-1"})
    volume = {"storage_domain_id": "sd-1", "image_id": "img-1", "volume_id": "vol-2", "parent_id": "vol-1"}
    create = TaskSpec(key="k-create", verb="create_volume", args=volume)
    with HttpAgent(url, expected_pool="pool-m", call_timeout=5) as client:
        identity = client.identify()
        assert (identity.agent_id, identity.protocol_version) == ("minimal-1", "1.3"), "another minor is fine"

        made = client.create_tasks([create, TaskSpec(key="k-bad", verb="explode")])
        assert [r.accepted for r in made] == [True, False] and "cannot explode" in made[1].error
        again = client.create_tasks([create])
        assert again[0].agent_task_id == made[0].agent_task_id, "the same key is the same task"
        wait_for(lambda: [s.succeeded for s in client.task_statuses()] == [True], timeout=10, what="create_volume")
        assert ("sd-1", "img-1", "vol-2") in client.storage().triples()

        created = made[0].agent_task_id
        assert created
        outcomes = client.revert_tasks([created, created, "unknown"])
        assert [o.reverted for o in outcomes] == [True, True, False], "undone, undone already, had no effect"
        assert ("sd-1", "img-1", "vol-2") not in client.storage().triples()

        agent.task_seconds = 60.0
        (slow,) = client.create_tasks([delete])
        assert slow.agent_task_id
        client.stop_task(slow.agent_task_id)
        states = {s.key: (s.state, s.result, s.message) for s in client.task_statuses()}
        assert states["k-delete"] == (AgentTaskState.ABORTED, AgentTaskResult.FAILURE, "stopped")
        assert client.storage().triples() == {("sd-1", "img-1", "vol-1")}, "a stopped task had no effect"

        client.clear_tasks([s.agent_task_id for s in client.task_statuses()])
        assert client.task_statuses() == []

        client.fence = Fence(engine_id="engine-b", epoch=7)
        client.clear_tasks(["nothing"])
        client.fence = Fence(engine_id="engine-a", epoch=6)
        with pytest.raises(StaleEpochError, match="stale epoch"):
            client.stop_tasks([slow.agent_task_id])


def test_an_agent_of_another_major_version_or_pool_is_refused(minimal_agent: tuple[MinimalAgent, str]) -> None:
    agent, url = minimal_agent
    refused = pytest.raises(AgentProtocolError, match="serves pool 'pool-m', not pool 'pool-x'")
    with HttpAgent(url, expected_pool="pool-x", call_timeout=5) as client, refused:
        client.task_statuses()
    agent.protocol_version = "0.9"
    refused = pytest.raises(
        AgentProtocolError, match=r"speaks protocol 0\.9; this engine speaks 1\.x; upgrade the agent"
    )
    with HttpAgent(url, call_timeout=5) as client, refused:
        client.task_statuses()
