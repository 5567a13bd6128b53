"""infra.tracing: opsmedic's own Prometheus metrics (`render_metrics`) and OpenTelemetry spans."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from core.errors import ConfigError
from infra import tracing as otel
from tools.prometheus_source import exposition_samples


@pytest.fixture(autouse=True)
def _no_tracing() -> Iterator[None]:
    otel.shutdown_tracing()
    yield
    otel.shutdown_tracing()


def test_span_is_a_no_op_until_tracing_is_set_up() -> None:
    with otel.span("monitor.tick", incident_id="inc-1") as s:
        assert s is None


def test_spans_carry_incident_action_and_decision_attributes() -> None:
    mem = InMemorySpanExporter()
    otel.setup_tracing(mem)
    with otel.span("graph.govern", incident_id="inc-0007", action="drain_node@node-1") as s:
        assert s is not None
        s.set_attribute("opsmedic.decision", "needs_approval")
        with otel.span("tool.cordon_node", incident_id="inc-0007", target="node-1", dry_run=False, note=None):
            pass
    inner, outer = mem.get_finished_spans()
    assert outer.name == "graph.govern" and inner.name == "tool.cordon_node"
    assert dict(outer.attributes or {}) == {
        "opsmedic.incident_id": "inc-0007",
        "opsmedic.action": "drain_node@node-1",
        "opsmedic.decision": "needs_approval",
    }
    assert dict(inner.attributes or {}) == {
        "opsmedic.incident_id": "inc-0007",
        "opsmedic.target": "node-1",
        "opsmedic.dry_run": False,
    }
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert outer.resource.attributes["service.name"] == "opsmedic"


def test_an_exception_marks_the_span_as_an_error() -> None:
    mem = InMemorySpanExporter()
    otel.setup_tracing(mem)
    with pytest.raises(RuntimeError), otel.span("tool.reset_gpu", action="reset_gpu"):
        raise RuntimeError("GPU busy")
    (span,) = mem.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_console_exporter_writes_json_spans() -> None:
    out = io.StringIO()
    otel.setup_tracing("console", stream=out)
    with otel.span("graph.diagnose", incident_id="inc-9"):
        pass
    got = json.loads(out.getvalue())
    assert got["name"] == "graph.diagnose" and got["attributes"]["opsmedic.incident_id"] == "inc-9"


def test_exporter_chosen_by_environment_and_bad_choices_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "none")
    otel.setup_tracing()
    with otel.span("x") as s:
        assert s is not None  # traced, exported nowhere
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match=r"OPSMEDIC_OTEL_EXPORTER\): Input should be 'none', 'console' or 'otlp'"):
        otel.setup_tracing()
    try:
        import opentelemetry.exporter.otlp  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp"):
            otel.setup_tracing("otlp")


def test_opsmedic_metrics_render_in_their_own_registry() -> None:
    m = otel.OpsmedicMetrics()
    m.incident_opened("gpu")
    m.incident_opened("gpu")
    m.decision("allow")
    m.decision("needs_approval")
    m.action_executed("cordon_node", ok=True)
    m.action_executed("reset_gpu", ok=False)
    m.approvals_pending.set(2)
    with m.monitor_tick_seconds.time():
        pass
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for s in exposition_samples(otel.render_metrics(m))
    }
    assert got[("opsmedic_incidents_opened_total", (("resource_kind", "gpu"),))] == 2
    assert got[("opsmedic_decisions_total", (("verdict", "needs_approval"),))] == 1
    assert got[("opsmedic_actions_executed_total", (("action", "reset_gpu"), ("outcome", "failed")))] == 1
    assert got[("opsmedic_approvals_pending", ())] == 2
    assert got[("opsmedic_monitor_tick_seconds_count", ())] == 1
    # a second instance starts from zero: no shared global registry
    fresh = {s.name for s in exposition_samples(otel.OpsmedicMetrics().render()) if s.value}
    assert "opsmedic_incidents_opened_total" not in fresh
    assert b"opsmedic_monitor_tick_seconds_bucket" in otel.render_metrics()
