"""The API and the CLI give the same answers on the same store, resource by resource, on both stores.

One store per backend for the module: an inventory, a command that ran to its
end, and one still in flight (accepted, its locks held, its tasks planned), with
no engine running, so nothing moves between the two reads. The CLI runs
in-process (`orchestrator ... --json`); the API is a real service process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrator.bootstrap import Orchestrator
from orchestrator.cli import app as cli_app
from orchestrator.testing import SimulatedAgent
from tests.conftest import run_until_idle
from tests.test_api_harness import Service, module_store, running_service


@dataclass
class Scene:
    store_url: str
    agent_state: Path
    service: Service
    ended_id: str
    in_flight_id: str
    task_id: str


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def scene(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp(f"parity-{request.param}")
    with module_store(str(request.param), workdir) as store_url:
        agent_state = workdir / "agent.db"
        with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
            orch.seed(vms=3, disks=2)
            ended = orch.submit("CreateTemplate", {"vm_id": "vm-0001", "name": "golden"})
            agent = SimulatedAgent.open(agent_state, task_seconds=0.05)
            try:
                run_until_idle(orch, agent)
            finally:
                agent.close()
            flying = orch.submit("RemoveVm", {"vm_id": "vm-0002"})
            task_id = next(iter(orch.command(flying.command_id).tasks))
        with running_service(workdir, store_url, agent_state) as service:
            yield Scene(store_url, agent_state, service, str(ended.command_id), str(flying.command_id), task_id)


def cli_json(scene: Scene, *args: str) -> Any:
    result = CliRunner().invoke(
        cli_app, ["--store", scene.store_url, "--agent-state", str(scene.agent_state), *args, "--json"]
    )
    assert result.exit_code in (0, 20), f"exit {result.exit_code}: {result.output}"
    return json.loads(result.stdout)


def api_json(scene: Scene, path: str) -> Any:
    with scene.service.client() as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_list(scene: Scene) -> None:
    for cli_args, query in (
        ((), ""),
        (("--children",), "&children=true"),
        (("--status", "accepted"), "&status=accepted"),
        (("--in-flight",), "&in_flight=true"),
        (("--entity", "vm:vm-0002"), "&entity=vm:vm-0002"),
    ):
        cli = cli_json(scene, "list", *cli_args)
        api = api_json(scene, f"/api/v1/commands?limit=1000{query}")
        assert api.pop("next_cursor") is None
        assert api == cli, cli_args
    listed = {c["command_id"] for c in cli_json(scene, "list")["commands"]}
    assert listed == {scene.ended_id, scene.in_flight_id}


def test_show(scene: Scene) -> None:
    for ident in (scene.ended_id, scene.in_flight_id):
        assert api_json(scene, f"/api/v1/commands/{ident}") == cli_json(scene, "show", ident)
    at_first = cli_json(scene, "show", scene.ended_id, "--at-version", "1")
    assert api_json(scene, f"/api/v1/commands/{scene.ended_id}?at_version=1") == at_first
    assert at_first["status"] == "accepted"


def test_history(scene: Scene) -> None:
    cli = cli_json(scene, "inspect", "--command", scene.ended_id, "--at-version", "2")
    assert api_json(scene, f"/api/v1/commands/{scene.ended_id}/history?at_version=2") == cli
    assert cli["state_version"] == 2 and len(cli["events"]) > 2


def test_tasks(scene: Scene) -> None:
    for entity in ("vm:vm-0002", "storage_domain:sd-1", "vm:vm-0001"):
        kind, ident = entity.split(":")
        assert api_json(scene, f"/api/v1/entities/{kind}/{ident}/tasks") == cli_json(scene, "tasks", "--entity", entity)
        running = cli_json(scene, "tasks", "--entity", entity, "--running")
        assert api_json(scene, f"/api/v1/entities/{kind}/{ident}/tasks?running=true") == running
    assert cli_json(scene, "tasks", "--entity", "vm:vm-0002")["has_running_tasks"] is True


def test_entities(scene: Scene) -> None:
    cli = cli_json(scene, "entities", "--task", scene.task_id)
    assert api_json(scene, f"/api/v1/tasks/{scene.task_id}/entities") == cli
    assert cli["entities"]


def test_active(scene: Scene) -> None:
    cli = cli_json(scene, "active")
    assert api_json(scene, "/api/v1/tasks/active") == cli
    assert {t["root_command_id"] for t in cli["tasks"]} == {scene.in_flight_id}


def test_locks(scene: Scene) -> None:
    assert api_json(scene, "/api/v1/locks") == cli_json(scene, "locks")
    assert api_json(scene, "/api/v1/locks?entity=vm:vm-0002") == cli_json(scene, "locks", "--entity", "vm:vm-0002")


def test_inventory(scene: Scene) -> None:
    assert api_json(scene, "/api/v1/inventory") == cli_json(scene, "inventory")
    assert api_json(scene, "/api/v1/inventory?all=true") == cli_json(scene, "inventory", "--all")


def test_projections_status(scene: Scene) -> None:
    assert api_json(scene, "/api/v1/projections") == cli_json(scene, "projections", "status")


def test_inspect(scene: Scene) -> None:
    cli = cli_json(scene, "inspect")
    assert api_json(scene, "/api/v1/inspection") == cli
    assert cli["exit_code"] == 20 and [c["command_id"] for c in cli["commands"]] == [scene.in_flight_id]
    assert api_json(scene, "/api/v1/inspection?agent=false") == cli_json(scene, "inspect", "--no-agent")


def test_flows(scene: Scene) -> None:
    assert api_json(scene, "/api/v1/flows") == cli_json(scene, "flows")
