"""Pausing Python's cyclic garbage collector around work that makes many objects at once.

Recovery, a seed and a read-model batch each make tens or hundreds of thousands of
containers that either live on or die by reference counting; meanwhile the
collector would rescan the whole heap over and over for nothing (a third of
recovery's time at 10,000 commands, a fifth of a 5,000-VM seed, a quarter of a
large catch-up). Reference counting still frees everything without cycles.

An engine's process also makes full collections rarer (`tune_for_engine`): its
commands in flight, a cycle's batches and a catch-up's rows live through two
young collections and then die, so they keep pushing the oldest generation past
the quarter of new objects that sets off a full collection, and each full one
walks the whole heap (a third to nearly half of the time at 100 to 1,000
commands in flight, with the interpreter's defaults).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

PYTHON_DEFAULT_THRESHOLDS = (700, 10, 10)
# A full collection is considered after 100 collections of the middle generation, not 10.
ENGINE_THRESHOLDS = (700, 10, 100)


def tune_for_engine() -> None:
    """Full collections a tenth as often, unless the process has tuned its collector already."""
    if gc.get_threshold() == PYTHON_DEFAULT_THRESHOLDS:
        gc.set_threshold(*ENGINE_THRESHOLDS)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside the block; the collector is on again after it if it was before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
