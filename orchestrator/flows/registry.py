"""The flows the orchestrator knows: every flow registered in the entry-point group `orchestrator.flows`.

The built-in flows are registered the same way (pyproject.toml), so a package of
one's own adds a flow by declaring, in its own pyproject.toml,

    [project.entry-points."orchestrator.flows"]
    ExtendDisk = "my_package.flows:ExtendDisk"

where the object named is a `Flow` subclass (or instance). A program that embeds
the orchestrator may also call `register_flow(MyFlow())`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points

from orchestrator.errors import InputError, UnknownFlowError
from orchestrator.flows.base import Flow

ENTRY_POINT_GROUP = "orchestrator.flows"


class FlowRegistry(Mapping[str, Flow]):
    """Flows by name, loaded from the entry points the first time one is asked for."""

    def __init__(self) -> None:
        self._flows: dict[str, Flow] | None = None
        self._extra: dict[str, Flow] = {}

    def _loaded(self) -> dict[str, Flow]:
        if self._flows is None:
            found = {**_from_entry_points(), **self._extra}
            self._flows = {name: found[name] for name in sorted(found)}
        return self._flows

    def register(self, flow: Flow) -> None:
        known = self._loaded().get(flow.name)
        if known is not None and known is not flow:
            raise InputError(f"a flow named {flow.name!r} is registered already ({type(known).__module__})")
        self._extra[flow.name] = flow
        self._loaded()[flow.name] = flow

    def __getitem__(self, name: str) -> Flow:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


def _from_entry_points() -> dict[str, Flow]:
    found: dict[str, Flow] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:
            raise InputError(f"flow {ep.name!r} ({ep.value}) could not be loaded: {exc}") from None
        flow = loaded() if isinstance(loaded, type) and issubclass(loaded, Flow) else loaded
        if not isinstance(flow, Flow):
            raise InputError(f"entry point {ep.name!r} ({ep.value}) is not a Flow")
        if flow.name != ep.name:
            raise InputError(f"entry point {ep.name!r} names a flow called {flow.name!r}; the two must agree")
        if flow.name in found:
            raise InputError(f"two packages register a flow named {flow.name!r}")
        found[flow.name] = flow
    if not found:
        raise InputError("no flow is registered: is the orchestrator installed (pip install -e .)?")
    return found


FLOWS = FlowRegistry()


def register_flow(flow: Flow) -> None:
    """Add a flow from a program that embeds the orchestrator (packages use the entry-point group)."""
    FLOWS.register(flow)


def get_flow(name: str) -> Flow:
    flow = FLOWS.get(name)
    if flow is None:
        by_lower = {n.lower(): f for n, f in FLOWS.items()}
        flow = by_lower.get(name.lower())
    if flow is None:
        raise UnknownFlowError(f"unknown flow {name!r}; known flows: {', '.join(FLOWS)}")
    return flow
