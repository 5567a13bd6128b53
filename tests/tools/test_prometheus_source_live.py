"""tools.prometheus_source against a real Prometheus (Debian's `prometheus`, or PROMETHEUS_BIN; skipped
without one): the per-family read (`max by (gpu, Hostname, ..., pod)` per DCGM family) gives the snapshot
that the exporter's own text gives, and that one query of every series with all its labels gives, and a GPU
scraped by two jobs is one GPU. Everything listens on 127.0.0.1; the test takes ~5-10 s."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from core.domain import ClusterSnapshot
from core.errors import ToolError
from sandbox.cluster import Simulator
from sandbox.exporter import LatestSnapshot, serve
from sandbox.scenario import parse_scenario
from tools.prometheus_source import PrometheusSource, SnapshotBuilder, exposition_samples

PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (apt-get install prometheus)")

SCENARIO = {
    "name": "live-promql",
    "description": "a GPU falls off the bus; pods on GPUs; a model served",
    "seed": 5,
    "cluster": {"nodes": 3, "gpus_per_node": 4},
    "workloads": [
        {"name": "svc", "kind": "inference", "replicas": 3, "gpus_per_replica": 1, "model": "svc",
         "current_version": 2, "slo": {"latency_p95_ms": 80, "accuracy_min": 0.8}},
        {"name": "train", "kind": "training", "replicas": 1, "gpus_per_replica": 4},
    ],
    "faults": [{"at": "10s", "type": "gpu_xid", "target": "node-2/gpu-1", "params": {"xid": 79}}],
    "duration": "5m",
    "expect": {"incident": True},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The sandbox exporter serving one fixed snapshot, scraped every second by two jobs."""
    sim = Simulator(parse_scenario(SCENARIO))
    sim.step()
    sim.step()
    latest = LatestSnapshot()
    latest.set(sim.snapshot())
    exporter = serve(latest)
    port = _free_port()
    target = f"127.0.0.1:{exporter.port}"
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        f"scrape_configs: [{{job_name: sandbox, static_configs: [{{targets: ['{target}']}}]}},"
        f" {{job_name: again, static_configs: [{{targets: ['{target}']}}]}}]\n")
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "exporter": exporter.url, "snapshot": sim.snapshot()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        exporter.close()


def _read_when_scraped(source: PrometheusSource, gpus: int) -> ClusterSnapshot:
    """`source`'s first read once Prometheus has scraped every GPU (waiting with a source of its own, so
    that the read reports the XIDs in the counters, as a fresh builder does). The probe reads through the
    same selector: one job's scrape must not stand for the other's (the two jobs scrape independently)."""
    probe = PrometheusSource(source.url, timeout_s=10, selector=source.selector)

    def ready() -> bool:
        try:
            snap = probe.snapshot()
        except ToolError:
            return False  # not up yet
        return len(snap.gpus) == gpus and bool(snap.pods and snap.models)

    wait_until(ready, 60, 0.5, what="Prometheus to scrape the exporter")
    return source.snapshot()


def test_the_per_family_read_is_the_snapshot_of_every_series(live: dict[str, Any]) -> None:
    expected_snap: ClusterSnapshot = live["snapshot"]
    text = urllib.request.urlopen(live["exporter"], timeout=10).read()
    from_text = SnapshotBuilder().build(exposition_samples(text))
    source = PrometheusSource(live["url"], timeout_s=10, selector='job="sandbox"')
    got = _read_when_scraped(source, len(expected_snap.gpus))
    assert got.model_dump() == from_text.model_dump()
    lost = got.gpu("node-2/gpu-1")
    assert lost is not None and not lost.present
    assert any(g.processes for g in got.gpus) and any(p.gpus for p in got.pods)
    # one query of every series, all labels kept, read by the same builder: the same snapshot (XIDs reported
    # by a fresh builder, as the first read above reported them)
    whole = SnapshotBuilder().build(source._other_samples(source.query(source.promql())))
    assert whole.model_dump() == from_text.model_dump()
    assert source.builder.last_skipped == 0


def test_a_gpu_scraped_by_two_jobs_is_one_gpu(live: dict[str, Any]) -> None:
    expected_snap: ClusterSnapshot = live["snapshot"]
    text = urllib.request.urlopen(live["exporter"], timeout=10).read()
    from_text = SnapshotBuilder().build(exposition_samples(text))
    got = _read_when_scraped(PrometheusSource(live["url"], timeout_s=10), len(expected_snap.gpus))
    assert [g.model_dump() for g in got.gpus] == [g.model_dump() for g in from_text.gpus]
