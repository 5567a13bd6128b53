"""The daemon's Prometheus metrics: opsmedic's own (`infra.tracing.OpsmedicMetrics`) plus the
daemon's (leadership, loop health, alert queue, Slack), in one registry rendered at `GET /metrics`.

Layer: interfaces (`opsmedic.daemon`); prometheus-client only. One registry per service (never the
process-global one), so tests that run several daemons in one process do not collide. Counters that live
elsewhere (the alert ingestor's, the Slack notifier's) are read at scrape time by a collector instead of
being copied on every change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _CoreMetrics:
    """The same metric names as `infra.tracing.OpsmedicMetrics`, for when that module is absent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.incidents_opened = Counter("opsmedic_incidents_opened", "Incidents opened by the monitor.",
                                        ["resource_kind"], registry=r)
        self.decisions = Counter("opsmedic_decisions", "Governor decisions, by verdict.", ["verdict"], registry=r)
        self.actions_executed = Counter("opsmedic_actions_executed", "Actions executed, by action and outcome.",
                                        ["action", "outcome"], registry=r)
        self.approvals_pending = Gauge("opsmedic_approvals_pending", "Approval requests waiting for a human.",
                                       registry=r)
        self.monitor_tick_seconds = Histogram(
            "opsmedic_monitor_tick_seconds", "Duration of one monitor tick.", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

    def incident_opened(self, resource_kind: str) -> None:
        self.incidents_opened.labels(resource_kind=str(resource_kind)).inc()

    def decision(self, verdict: str) -> None:
        self.decisions.labels(verdict=str(verdict)).inc()

    def action_executed(self, action: str, ok: bool) -> None:
        self.actions_executed.labels(action=action, outcome="ok" if ok else "failed").inc()


def _core() -> Any:
    try:
        from infra.tracing import OpsmedicMetrics
    except ImportError:  # written by the telemetry work; the daemon must not depend on its order
        return _CoreMetrics()
    return OpsmedicMetrics()


class _ReadAtScrape(Collector):
    def __init__(self, read: Callable[[], list[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


class DaemonMetrics:
    def __init__(self) -> None:
        self.core = _core()
        r: CollectorRegistry = self.core.registry
        self.registry = r
        self.leader = Gauge("opsmedic_daemon_leader", "1 while this replica acts (holds the lease).", registry=r)
        self.incidents_open = Gauge("opsmedic_incidents_open", "Incidents whose graph has not finished.",
                                    registry=r)
        self.ticks = Counter("opsmedic_daemon_ticks", "Monitor ticks run.", registry=r)
        self.loop_errors = Counter("opsmedic_daemon_loop_errors", "Errors caught by the monitor loop, by stage.",
                                   ["stage"], registry=r)
        self.source_errors = Counter("opsmedic_daemon_source_errors",
                                     "Telemetry reads that failed (the tick was skipped).", registry=r)
        self.alerts_refused = Counter("opsmedic_alerts_refused", "Webhook bodies refused, by reason.", ["reason"],
                                      registry=r)
        self.alerts_unmatched = Counter("opsmedic_alerts_unmatched",
                                        "Firing alerts about resources this cluster does not have.", registry=r)
        self.approvals_decided = Counter("opsmedic_approvals_decided", "Approval decisions recorded, by channel.",
                                         ["decision", "via"], registry=r)
        self._readers: list[Callable[[], list[Metric]]] = []
        r.register(_ReadAtScrape(self._read_all))

    def add_reader(self, read: Callable[[], list[Metric]]) -> None:
        self._readers.append(read)

    def _read_all(self) -> list[Metric]:
        out: list[Metric] = []
        for read in self._readers:
            out.extend(read())
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)


def counters_family(name: str, doc: str, label: str, values: dict[str, int | float]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for k, v in values.items():
        fam.add_metric([k], float(v))
    return fam


def gauge_family(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)
