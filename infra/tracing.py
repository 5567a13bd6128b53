"""opsmedic's own telemetry: OpenTelemetry traces and Prometheus metrics about opsmedic itself.

Layer: infra, just above `core` (imports only `core.errors` of ours; agents and tools call `span()` and the
metric helpers). The OpenTelemetry SDK is imported lazily by `setup_tracing`, so a
process that never configures tracing pays nothing: until then `span()` is a cheap no-op context.

- **Traces**: `setup_tracing(exporter=...)` builds a `TracerProvider` (service name `opsmedic`) exporting
  to the console, to an OTLP collector (only if `opentelemetry-exporter-otlp-proto-http` or `-grpc` is
  installed; otherwise a `ConfigError` that says what to install), to a given `SpanExporter` (tests pass
  an `InMemorySpanExporter`), or nowhere. The choice defaults to `OPSMEDIC_OTEL_EXPORTER` (`none` |
  `console` | `otlp`) and `OPSMEDIC_OTEL_ENDPOINT`.
  `span("diagnose", incident_id=..., action=..., decision=...)` wraps a graph node or a tool call; the
  keyword attributes are recorded under `opsmedic.<name>`, and an exception marks the span as an error.
  `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` are honoured by the OTLP exporter
  itself; `OPSMEDIC_OTEL_ENDPOINT` (the full traces URL) overrides them. `setup_tracing_from_env()` is
  what the CLI and the daemon call at start: it installs tracing only when `OPSMEDIC_OTEL_EXPORTER` asks.
- **One trace per incident.** An incident's spans (observation, diagnosis, plan, decision, approval,
  action, verification) live in one trace whose id is derived from the incident id (a hash), under a
  root span `incident` whose span id is derived the same way: `incident_root()` records that root when
  the incident opens, and every later `span(..., incident_id=X)` opened outside another span of X's trace
  is parented to it. So a graph resumed after an approval — minutes later, or in another process after a
  restart — lands in the same trace with no span context to store.
- **Metrics**: `OpsmedicMetrics` registers, in its own `CollectorRegistry` (not the process-global one, so
  tests and several daemons in one process never collide), incidents opened, decisions by verdict, actions
  executed by outcome, approvals pending, and the monitor tick duration. `render_metrics()` is the body of
  the daemon's `GET /metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

ExporterName = Literal["none", "console", "otlp"]
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ATTR_PREFIX = "opsmedic."
_OTLP_HINT = (
    "OTLP export needs an OTLP exporter package: pip install opentelemetry-exporter-otlp-proto-http "
    "(or -grpc), or set OPSMEDIC_OTEL_EXPORTER=console / none"
)

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_forced_ids = threading.local()  # (trace id, span id) the next span this thread starts must take


# ------------------------------------------------------------------------------------------ tracing


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,no-redef,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError(_OTLP_HINT, "setting otel_exporter (OPSMEDIC_OTEL_EXPORTER)") from None
    made: SpanExporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    return made


def incident_trace_ids(incident_id: str) -> tuple[int, int]:
    """(trace id, root span id) of an incident's trace: a hash of its id, so that every process agrees."""
    import hashlib

    digest = hashlib.sha256(f"opsmedic-incident:{incident_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1  # zero is the invalid id
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def _id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class IncidentIdGenerator(RandomIdGenerator):
        """Random ids, except for an incident's root span, which takes the ids derived from the incident."""

        def generate_trace_id(self) -> int:
            forced = getattr(_forced_ids, "ids", None)
            return forced[0] if forced is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = getattr(_forced_ids, "ids", None)
            if forced is not None:
                _forced_ids.ids = None  # one span only
                return int(forced[1])
            return super().generate_span_id()

    return IncidentIdGenerator()


def setup_tracing_from_env(service_name: str = "opsmedic") -> TracerProvider | None:
    """Install tracing if `OPSMEDIC_OTEL_EXPORTER` is `console` or `otlp` (flushed at exit); else nothing,
    and nothing of the SDK is imported. A bad value is a `ConfigError`."""
    from core.settings import load_settings

    if load_settings().otel_exporter == "none":
        return None
    import atexit

    provider = setup_tracing(None, service_name=service_name)
    atexit.register(shutdown_tracing)
    return provider


def setup_tracing(
    exporter: ExporterName | SpanExporter | None = None,
    *,
    service_name: str = "opsmedic",
    endpoint: str | None = None,
    stream: IO[str] | None = None,
) -> TracerProvider:
    """Install opsmedic's tracer provider (replacing a previous one of ours) and return it.

    `exporter`: a name, a ready `SpanExporter`, or None for `OPSMEDIC_OTEL_EXPORTER` (default `none`).
    Console and given exporters export synchronously (SimpleSpanProcessor) so output is immediate and
    ordered; OTLP batches (BatchSpanProcessor) so a slow collector never blocks a graph step.
    """
    global _provider, _tracer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    from core.settings import load_settings

    if exporter is None or endpoint is None:
        settings = load_settings()
        exporter = settings.otel_exporter if exporter is None else exporter
        endpoint = endpoint or settings.otel_endpoint
    choice: str | SpanExporter = exporter
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=_id_generator())
    if isinstance(choice, str):
        if choice == "console":
            provider.add_span_processor(
                SimpleSpanProcessor(ConsoleSpanExporter(out=stream) if stream else ConsoleSpanExporter())
            )
        elif choice == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(endpoint)))
        elif choice not in ("none", ""):
            raise ConfigError(
                f"unknown exporter {choice!r}; expected none, console or otlp",
                "setting otel_exporter (OPSMEDIC_OTEL_EXPORTER)",
            )
    else:
        provider.add_span_processor(SimpleSpanProcessor(choice))
    with _lock:
        old = _provider
        _provider, _tracer = provider, provider.get_tracer("opsmedic")
    if old is not None:
        old.shutdown()
    return provider


def shutdown_tracing() -> None:
    """Flush and drop opsmedic's provider; `span()` becomes a no-op again."""
    global _provider, _tracer
    with _lock:
        old, _provider, _tracer = _provider, None, None
    if old is not None:
        old.shutdown()


def _attr(value: Any) -> str | bool | int | float | None:
    if value is None:
        return None
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)  # enums, pydantic models, ids: their text is what a trace reader wants


def span_attributes(attrs: Mapping[str, Any]) -> dict[str, str | bool | int | float]:
    out: dict[str, str | bool | int | float] = {}
    for k, v in attrs.items():
        a = _attr(v)
        if a is not None:
            out[k if k.startswith(ATTR_PREFIX) else ATTR_PREFIX + k] = a
    return out


def _incident_parent(incident_id: str) -> Any:
    """The context to start an incident's span in: the current one if it is already in the incident's
    trace (a tool call inside a node), else the incident's root span (a node, possibly resumed in another
    process)."""
    from opentelemetry import trace

    trace_id, root_id = incident_trace_ids(incident_id)
    current = trace.get_current_span().get_span_context()
    if current.is_valid and current.trace_id == trace_id:
        return None
    root = trace.NonRecordingSpan(trace.SpanContext(trace_id=trace_id, span_id=root_id, is_remote=True,
                                                     trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)))
    return trace.set_span_in_context(root)


@contextmanager
def span(name: str, **attrs: Any) -> Iterator[Span | None]:
    """A span around a graph node or a tool call. Yields the span (None while tracing is off) so the body
    can add attributes learnt on the way (`s.set_attribute("opsmedic.decision", "allow")`). With an
    `incident_id`, the span belongs to that incident's trace (see the module docstring)."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    incident_id = attrs.get("incident_id")
    parent = _incident_parent(str(incident_id)) if incident_id else None
    with tracer.start_as_current_span(
        name, context=parent, attributes=span_attributes(attrs), record_exception=True, set_status_on_exception=True
    ) as s:
        yield s


@contextmanager
def incident_root(incident_id: str, **attrs: Any) -> Iterator[Span | None]:
    """The root span of an incident's trace (`incident`), with the ids derived from the incident id. Open
    it once, when the incident opens (the graph's first node runs inside it); the spans of later steps
    find their way to it by id."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.context import Context

    _forced_ids.ids = incident_trace_ids(incident_id)
    try:
        s = tracer.start_span("incident", context=Context(),
                              attributes=span_attributes({"incident_id": incident_id, **attrs}))
    finally:
        _forced_ids.ids = None
    from opentelemetry import trace

    with trace.use_span(s, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield s


# ------------------------------------------------------------------------------------------ metrics


class OpsmedicMetrics:
    """opsmedic's own Prometheus metrics, in a dedicated registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.incidents_opened = Counter(
            "opsmedic_incidents_opened", "Incidents opened by the monitor.", ["resource_kind"], registry=r
        )
        self.decisions = Counter(
            "opsmedic_decisions", "Governor decisions, by verdict.", ["verdict"], registry=r
        )
        self.actions_executed = Counter(
            "opsmedic_actions_executed",
            "Actions executed, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.approvals_pending = Gauge(
            "opsmedic_approvals_pending", "Approval requests waiting for a human.", registry=r
        )
        self.monitor_tick_seconds = Histogram(
            "opsmedic_monitor_tick_seconds",
            "Duration of one monitor tick.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.signals = Counter("opsmedic_signals", "Signals produced, by source.", ["source"], registry=r)
        self.skipped_samples = Counter(
            "opsmedic_telemetry_skipped_samples",
            "Telemetry samples skipped (NaN, absent or unidentifiable).",
            registry=r,
        )

    def incident_opened(self, resource_kind: str) -> None:
        self.incidents_opened.labels(resource_kind=str(resource_kind)).inc()

    def decision(self, verdict: str) -> None:
        self.decisions.labels(verdict=str(verdict)).inc()

    def action_executed(self, action: str, ok: bool) -> None:
        self.actions_executed.labels(action=action, outcome="ok" if ok else "failed").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = OpsmedicMetrics()


def render_metrics(metrics: OpsmedicMetrics | None = None) -> bytes:
    """The Prometheus text exposition of opsmedic's own metrics (the daemon's `GET /metrics`)."""
    return (metrics or METRICS).render()
