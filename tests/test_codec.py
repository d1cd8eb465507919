"""The events' codec (orchestrator/store/codec.py) writes what the library's JSON transcoder writes.

Every event and snapshot a run of every flow records (successes, a failure on the
agent with its revert, a cancel, a termination, a retry, an end action that raised)
is read back by both transcoders to the same objects, and written again by both to
the same bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from orchestrator.bootstrap import Orchestrator
from orchestrator.flows import FLOWS
from orchestrator.store.codec import OrjsonTranscoder
from orchestrator.testing import FaultConfig, SimulatedAgent
from tests.conftest import events_table, run_until_idle, store_sql


def _transcoders() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    library, ours = JSONTranscoder(), OrjsonTranscoder()
    for transcoder in (library, ours):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return library, ours


def _run_every_kind_of_command(orch: Orchestrator, agent: SimulatedAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    orch.seed(7, 2)
    orch.submit("RemoveVm", {"vm_id": "vm-0001"})
    orch.submit("CreateTemplate", {"vm_id": "vm-0002", "name": "gold é ✓", "target_storage_domain_id": "sd-2"})
    orch.submit("CreateSnapshot", {"vm_id": "vm-0003", "description": "avant « la » mise à jour"})
    cancelled = orch.submit("HibernateVm", {"vm_id": "vm-0004"})
    orch.request_cancel(cancelled.command_id, "not now")
    terminated = orch.submit("RemoveVm", {"vm_id": "vm-0005"})
    orch.terminate(terminated.command_id, "agent gone for good")
    calls: list[int] = []
    original = FLOWS["HibernateVm"].end_successfully

    def flaky(command: Any, inventory: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("inventory service hiccup")
        original(command, inventory)

    monkeypatch.setattr(FLOWS["HibernateVm"], "end_successfully", flaky)
    orch.submit("HibernateVm", {"vm_id": "vm-0006"})
    run_until_idle(orch, agent)
    agent.backend.set_faults(FaultConfig(fail_verbs=["create_volume"]))
    failed = orch.submit("CreateSnapshot", {"vm_id": "vm-0007"})
    run_until_idle(orch, agent)
    agent.backend.set_faults(FaultConfig())
    orch.retry(failed.command_id)
    run_until_idle(orch, agent)


def test_every_recorded_state_reads_and_writes_as_the_library_does(
    orch: Orchestrator, agent: SimulatedAgent, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_every_kind_of_command(orch, agent, monkeypatch)
    library, ours = _transcoders()
    snapshots = "stored_snapshots" if "sqlite" in store_url else "orchestrator_snapshots"
    rows = store_sql(store_url, f"SELECT topic, state FROM {events_table(store_url)}")
    rows += store_sql(store_url, f"SELECT topic, state FROM {snapshots}")
    topics = {str(topic).rsplit(".", 1)[-1] for topic, _ in rows}
    assert {"Accepted", "TasksEnded", "EndActionFailed", "Terminated", "RetriedAs", "CancelRequested"} <= topics
    for topic, state in rows:
        raw = bytes(state)
        expected = library.decode(raw)
        assert ours.decode(raw) == expected, topic
        assert ours.encode(expected) == library.encode(expected), topic


def test_typed_values_anywhere_in_a_document_are_revived() -> None:
    library, ours = _transcoders()
    when = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    document = {
        "timestamp": when,
        "nested": [{"at": when, "amount": Decimal("1.50")}, [when, {"deeper": [Decimal("2")]}]],
        "text": '"_type_" is only a word here',
        "_type_": "a plain key, not a typed value",
    }
    encoded = ours.encode(document)
    assert encoded == library.encode(document)
    assert ours.decode(encoded) == library.decode(encoded) == document


def test_an_unknown_type_is_refused_both_ways() -> None:
    _, ours = _transcoders()
    with pytest.raises(TranscodingNotRegisteredError):
        ours.encode({"value": object()})
    with pytest.raises(TranscodingNotRegisteredError):
        ours.decode(b'{"value": {"_type_": "no_such_type", "_data_": 1}}')
    assert ours.decode(ours.encode({"id": uuid4().hex})) is not None


def test_an_orchestrator_store_reads_events_written_before_the_codec(
    store_url: str, agent_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written with the library's transcoder (an older version) reads the same."""
    from orchestrator.store import event_store

    monkeypatch.setattr(event_store.OrchestratorApp, "construct_transcoder", lambda app: _transcoders()[0])
    with Orchestrator.open(store_url, agent_state=agent_state, create=True) as old:
        old.seed(1, 2)
        accepted = old.submit("RemoveVm", {"vm_id": "vm-0001"})
    monkeypatch.undo()
    with Orchestrator.open(store_url, agent_state=agent_state, create=False) as new:
        command = new.command(accepted.command_id)
        assert command.flow == "RemoveVm" and len(command.tasks) == 2
        assert command.accepted_at.tzinfo is not None


def test_what_orjson_refuses_is_written_the_library_way() -> None:
    library, ours = _transcoders()
    for document in ({"by_number": {1: "one"}}, {"huge": 2**70}):
        assert ours.encode(document) == library.encode(document)
        assert ours.decode(ours.encode(document)) == library.decode(library.encode(document))
