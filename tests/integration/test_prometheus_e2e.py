"""End to end through real servers: sandbox fault -> /metrics -> Prometheus rule -> Alertmanager -> webhook ->
`AlertIngestor` signal, and back when the fault clears. Also reads the same cluster back with PromQL.

Needs Debian's `prometheus` and `prometheus-alertmanager` (or PROMETHEUS_BIN / ALERTMANAGER_BIN); skipped with
the reason otherwise. Everything listens on 127.0.0.1; intervals are one second, so the test takes ~15-25 s.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from core.domain import ResourceKind
from sandbox.cluster import Simulator
from sandbox.exporter import LatestSnapshot, serve
from sandbox.scenario import parse_scenario
from tools.alertmanager import AlertEvent, AlertIngestor, webhook_app
from tools.prometheus_source import PrometheusSource

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "start-prometheus.sh"
PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
ALERTMANAGER = (
    os.environ.get("ALERTMANAGER_BIN")
    or shutil.which("prometheus-alertmanager")
    or shutil.which("alertmanager")
)

if not (PROMETHEUS and ALERTMANAGER):
    pytest.skip(
        "Prometheus/Alertmanager binaries not found: apt-get install prometheus prometheus-alertmanager "
        "(or set PROMETHEUS_BIN / ALERTMANAGER_BIN)",
        allow_module_level=True,
    )

TICK_WALL_S = 0.25  # one 10 s simulator tick every 0.25 s of wall time: 40x
XID_HOLD_SIM_S = 120.0  # the exporter clears the XID gauge after 2 simulated minutes (~3 s wall)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(cond, timeout, every=0.2, what=what)


SCENARIO = {
    "name": "e2e-xid79",
    "description": "a GPU falls off the bus while Prometheus watches",
    "seed": 3,
    "cluster": {"nodes": 2, "gpus_per_node": 8, "gpu_model": "H100-80GB"},
    "workloads": [{"name": "llama-ft", "kind": "training", "replicas": 2, "gpus_per_replica": 8}],
    "faults": [{"at": "60s", "type": "gpu_xid", "target": "node-1/gpu-3", "params": {"xid": 79}}],
    "duration": "30m",
    "expect": {"incident": True, "resource": "node-1/gpu-3"},
}


class Receiver:
    """The AlertIngestor behind FastAPI, served by uvicorn on 127.0.0.1 in a thread; keeps every event."""

    def __init__(self) -> None:
        import uvicorn

        self.ingestor = AlertIngestor()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/alerts/alertmanager"
        self.events: list[AlertEvent] = []
        config = uvicorn.Config(
            webhook_app(self.ingestor), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the webhook receiver to start")

    def drain(self) -> list[AlertEvent]:
        self.events.extend(self.ingestor.poll())
        return self.events

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    sim = Simulator(parse_scenario(SCENARIO))
    latest = LatestSnapshot()
    latest.set(sim.snapshot())
    exporter = serve(latest, xid_hold_s=XID_HOLD_SIM_S)
    receiver = Receiver()
    prom_port, am_port = free_port(), free_port()
    proc = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--target",
            f"127.0.0.1:{exporter.port}",
            "--webhook",
            receiver.url,
            "--prometheus-port",
            str(prom_port),
            "--alertmanager-port",
            str(am_port),
            "--dir",
            str(tmp_path / "prom"),
            "--wait",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PROMETHEUS_BIN": PROMETHEUS or "", "ALERTMANAGER_BIN": ALERTMANAGER or ""},
    )
    stop = threading.Event()
    try:
        assert proc.returncode == 0, f"start-prometheus.sh failed:\n{proc.stdout}\n{proc.stderr}"
        env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)

        def run_sim() -> None:
            while not stop.is_set() and not sim.done:
                sim.step()
                latest.set(sim.snapshot())
                stop.wait(TICK_WALL_S)

        yield {
            "sim": sim,
            "latest": latest,
            "receiver": receiver,
            "prometheus": env["PROMETHEUS_URL"],
            "start_sim": lambda: threading.Thread(target=run_sim, daemon=True).start(),
        }
    finally:
        stop.set()
        subprocess.run(["bash", str(SCRIPT), "stop", str(tmp_path / "prom")], check=False, timeout=30)
        receiver.close()
        exporter.close()


def test_xid79_reaches_the_ingestor_as_a_gpu_signal_and_resolves(stack: dict[str, Any]) -> None:
    receiver: Receiver = stack["receiver"]
    prom = PrometheusSource(stack["prometheus"], timeout_s=2, attempts=2)
    # Prometheus is up and has scraped the healthy cluster before the fault
    healthy = wait_for(lambda: (s := prom.snapshot()).gpus and s, 20, "Prometheus to scrape the exporter")
    assert len(healthy.gpus) == 16 and all(g.present for g in healthy.gpus)
    assert receiver.drain() == []

    stack["start_sim"]()  # the XID 79 fault fires at 60 s of simulated time (~1.5 s from now)

    def xid_signal() -> AlertEvent | None:
        return next((e for e in receiver.drain() if e.kind == "opened" and e.signal.kind == "gpu_xid"), None)

    opened = wait_for(xid_signal, 30, "the GpuXid alert to reach the webhook")
    sig = opened.signal
    assert sig.resource == "node-1/gpu-3"
    assert sig.resource_kind == ResourceKind.gpu
    assert sig.value == 79.0 and sig.labels["alertname"] == "GpuXid" and sig.source == "alertmanager"
    # the same fault, seen by PromQL: the GPU is lost (DCGM reads 15 of node-1's 8 + 8) and carried XID 79
    snap = prom.snapshot()
    lost = snap.gpu("node-1/gpu-3")
    assert lost is not None and not lost.present
    assert sum(g.present for g in snap.gpus) == 15
    # one resource however many notifications Alertmanager sent
    assert [k for k in receiver.ingestor.groups() if k.startswith("node-1/gpu-3")] == ["node-1/gpu-3"]

    # the exporter clears the XID gauge after its hold: the alert resolves and the signal closes
    resolved = wait_for(
        lambda: next(
            (e for e in receiver.drain() if e.kind == "resolved" and e.signal.kind == "gpu_xid"), None
        ),
        30,
        "the GpuXid alert to resolve",
    )
    assert resolved.signal.resource == "node-1/gpu-3"
    assert all(s.kind != "gpu_xid" for s in receiver.ingestor.active_signals())
    stats = receiver.ingestor.stats()
    assert stats["rejected"] == 0 and stats["resolved"] >= 1
