"""The service as a real process, on both stores: submitting (idempotent), errors as problem documents,
paging, cancelling, the engine in-process with a standby taking over, live events, health and metrics."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from orchestrator.bootstrap import Orchestrator
from tests.conftest import wait_for
from tests.test_api_harness import FAST_ENGINE, Service, assert_problem, running_service


def seeded(store_url: str, agent_state: Path, vms: int = 4) -> None:
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as orch:
        orch.seed(vms=vms, disks=1)


def test_submit_is_idempotent_and_errors_are_problem_documents(
    store_url: str, agent_state: Path, tmp_path: Path
) -> None:
    seeded(store_url, agent_state)
    with running_service(tmp_path, store_url, agent_state) as service, service.client() as api:
        ident = str(uuid.uuid4())
        body = {"flow": "HibernateVm", "params": {"vm_id": "vm-0001"}, "command_id": ident}
        first = api.post("/api/v1/commands", json=body)
        assert first.status_code == 201, first.text
        assert first.headers["location"] == f"/api/v1/commands/{ident}"
        assert first.json()["duplicate"] is False
        again = api.post("/api/v1/commands", json=body)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert again.json()["command_id"] == ident
        other = {**body, "params": {"vm_id": "vm-0002"}}
        problem = assert_problem(api.post("/api/v1/commands", json=other), 409, "with other parameters")
        assert problem["exit_code"] == 5 and problem["instance"] == "/api/v1/commands"

        assert_problem(api.post("/api/v1/commands", json={"flow": "NoSuchFlow"}), 400)
        assert_problem(api.post("/api/v1/commands", json={"flow": "RemoveVm", "params": {"vm": "x"}}), 400)
        missing = assert_problem(api.post("/api/v1/commands", json={"params": {}}), 422, "body.flow")
        assert missing["errors"][0]["location"] == "body.flow"
        assert_problem(api.post("/api/v1/commands", content=b"flow=RemoveVm"), 415)
        assert_problem(api.post("/api/v1/commands", content=b"{not json", headers=_json()), 422)
        locked = {"flow": "RemoveVm", "params": {"vm_id": "vm-0001"}}
        assert_problem(api.post("/api/v1/commands", json=locked), 409, "is locked")

        assert_problem(api.get(f"/api/v1/commands/{uuid.uuid4()}"), 404, "no command")
        assert_problem(api.get("/api/v1/commands/not-a-uuid"), 404, "is not a command id")
        assert_problem(api.get("/api/v1/nothing-here"), 404, "no such resource")
        assert_problem(api.delete("/api/v1/commands"), 405)
        assert_problem(api.get("/api/v1/entities/planet/earth/tasks"), 400, "unknown entity type")
        assert_problem(api.get("/api/v1/commands?limit=0"), 422, "query.limit")
        assert_problem(api.post("/api/v1/commands", content=b"x" * (1024 * 1024 + 1), headers=_json()), 413)

        batch = api.post(
            "/api/v1/command-batches",
            json={"commands": [{"flow": "HibernateVm", "params": {"vm_id": "vm-0003"}}, locked]},
        )
        assert batch.status_code == 200, batch.text
        answers = batch.json()
        assert (answers["accepted"], answers["refused"]) == (1, 1)
        assert answers["answers"][1]["problem"]["status"] == 409

        cancel = api.post(f"/api/v1/commands/{ident}/cancel", json={"reason": "not today"})
        assert cancel.status_code == 200, cancel.text
        assert (cancel.json()["command_id"], cancel.json()["requested"], cancel.json()["reason"]) == (
            ident, True, "not today",
        )  # fmt: skip
        twice = api.post(f"/api/v1/commands/{ident}/cancel", json={})
        assert twice.json()["requested"] is False and twice.json()["reason"] == "not today"
        assert api.get(f"/api/v1/commands/{ident}").json()["cancel_requested"] is True


def test_terminate_then_retry_over_the_api(store_url: str, agent_state: Path, tmp_path: Path) -> None:
    seeded(store_url, agent_state)
    with running_service(tmp_path, store_url, agent_state) as service, service.client() as api:
        ident = api.post("/api/v1/commands", json={"flow": "HibernateVm", "params": {"vm_id": "vm-0001"}}).json()[
            "command_id"
        ]
        assert_problem(api.post(f"/api/v1/commands/{ident}/retry", json={}), 409, "retry it once it has ended")
        assert_problem(api.post(f"/api/v1/commands/{ident}/terminate", json={}), 422, "body.reason")
        done = api.post(f"/api/v1/commands/{ident}/terminate", json={"reason": "host <b>sd-1</b> is gone"})
        assert done.status_code == 200, done.text
        assert (done.json()["format"], done.json()["command_id"]) == ("orchestrator.terminate/1", ident)
        assert "vm:vm-0001" in done.json()["released_locks"]
        shown = api.get(f"/api/v1/commands/{ident}").json()
        assert (shown["status"], shown["terminate_reason"]) == ("failed", "host <b>sd-1</b> is gone")
        assert [e["event"] for e in shown["history"]][-1] == "Terminated"
        assert_problem(
            api.post(f"/api/v1/commands/{ident}/terminate", json={"reason": "again"}), 409, "has already ended"
        )

        retried = api.post(f"/api/v1/commands/{ident}/retry", json={})
        assert retried.status_code == 201, retried.text
        new_id = retried.json()["command_id"]
        assert retried.headers["location"] == f"/api/v1/commands/{new_id}"
        assert (retried.json()["retry_of"], retried.json()["flow"]) == (ident, "HibernateVm")
        assert api.get(f"/api/v1/commands/{ident}").json()["retries"] == [new_id]
        assert api.get(f"/api/v1/commands/{new_id}").json()["retry_of"] == ident
        assert_problem(api.post(f"/api/v1/commands/{uuid.uuid4()}/retry", json={}), 404, "no command")


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_list_pages_by_cursor_or_offset_filters_and_sorts(store_url: str, agent_state: Path, tmp_path: Path) -> None:
    seeded(store_url, agent_state, vms=8)
    with running_service(tmp_path, store_url, agent_state) as service, service.client() as api:
        ids = []
        for n in range(1, 8):
            answer = api.post("/api/v1/commands", json={"flow": "HibernateVm", "params": {"vm_id": f"vm-000{n}"}})
            ids.append(answer.json()["command_id"])
        pages, cursor = [], None
        while True:
            page = api.get("/api/v1/commands", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            pages.append([c["command_id"] for c in page["commands"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [ident for page in pages for ident in page] == ids
        newest = api.get("/api/v1/commands", params={"sort": "-created_at", "limit": 100}).json()["commands"]
        assert [c["command_id"] for c in newest] == ids[::-1]
        by_offset = api.get("/api/v1/commands", params={"limit": 3, "offset": 3}).json()["commands"]
        assert [c["command_id"] for c in by_offset] == pages[1]
        rows = api.get("/api/v1/commands", params={"limit": 100}).json()["commands"]
        since = rows[3]["created_at"]
        later = api.get("/api/v1/commands", params={"since": since}).json()["commands"]
        assert [c["command_id"] for c in later] == ids[3:]
        earlier = api.get("/api/v1/commands", params={"until": since}).json()["commands"]
        assert [c["command_id"] for c in earlier] == ids[:3]
        template = api.post(
            "/api/v1/commands", json={"flow": "CreateTemplate", "params": {"vm_id": "vm-0008", "name": "t"}}
        )
        parent = template.json()["command_id"]
        children = api.get("/api/v1/commands", params={"parent": parent}).json()["commands"]
        assert children and all(c["parent_id"] == parent for c in children)
        ids.append(parent)
        rows = api.get("/api/v1/commands", params={"limit": 100}).json()["commands"]
        assert api.get("/api/v1/commands", params={"status": ["accepted", "failed"]}).json()["commands"] == rows
        assert api.get("/api/v1/commands", params={"status": "succeeded"}).json()["commands"] == []
        assert api.get("/api/v1/commands", params={"type": "RemoveVm"}).json()["commands"] == []
        by_type = api.get("/api/v1/commands", params={"type": "CreateTemplate"}).json()["commands"]
        assert [c["command_id"] for c in by_type] == [parent]
        assert_problem(api.get("/api/v1/commands", params={"cursor": "garbage!"}), 400, "cursor")
        first = api.get("/api/v1/commands", params={"limit": 3}).json()["next_cursor"]
        assert_problem(api.get("/api/v1/commands", params={"cursor": first, "sort": "status"}), 400, "sort=")
        assert_problem(api.get("/api/v1/commands", params={"cursor": first, "offset": 3}), 400, "not both")
        assert_problem(api.get("/api/v1/commands", params={"sort": "summary"}), 400, "sort must be")
        assert_problem(api.get("/api/v1/commands", params={"status": "lost"}), 400, "status must be")


def engine_state(service: Service) -> str | None:
    with service.client() as api:
        state: str | None = api.get("/api/v1/engine").json()["lease"]
        return state


def wait_status(api: httpx.Client, command_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(api.get(f"/api/v1/commands/{command_id}").json())
        return bool(seen["status"] == status)

    wait_for(reached, timeout=timeout, interval=0.1, what=f"command {command_id} to be {status}")
    return seen


def test_engine_in_process_a_standby_takes_over_and_metrics_follow(
    store_url: str, agent_state: Path, tmp_path: Path
) -> None:
    seeded(store_url, agent_state)
    with running_service(tmp_path, store_url, agent_state, "--engine", env=FAST_ENGINE) as first:
        wait_for(lambda: engine_state(first) == "held", timeout=30, what="the first engine to hold the lease")
        with (
            running_service(tmp_path, store_url, agent_state, "--engine", env=FAST_ENGINE) as second,
            second.client() as api,
        ):
            wait_for(lambda: engine_state(second) == "standing_by", timeout=10, what="the second to stand by")
            not_ready = assert_problem(api.get("/readyz"), 503, "engine lease")
            assert {c["name"]: c["ok"] for c in not_ready["checks"]} == {
                "store": True, "projections": True, "engine lease": False,
            }  # fmt: skip
            assert api.get("/healthz").json() == {"status": "ok"}

            events: list[dict[str, Any]] = []
            listening = threading.Event()
            reader = threading.Thread(target=_read_events, args=(second, events, listening), daemon=True)
            reader.start()
            assert listening.wait(10), "the event stream did not say hello"
            ran = api.post("/api/v1/commands", json={"flow": "HibernateVm", "params": {"vm_id": "vm-0001"}}).json()
            wait_status(api, ran["command_id"], "succeeded")  # run by the first process's engine
            reader.join(15)
            assert any(ran["command_id"] in e.get("commands", []) for e in events), events

            first.stop(signal.SIGKILL)
            wait_for(lambda: engine_state(second) == "held", timeout=30, what="the standby to take the lease")
            assert api.get("/readyz").json()["ready"] is True
            taken = api.post("/api/v1/commands", json={"flow": "HibernateVm", "params": {"vm_id": "vm-0002"}})
            wait_status(api, taken.json()["command_id"], "succeeded")
            metrics = api.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert 'orchestrator_commands{flow="HibernateVm",status="succeeded"} 2.0' in text
            assert 'orchestrator_engine_lease{state="held"} 1.0' in text
            assert "orchestrator_engine_cycle_seconds_count" in text
            assert 'orchestrator_agent_call_seconds_count{method="create_tasks",pool="default"}' in text
            assert 'orchestrator_projection_lag_events{projection="commands"}' in text
            assert "orchestrator_engine_recovery_seconds" in text
            assert second.stop() == 0
    assert "Traceback" not in first.log() + second.log()


def _read_events(service: Service, events: list[dict[str, Any]], listening: threading.Event) -> None:
    """Read the event stream until a `change` naming a command arrives (bounded by the read timeout)."""
    with service.client() as api, api.stream("GET", "/api/v1/events", timeout=httpx.Timeout(10.0)) as stream:
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                if name == "hello":
                    listening.set()
                elif name == "change":
                    events.append(data)
                    if data["commands"]:
                        return
