"""The engine's process tunes the cyclic collector once, and leaves a process's own tuning alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from orchestrator.collector import PYTHON_DEFAULT_THRESHOLDS, collector_paused, tune_for_engine


@pytest.fixture(autouse=True)
def thresholds_restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_an_engine_makes_full_collections_rarer_than_the_interpreter_would() -> None:
    gc.set_threshold(*PYTHON_DEFAULT_THRESHOLDS)
    tune_for_engine()
    young, middle, full = gc.get_threshold()
    assert (young, middle) == PYTHON_DEFAULT_THRESHOLDS[:2] and full >= 10 * PYTHON_DEFAULT_THRESHOLDS[2]


def test_a_process_that_tuned_its_collector_keeps_its_tuning() -> None:
    gc.set_threshold(5_000, 20, 20)
    tune_for_engine()
    assert gc.get_threshold() == (5_000, 20, 20)


def test_the_collector_is_paused_inside_the_block_and_on_again_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
