"""tools.prometheus_source: PromQL and exposition text -> ClusterSnapshot; bad input skipped and counted,
a slow or failing Prometheus -> TransientToolError / PermanentToolError, never a crash."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core.domain import ClusterSnapshot, GpuSample, NodeStatus
from core.errors import PermanentToolError, TransientToolError
from sandbox.cluster import Simulator
from sandbox.exporter import render
from sandbox.scenario import parse_scenario
from tools.prometheus_source import (
    ExpositionSource,
    MetricSample,
    PrometheusSource,
    SnapshotBuilder,
    exposition_samples,
    parse_exposition,
)

LABELS = {"Hostname": "node-0", "UUID": "GPU-x", "modelName": "H100"}


def gpu_line(name: str, gpu: int, value: str, host: str = "node-0") -> str:
    return f'{name}{{Hostname="{host}",gpu="{gpu}",UUID="GPU-{gpu}"}} {value}\n'


def node_lines(node: str = "node-0", gpus: int = 2, ready: bool = True) -> str:
    return (
        f'kube_node_status_condition{{node="{node}",condition="Ready",status="true"}} {int(ready)}\n'
        f'kube_node_status_capacity{{node="{node}",resource="nvidia_com_gpu",unit="integer"}} {gpus}\n'
    )


# ------------------------------------------------------------------------------- exposition path


def test_nan_and_infinite_values_are_skipped_and_counted() -> None:
    text = (
        node_lines()
        + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "NaN")
        + gpu_line("DCGM_FI_DEV_GPU_UTIL", 0, "55")
        + gpu_line("DCGM_FI_DEV_GPU_TEMP", 1, "+Inf")
        + gpu_line("DCGM_FI_DEV_GPU_UTIL", 1, "12")
        + 'model_serving_version{model="m"} 2\nmodel_accuracy{model="m"} NaN\n'
    )
    builder = SnapshotBuilder()
    snap = parse_exposition(text, builder)
    assert builder.last_skipped == 3 and builder.skipped_samples == 3
    g0, g1 = snap.gpus
    assert g0.temp_c is None and g0.util_pct == 55.0 and g0.present
    assert g1.temp_c is None and g1.util_pct == 12.0
    assert snap.model("m") is not None and snap.model("m").accuracy is None  # type: ignore[union-attr]
    parse_exposition(text, builder)
    assert builder.skipped_samples == 6  # cumulative


def test_absent_metrics_leave_fields_none_and_unidentifiable_samples_are_skipped() -> None:
    text = (
        node_lines(gpus=1)
        + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "61")
        + 'DCGM_FI_DEV_GPU_UTIL{UUID="GPU-9"} 40\n'  # no Hostname / gpu: whose is it?
        + 'DCGM_FI_DEV_GPU_UTIL{Hostname="node-0",gpu="zero"} 40\n'
    )
    builder = SnapshotBuilder()
    snap = parse_exposition(text, builder)
    assert builder.last_skipped == 2
    (g,) = snap.gpus
    assert g.gpu == "node-0/gpu-0" and g.temp_c == 61.0
    assert g.util_pct is None and g.mem_used_mib is None and g.ecc_dbe_volatile is None and g.xids == []


def test_a_gpu_dcgm_cannot_read_on_a_live_node_is_lost_but_a_silent_node_loses_nothing() -> None:
    text = (
        node_lines("node-0", gpus=3)
        + node_lines("node-1", gpus=8)
        + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "50")
        + gpu_line("DCGM_FI_DEV_GPU_TEMP", 2, "50")
    )
    snap = parse_exposition(text)
    assert [(g.gpu, g.present) for g in snap.gpus] == [
        ("node-0/gpu-0", True),
        ("node-0/gpu-1", False),
        ("node-0/gpu-2", True),
    ]
    # node-1 has no DCGM series at all (no exporter there): no GPU is inferred lost
    assert snap.node("node-1") is not None and all(g.node == "node-0" for g in snap.gpus)


def test_xids_are_events_reported_once_per_increase() -> None:
    def text(count: int, last: int = 79) -> str:
        return (
            node_lines(gpus=1)
            + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "50")
            + gpu_line("DCGM_FI_DEV_XID_ERRORS", 0, str(last))
            + f'DCGM_EXP_XID_ERRORS_COUNT{{Hostname="node-0",gpu="0",xid="{last}"}} {count}\n'
        )

    source_text = [text(1)]
    src = ExpositionSource(lambda: source_text[0])
    assert src.snapshot().gpus[0].xids == [79]
    assert src.snapshot().gpus[0].xids == []  # scraped again: the same event
    source_text[0] = text(3)
    assert src.snapshot().gpus[0].xids == [79, 79]
    source_text[0] = text(1)  # dcgm-exporter's count is windowed: a decrease is no event
    assert src.snapshot().gpus[0].xids == []
    quiet = SnapshotBuilder(report_existing_xids=False)
    assert parse_exposition(text(5), quiet).gpus[0].xids == []
    assert parse_exposition(text(6), quiet).gpus[0].xids == [79]


def test_without_count_series_a_change_of_the_last_xid_is_an_event() -> None:
    def text(last: int) -> str:
        return (
            node_lines(gpus=1)
            + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "50")
            + gpu_line("DCGM_FI_DEV_XID_ERRORS", 0, str(last))
        )

    b = SnapshotBuilder()
    assert parse_exposition(text(0), b).gpus[0].xids == []
    assert parse_exposition(text(13), b).gpus[0].xids == [13]
    assert parse_exposition(text(13), b).gpus[0].xids == []
    assert parse_exposition(text(31), b).gpus[0].xids == [31]


def test_malformed_exposition_is_a_permanent_tool_error() -> None:
    with pytest.raises(PermanentToolError, match="malformed Prometheus exposition"):
        exposition_samples('DCGM_FI_DEV_GPU_TEMP{gpu="0" 12 oops\n')


def test_monitor_reads_the_sandbox_through_exposition_source() -> None:
    from agents.monitor import Monitor

    sc = parse_scenario(
        {
            "name": "via-metrics",
            "description": "x",
            "seed": 1,
            "cluster": {"nodes": 2, "gpus_per_node": 8},
            "workloads": [{"name": "llama-ft", "kind": "training", "replicas": 2, "gpus_per_replica": 8}],
            "faults": [{"at": "60s", "type": "gpu_xid", "target": "node-1/gpu-3", "params": {"xid": 79}}],
            "duration": "10m",
            "expect": {"incident": True},
        }
    )
    sim = Simulator(sc)
    latest: list[ClusterSnapshot] = []
    src = ExpositionSource(lambda: render(latest[-1]))
    direct, via_metrics = Monitor(), Monitor()
    opened_direct, opened_metrics = [], []
    for _ in range(20):
        sim.step()
        latest.append(sim.snapshot())
        opened_direct += direct.observe(latest[-1], sc.tick)
        opened_metrics += via_metrics.observe(src.snapshot(), sc.tick)
    assert [(i.resource, i.opened_at_s) for i in opened_metrics] == [
        (i.resource, i.opened_at_s) for i in opened_direct
    ]
    assert [i.resource for i in opened_metrics] == ["node-1/gpu-3"]
    assert src.skipped_samples == 0


# ------------------------------------------------------------------------------ PromQL path


class FakePrometheus:
    """/api/v1/query on 127.0.0.1, answering from `handler(query) -> (status, body)`, counting requests."""

    def __init__(self, handler: Callable[[str], tuple[int, bytes]], delay_s: float = 0.0) -> None:
        self.requests = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlparse

                outer.requests += 1
                if delay_s:
                    time.sleep(delay_s)
                query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
                status, body = handler(query)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_prometheus() -> Iterator[Callable[..., FakePrometheus]]:
    started: list[FakePrometheus] = []

    def start(handler: Callable[[str], tuple[int, bytes]], delay_s: float = 0.0) -> FakePrometheus:
        started.append(FakePrometheus(handler, delay_s))
        return started[-1]

    yield start
    for s in started:
        s.close()


def vector(samples: list[MetricSample]) -> bytes:
    result: list[dict[str, Any]] = []
    for s in samples:
        metric: dict[str, str] = {"__name__": s.name, "job": "sandbox", "instance": "127.0.0.1:1"}
        metric.update(s.labels)
        value = "NaN" if math.isnan(s.value) else repr(s.value)
        result.append({"metric": metric, "value": [1700000000.0, value]})
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


def test_promql_snapshot_matches_the_exporter_and_runs_one_query(fake_prometheus: Callable[..., Any]) -> None:
    sc = parse_scenario(
        {
            "name": "promql",
            "description": "x",
            "seed": 2,
            "cluster": {"nodes": 2, "gpus_per_node": 4},
            "workloads": [
                {
                    "name": "svc",
                    "kind": "inference",
                    "replicas": 2,
                    "gpus_per_replica": 1,
                    "model": "svc",
                    "current_version": 2,
                    "slo": {"latency_p95_ms": 80, "accuracy_min": 0.8},
                }
            ],
            "faults": [{"at": "10s", "type": "gpu_xid", "target": "node-1/gpu-2", "params": {"xid": 79}}],
            "duration": "5m",
            "expect": {"incident": True},
        }
    )
    sim = Simulator(sc)
    sim.step()
    snap = sim.snapshot()
    samples = exposition_samples(render(snap))
    seen: list[str] = []

    def answer(query: str) -> tuple[int, bytes]:
        seen.append(query)
        return 200, vector(list(reversed(samples)))  # Prometheus' order is arbitrary

    prom = fake_prometheus(answer)
    source = PrometheusSource(prom.url, timeout_s=2, selector='job="sandbox"')
    got = source.snapshot()
    assert (
        len(seen) == 1
        and seen[0].startswith('{__name__=~"DCGM_FI_DEV_GPU_UTIL|')
        and 'job="sandbox"' in seen[0]
    )
    expected = snap.model_dump()
    for p in expected["pods"]:
        p["log_tail"] = []
    assert got.model_dump() == expected
    assert got.gpu("node-1/gpu-2") == GpuSample(
        gpu="node-1/gpu-2", node="node-1", index=2, present=False, xids=[79]
    )


def test_prometheus_nan_values_are_skipped_and_counted(fake_prometheus: Callable[..., Any]) -> None:
    samples = [
        MetricSample(
            "kube_node_status_condition", {"node": "node-0", "condition": "Ready", "status": "true"}, 1.0
        ),
        MetricSample("DCGM_FI_DEV_GPU_TEMP", {"Hostname": "node-0", "gpu": "0"}, math.nan),
        MetricSample("DCGM_FI_DEV_GPU_UTIL", {"Hostname": "node-0", "gpu": "0"}, 30.0),
    ]
    prom = fake_prometheus(lambda q: (200, vector(samples)))
    source = PrometheusSource(prom.url)
    snap = source.snapshot()
    assert source.skipped_samples == 1
    assert snap.gpus[0].temp_c is None and snap.gpus[0].util_pct == 30.0
    assert snap.nodes == [NodeStatus(name="node-0", ready=True)]


def test_a_prometheus_that_times_out_is_a_transient_error_after_bounded_retries(
    fake_prometheus: Callable[..., Any],
) -> None:
    prom = fake_prometheus(lambda q: (200, vector([])), delay_s=2.0)
    source = PrometheusSource(prom.url, timeout_s=0.3, attempts=2, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(TransientToolError, match=r"did not answer within 0.3s \(2 attempt"):
        source.snapshot()
    assert time.monotonic() - t0 < 2.0  # 2 x 0.3 s + backoff, not the server's 2 s each
    assert source.queries == 2 and source.failures == 1


def test_5xx_is_retried_then_transient_and_4xx_is_permanent_at_once(
    fake_prometheus: Callable[..., Any],
) -> None:
    prom = fake_prometheus(lambda q: (503, b'{"status":"error"}'))
    source = PrometheusSource(prom.url, timeout_s=1, attempts=3, backoff_s=0.01)
    with pytest.raises(TransientToolError, match="HTTP 503"):
        source.snapshot()
    assert prom.requests == 3
    bad = fake_prometheus(lambda q: (400, b'{"status":"error","error":"parse error"}'))
    source = PrometheusSource(bad.url, timeout_s=1, attempts=3, backoff_s=0.01)
    with pytest.raises(PermanentToolError, match="refused the query"):
        source.snapshot()
    assert bad.requests == 1


def test_unreadable_answers_and_refused_connections(fake_prometheus: Callable[..., Any]) -> None:
    html = fake_prometheus(lambda q: (200, b"<html>login</html>"))
    with pytest.raises(PermanentToolError, match="unreadable answer"):
        PrometheusSource(html.url, timeout_s=1).snapshot()
    closed = fake_prometheus(lambda q: (200, b""))
    url = closed.url
    closed.close()
    with pytest.raises(TransientToolError, match="unreachable"):
        PrometheusSource(url, timeout_s=1, attempts=2, backoff_s=0.01).snapshot()


def _self_signed(tmp: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by itself (openssl), and its key."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = str(tmp / "ca.pem"), str(tmp / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_https_prometheus_certificates_are_verified_against_the_ca_bundle(
        fake_prometheus: Callable[..., Any], tmp_path: Any) -> None:
    import ssl

    from core.errors import ConfigError

    cert, key = _self_signed(tmp_path)
    fake = fake_prometheus(lambda q: (200, vector([])))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake.server.socket = ctx.wrap_socket(fake.server.socket, server_side=True)
    url = fake.url.replace("http://", "https://")
    # an unknown issuer is refused: a man in the middle cannot feed the monitor a healthy-looking GPU
    with pytest.raises(TransientToolError, match="unreachable"):
        PrometheusSource(url, attempts=1, timeout_s=5.0).query("up")
    assert PrometheusSource(url, attempts=1, timeout_s=5.0, ca_bundle=cert).query("up") == []
    with pytest.raises(ConfigError, match="CA bundle"):
        PrometheusSource(url, ca_bundle=tmp_path / "missing.pem")
