"""`/metrics`: Prometheus metrics in a registry of this service's own (never the global one).

Two kinds:
- read from the store at scrape time, so they are true after a restart and
  whichever process runs the engine: commands by flow and status (the outcome is
  status succeeded or failed), tasks in flight, projection lag, the log head,
  the in-process engine's lease state;
- observed in this process: the engine's poll-cycle durations, agent call
  latencies and errors by method, recovery (with --engine: `MetricsObserver`
  implements orchestrator/engine/observer.py's EngineObserver), and the API's
  own requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.domain.model import DEFAULT_POOL
from orchestrator.engine.report import CycleReport, RecoveryReport

if TYPE_CHECKING:
    from orchestrator.api.engine_host import EngineHost
    from orchestrator.api.gateway import StoreGateway

log = logging.getLogger("orchestrator.api.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LEASE_STATES = ("standing_by", "held", "stopped", "failed")


class ApiMetrics:
    """Every metric this service exports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycle_seconds = Histogram(
            "orchestrator_engine_cycle_seconds",
            "duration of the engine's poll cycles",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.cycle_tasks = Counter(
            "orchestrator_engine_tasks", "tasks the engine moved, by what it did", ["action"], registry=r
        )
        self.commands_ended = Counter(
            "orchestrator_engine_commands_ended", "commands the in-process engine ended", registry=r
        )
        self.agent_seconds = Histogram(
            "orchestrator_agent_call_seconds",
            "latency of calls to a pool's agent, by method",
            ["pool", "method"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.agent_errors = Counter(
            "orchestrator_agent_call_errors", "failed calls to a pool's agent", ["pool", "method", "error"], registry=r
        )
        self.recovery_seconds = Gauge(
            "orchestrator_engine_recovery_seconds", "duration of the last recovery", registry=r
        )
        self.recovery_commands = Gauge(
            "orchestrator_engine_recovery_commands", "commands in flight the last recovery decided for", registry=r
        )
        self.recovery_gave_up = Gauge(
            "orchestrator_engine_recovery_gave_up", "1 if the last recovery gave up waiting for an agent", registry=r
        )
        self.requests = Counter(
            "orchestrator_api_requests", "API requests answered", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "orchestrator_api_request_seconds",
            "time to answer an API request",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def watch_store(self, gateway: StoreGateway, engine: Callable[[], EngineHost | None]) -> None:
        self.registry.register(StoreCollector(gateway, engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """Metrics read from the store and the read models when Prometheus scrapes."""

    def __init__(self, gateway: StoreGateway, engine: Callable[[], EngineHost | None]) -> None:
        self.gateway = gateway
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return []  # nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("orchestrator_store_up", "1 if the store answered this scrape")
        try:
            families = list(self._from_store())
        except Exception as exc:  # a scrape must answer even when the store does not
            log.warning("metrics: the store did not answer: %s", self.gateway.scrub(str(exc)).splitlines()[0])
            families = []
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
        yield up
        yield from families
        yield self._lease()

    def _from_store(self) -> Iterator[Metric]:
        statuses, command_counts, task_counts = self.gateway.scrape()
        commands = GaugeMetricFamily(
            "orchestrator_commands",
            "root commands by flow and status (outcome: succeeded or failed), from the commands read model",
            labels=["flow", "status"],
        )
        for flow, status, count in command_counts:
            commands.add_metric([flow, status], count)
        yield commands
        tasks = GaugeMetricFamily(
            "orchestrator_tasks_in_flight",
            "tasks not yet cleared on their agent, by pool and status",
            labels=["pool", "status"],
        )
        for task_status, count in task_counts:
            tasks.add_metric([DEFAULT_POOL, task_status], count)  # one pool today; per pool once pools exist
        yield tasks
        lag = GaugeMetricFamily(
            "orchestrator_projection_lag_events",
            "events a read model was behind the log when scraped (the scrape then catches it up)",
            labels=["projection"],
        )
        head = 0
        for projection in statuses:
            lag.add_metric([projection.name], projection.lag)
            head = projection.head
        yield lag
        yield GaugeMetricFamily("orchestrator_log_head", "position of the last event in the log", value=head)

    def _lease(self) -> Metric:
        lease = GaugeMetricFamily(
            "orchestrator_engine_lease",
            "the in-process engine's lease: 1 for its state (absent without --engine)",
            labels=["state"],
        )
        host = self.engine()
        if host is not None:
            for state in LEASE_STATES:
                lease.add_metric([state], 1 if host.state.value == state else 0)
        return lease


class MetricsObserver:
    """The engine's hooks (orchestrator/engine/observer.py) recorded as metrics; quick, never raises."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self.metrics = metrics

    def cycle_done(self, report: CycleReport, seconds: float) -> None:
        m = self.metrics
        m.cycle_seconds.observe(seconds)
        for action, count in (
            ("submitted", report.submitted),
            ("refused", report.refused),
            ("ended", report.tasks_ended),
            ("cleared", report.cleared),
            ("stopped", report.stopped),
        ):
            if count:
                m.cycle_tasks.labels(action).inc(count)
        if report.commands_ended:
            m.commands_ended.inc(report.commands_ended)

    def agent_called(self, pool: str, method: str, seconds: float, error: str | None) -> None:
        self.metrics.agent_seconds.labels(pool, method).observe(seconds)
        if error is not None:
            self.metrics.agent_errors.labels(pool, method, error).inc()

    def recovered(self, report: RecoveryReport) -> None:
        self.metrics.recovery_seconds.set(report.seconds)
        self.metrics.recovery_commands.set(len(report.decisions))
        self.metrics.recovery_gave_up.set(1 if report.gave_up else 0)
