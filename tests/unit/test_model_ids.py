"""Derived ids: the fast text form is the RFC 4122 name-based UUID the standard library makes."""

from __future__ import annotations

from uuid import UUID, uuid4, uuid5

import pytest

from orchestrator.domain.model import EntityRef, EntityType, derive_id, derived_text, entity_aggregate_id


@pytest.mark.parametrize("label", ["task/disk-0001-1", "child/x", "", "é ✓ unicode", "a" * 300])
def test_derived_text_is_the_version_5_uuid_of_the_standard_library(label: str) -> None:
    for command_id in (uuid4(), UUID(int=0), UUID(int=(1 << 128) - 1)):
        text = derived_text(command_id, label)
        assert text == str(uuid5(command_id, label)) == str(derive_id(command_id, label))
        assert UUID(text).version == 5


def test_entity_aggregate_ids_are_stable_and_distinct() -> None:
    vm, disk = EntityRef(EntityType.VM, "x-1"), EntityRef(EntityType.DISK, "x-1")
    assert entity_aggregate_id(vm) == entity_aggregate_id(EntityRef(EntityType.VM, "x-1"))
    assert entity_aggregate_id(vm) != entity_aggregate_id(disk)
    assert entity_aggregate_id(vm) == uuid5(UUID("6c0f5c1e-3a59-4b7e-9d59-3c1b8e0e7a11"), "vm:x-1")
