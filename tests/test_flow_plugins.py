"""A flow of one's own, from a package installed beside the orchestrator, runs end to end.

The package (tests/example_flow) declares its flow in the `orchestrator.flows` entry-point
group and uses only the orchestrator's public face; it is installed into a folder of the
test's own (pip --target), which the CLI processes find on their PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.bootstrap import Orchestrator
from orchestrator.domain.inventory import Disk
from orchestrator.domain.model import EntityRef, EntityType
from tests.conftest import REPO, cli_env, invariants_hold, run_cli


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("plugins")
    source = tmp_path_factory.mktemp("source") / "example_flow"  # built there: the checkout stays clean
    shutil.copytree(REPO / "tests" / "example_flow", source)
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    return target


def test_a_flow_from_a_package_of_its_own_is_listed_and_runs_end_to_end(
    plugin_path: Path, store_url: str, agent_state: Path
) -> None:
    env = cli_env(PYTHONPATH=os.pathsep.join([str(plugin_path), str(REPO)]), ORCHESTRATOR_AGENT_TASK_SECONDS="0.2")
    base = ["--store", store_url, "--agent-state", str(agent_state)]
    listed = run_cli(*base, "flows", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    flows = {f["name"]: f for f in json.loads(listed.stdout)}
    assert "ExtendDisk" in flows and "RemoveVm" in flows, "the package's flow beside the built-in ones"
    assert flows["ExtendDisk"]["parameters"]["required"] == ["disk_id"]

    assert run_cli(*base, "seed", "--vms", "1", "--disks", "1", env=env).returncode == 0
    submitted = run_cli(*base, "submit", "ExtendDisk", "--params", '{"disk_id": "disk-0001-1"}', "--json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    command_id = json.loads(submitted.stdout)["command_id"]
    ran = run_cli(*base, "run", "--until-idle", "--timeout", "60", "--poll-interval", "0.05", env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]

    shown = json.loads(run_cli(*base, "show", command_id, "--json", env=env).stdout)
    assert shown["status"] == "succeeded" and shown["flow"] == "ExtendDisk"
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as orch:
        disk = orch.entity(EntityRef(EntityType.DISK, "disk-0001-1"))
        assert isinstance(disk, Disk) and len(disk.volumes) == 2 and disk.active_volume.startswith("img-0001-1-ext-")
        invariants_hold(orch, agent_state, expected_commands=[orch.command(command_id).id])


def test_without_the_package_the_flow_is_unknown(store_url: str, agent_state: Path) -> None:
    base = ["--store", store_url, "--agent-state", str(agent_state)]
    refused = run_cli(*base, "submit", "ExtendDisk", "--params", '{"disk_id": "d"}')
    assert refused.returncode == 4
    assert "unknown flow 'ExtendDisk'; known flows:" in refused.stderr
