"""tools.prometheus_source: PromQL and exposition text -> ClusterSnapshot; bad input skipped and counted,
a slow or failing Prometheus -> TransientToolError / PermanentToolError, never a crash."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core import metric_names as mn
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


def vector(samples: list[MetricSample], labels: dict[str, str] | None = None) -> bytes:
    result: list[dict[str, Any]] = []
    for s in samples:
        metric: dict[str, str] = {"__name__": s.name, "job": "sandbox", "instance": "127.0.0.1:1"}
        metric.update(s.labels)
        metric.update(labels or {})
        value = "NaN" if math.isnan(s.value) else repr(s.value)
        result.append({"metric": metric, "value": [1700000000.0, value]})
    return answer_of(result)


def answer_of(result: list[dict[str, Any]]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


_MAX_BY = re.compile(r"^max by \(([^)]*)\) \(([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\)$")
_SELECT = re.compile(r'^\{__name__=~"([^"]*)"(?:,(.*))?\}$')
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


def evaluate(query: str, result: list[dict[str, Any]]) -> bytes:
    """The two query shapes `PrometheusSource.read_queries` sends, evaluated as Prometheus does over
    `result` (a vector's series): `max by (labels) (name{matchers})` keeps the listed labels that are not
    empty, drops the name and takes the largest value of each group (NaN loses to any number); the
    `{__name__=~"a|b",matchers}` selection returns the series as they are."""

    def matches(metric: dict[str, str], matchers: str | None) -> bool:
        return all(metric.get(k, "") == v for k, v in _MATCHER.findall(matchers or ""))

    if m := _MAX_BY.match(query):
        by = [x.strip() for x in m.group(1).split(",")]
        groups: dict[tuple[tuple[str, str], ...], float] = {}
        for item in result:
            metric = item["metric"]
            if metric["__name__"] != m.group(2) or not matches(metric, m.group(3)):
                continue
            key = tuple((k, metric[k]) for k in sorted(by) if metric.get(k))
            value = float(item["value"][1])
            if key not in groups or math.isnan(groups[key]) or value > groups[key]:
                groups[key] = value
        return answer_of([{"metric": dict(k), "value": [1700000000.0, "NaN" if math.isnan(v) else repr(v)]}
                          for k, v in groups.items()])
    if m := _SELECT.match(query):
        names = set(m.group(1).split("|"))
        return answer_of([i for i in result if i["metric"]["__name__"] in names and matches(i["metric"], m.group(2))])
    raise AssertionError(f"a query the fake does not evaluate: {query}")


def prometheus_of(samples: list[MetricSample], seen: list[str] | None = None,
                  labels: dict[str, str] | None = None) -> Callable[[str], tuple[int, bytes]]:
    """A fake Prometheus' handler that answers the source's queries from these series."""
    result = json.loads(vector(samples, labels))["data"]["result"]

    def answer(query: str) -> tuple[int, bytes]:
        if seen is not None:
            seen.append(query)
        return 200, evaluate(query, list(reversed(result)))  # Prometheus' order is arbitrary

    return answer


def fleet_scenario(nodes: int = 2, gpus: int = 4) -> Any:
    return parse_scenario(
        {
            "name": "promql",
            "description": "x",
            "seed": 2,
            "cluster": {"nodes": nodes, "gpus_per_node": gpus},
            "workloads": [
                {
                    "name": "svc",
                    "kind": "inference",
                    "replicas": 2,
                    "gpus_per_replica": 1,
                    "model": "svc",
                    "current_version": 2,
                    "slo": {"latency_p95_ms": 80, "accuracy_min": 0.8},
                },
                {"name": "train", "kind": "training", "replicas": 1, "gpus_per_replica": 2},
            ],
            "faults": [{"at": "10s", "type": "gpu_xid", "target": "node-1/gpu-2", "params": {"xid": 79}}],
            "duration": "5m",
            "expect": {"incident": True},
        }
    )


def expected_of(snap: ClusterSnapshot) -> dict[str, Any]:
    expected = snap.model_dump()
    for p in expected["pods"]:
        p["log_tail"] = []  # not a metric
    return expected


def test_promql_snapshot_matches_the_exporter_one_query_per_dcgm_family(fake_prometheus: Callable[..., Any]) -> None:
    sim = Simulator(fleet_scenario())
    sim.step()
    snap = sim.snapshot()
    samples = exposition_samples(render(snap))
    seen: list[str] = []
    prom = fake_prometheus(prometheus_of(samples, seen))
    source = PrometheusSource(prom.url, timeout_s=2, selector='job="sandbox"')
    got = source.snapshot()
    # one query per DCGM family, keeping only the GPU, host and pod labels; one for every other series
    assert sorted(seen) == sorted(q for _, q in source.read_queries()) and len(seen) == len(mn.DCGM_METRICS) + 1
    assert all('job="sandbox"' in q for q in seen)
    assert 'max by (gpu, Hostname, hostname, node, kubernetes_node, pod) (DCGM_FI_DEV_GPU_UTIL{job="sandbox"})' in seen
    assert ('max by (gpu, Hostname, hostname, node, kubernetes_node, pod, xid) '
            '(DCGM_EXP_XID_ERRORS_COUNT{job="sandbox"})') in seen
    assert got.model_dump() == expected_of(snap)
    assert got.gpu("node-1/gpu-2") == GpuSample(
        gpu="node-1/gpu-2", node="node-1", index=2, present=False, xids=[79]
    )
    # the same as the builder makes of the exporter's text, every label kept
    assert got.model_dump() == SnapshotBuilder().build(samples).model_dump()
    assert source.builder.last_skipped == 0


def test_gpus_map_to_their_nodes_and_pods_through_the_kept_labels(fake_prometheus: Callable[..., Any]) -> None:
    sim = Simulator(fleet_scenario(nodes=3, gpus=3))
    sim.step()
    snap = sim.snapshot()
    samples = exposition_samples(render(snap))
    got = PrometheusSource(fake_prometheus(prometheus_of(samples)).url, timeout_s=2).snapshot()
    held = {g.gpu: g.processes for g in got.gpus if g.processes}
    assert held and held == {g.gpu: g.processes for g in snap.gpus if g.processes}
    assert {p.name: (p.node, p.gpus) for p in got.pods} == {p.name: (p.node, p.gpus) for p in snap.pods}
    for g in got.gpus:
        assert g.gpu == f"{g.node}/gpu-{g.index}" and got.node(g.node) is not None
    # without the allocation series, a pod's GPUs come from the DCGM series' pod label alone
    no_alloc = [s for s in samples if s.name != mn.POD_GPU_ALLOCATION.name]
    again = PrometheusSource(fake_prometheus(prometheus_of(no_alloc)).url, timeout_s=2).snapshot()
    assert {p.name: p.gpus for p in again.pods} == {p.name: p.gpus for p in snap.pods}


def test_two_exporters_of_one_gpu_are_one_gpu(fake_prometheus: Callable[..., Any]) -> None:
    """A GPU scraped twice (two jobs, or an exporter and its replacement) is one GPU: `max by` folds the
    series that differ only in labels the builder does not read."""
    sim = Simulator(fleet_scenario())
    sim.step()
    snap = sim.snapshot()
    samples = exposition_samples(render(snap))
    result = [
        *json.loads(vector(samples))["data"]["result"],
        *json.loads(vector([s for s in samples if s.name.startswith("DCGM_")],
                           {"job": "dcgm-2", "instance": "10.0.0.2:9400", "UUID": "GPU-other"}))["data"]["result"],
    ]
    prom = fake_prometheus(lambda q: (200, evaluate(q, result)))
    got = PrometheusSource(prom.url, timeout_s=2).snapshot()
    assert len(got.gpus) == len(snap.gpus)
    assert got.model_dump() == expected_of(snap)


def test_an_absent_or_stale_family_leaves_its_field_none_and_the_rest_read(
    fake_prometheus: Callable[..., Any],
) -> None:
    samples = exposition_samples(node_lines(gpus=2) + gpu_line("DCGM_FI_DEV_GPU_UTIL", 0, "40")
                                 + gpu_line("DCGM_FI_DEV_GPU_UTIL", 1, "50") + gpu_line("DCGM_FI_DEV_GPU_TEMP", 0, "61")
                                 + gpu_line("DCGM_FI_DEV_XID_ERRORS", 1, "0"))
    # GPU_TEMP of gpu 1 has gone stale (absent from the answer), POWER_USAGE is not exported at all
    snap = PrometheusSource(fake_prometheus(prometheus_of(samples)).url, timeout_s=2).snapshot()
    g0, g1 = snap.gpu("node-0/gpu-0"), snap.gpu("node-0/gpu-1")
    assert g0 is not None and g1 is not None
    assert (g0.util_pct, g0.temp_c, g0.power_w, g0.present) == (40.0, 61.0, None, True)
    assert (g1.util_pct, g1.temp_c, g1.power_w, g1.present) == (50.0, None, None, True)
    # a GPU whose DCGM fields have all gone stale, its XID series alone left, is lost; its node's other GPU is not
    xid_only = [s for s in samples if s.labels.get("gpu") != "1" or s.name == "DCGM_FI_DEV_XID_ERRORS"]
    snap = PrometheusSource(fake_prometheus(prometheus_of(xid_only)).url, timeout_s=2).snapshot()
    assert [(g.gpu, g.present) for g in snap.gpus] == [("node-0/gpu-0", True), ("node-0/gpu-1", False)]


def test_unidentifiable_and_unreadable_family_answers_are_skipped_and_counted(
    fake_prometheus: Callable[..., Any],
) -> None:
    def answer(query: str) -> tuple[int, bytes]:
        if "DCGM_FI_DEV_GPU_UTIL" in query:
            return 200, answer_of([
                {"metric": {"Hostname": "node-0", "gpu": "0"}, "value": [1.0, "30"]},
                {"metric": {"gpu": "1"}, "value": [1.0, "30"]},  # no host label
                {"metric": {"Hostname": "node-0", "gpu": "2"}, "value": [1.0]},  # no value
                {"metric": {"Hostname": "node-0", "gpu": "3"}, "value": [1.0, "+Inf"]},
            ])
        if "DCGM_EXP_XID_ERRORS_COUNT" in query:
            return 200, answer_of([{"metric": {"Hostname": "node-0", "gpu": "0", "xid": "x"}, "value": [1.0, "1"]}])
        return 200, answer_of([])

    source = PrometheusSource(fake_prometheus(answer).url, timeout_s=2)
    snap = source.snapshot()
    assert [(g.gpu, g.util_pct, g.xids) for g in snap.gpus] == [("node-0/gpu-0", 30.0, [])]
    assert source.builder.last_skipped == 4 and source.skipped_samples == 4


def test_one_failing_family_fails_the_read_once(fake_prometheus: Callable[..., Any]) -> None:
    prom = fake_prometheus(lambda q: (503, b'{"status":"error"}') if "GPU_TEMP" in q else (200, answer_of([])))
    source = PrometheusSource(prom.url, timeout_s=2, attempts=2, backoff_s=0.01)
    with pytest.raises(TransientToolError, match="HTTP 503"):
        source.snapshot()
    assert source.failures == 1


def test_prometheus_nan_values_are_skipped_and_counted(fake_prometheus: Callable[..., Any]) -> None:
    samples = [
        MetricSample(
            "kube_node_status_condition", {"node": "node-0", "condition": "Ready", "status": "true"}, 1.0
        ),
        MetricSample("DCGM_FI_DEV_GPU_TEMP", {"Hostname": "node-0", "gpu": "0"}, math.nan),
        MetricSample("DCGM_FI_DEV_GPU_UTIL", {"Hostname": "node-0", "gpu": "0"}, 30.0),
    ]
    prom = fake_prometheus(prometheus_of(samples))
    source = PrometheusSource(prom.url)
    snap = source.snapshot()
    assert source.skipped_samples == 1
    assert snap.gpus[0].temp_c is None and snap.gpus[0].util_pct == 30.0
    assert snap.nodes == [NodeStatus(name="node-0", ready=True)]


def test_a_prometheus_that_times_out_is_a_transient_error_after_bounded_retries(
    fake_prometheus: Callable[..., Any],
) -> None:
    prom = fake_prometheus(lambda q: (200, vector([])), delay_s=2.0)
    # one query at a time: the first one's two attempts fail the read, the others are not sent
    source = PrometheusSource(prom.url, timeout_s=0.3, attempts=2, backoff_s=0.05, concurrency=1)
    t0 = time.monotonic()
    with pytest.raises(TransientToolError, match=r"did not answer within 0.3s \(2 attempt"):
        source.snapshot()
    assert time.monotonic() - t0 < 2.0  # 2 x 0.3 s + backoff, not the server's 2 s each
    assert source.queries == 2 and source.failures == 1
    # all at once: every query in flight times out together, and the read fails once
    source = PrometheusSource(prom.url, timeout_s=0.3, attempts=2, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(TransientToolError, match=r"did not answer within 0.3s \(2 attempt"):
        source.snapshot()
    assert time.monotonic() - t0 < 2.0
    assert source.failures == 1 and source.queries <= 2 * source.concurrency


def test_5xx_is_retried_then_transient_and_4xx_is_permanent_at_once(
    fake_prometheus: Callable[..., Any],
) -> None:
    prom = fake_prometheus(lambda q: (503, b'{"status":"error"}'))
    source = PrometheusSource(prom.url, timeout_s=1, attempts=3, backoff_s=0.01, concurrency=1)
    with pytest.raises(TransientToolError, match="HTTP 503"):
        source.snapshot()
    assert prom.requests == 3
    bad = fake_prometheus(lambda q: (400, b'{"status":"error","error":"parse error"}'))
    source = PrometheusSource(bad.url, timeout_s=1, attempts=3, backoff_s=0.01, concurrency=1)
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
