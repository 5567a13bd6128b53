"""The console's metric memory: the ring buffer, pinned incident series, aggregation per resource kind,
bounded memory at 10,000 GPUs, and `opsmedic demo --console`'s entry point printing its URL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from console_testkit import fleet_snapshot, fraud_model, gpu

from core.domain import ClusterSnapshot, NodeStatus, PodStatus
from opsmedic.console.history import MetricHistory


def _snap(t: float, temp: float, *, present: bool = True, accuracy: float = 0.95) -> ClusterSnapshot:
    gpus = [gpu(0, 0, temp=temp, present=present), gpu(0, 1, temp=temp - 10), gpu(1, 0, temp=40.0)]
    pods = [PodStatus(name="train-0", workload="llama-ft", kind="training", node="node-0",
                      gpus=["node-0/gpu-0", "node-0/gpu-1"], phase="Running", ready=True)]
    nodes = [NodeStatus(name="node-0", ready=True, gpus=2), NodeStatus(name="node-1", ready=True, gpus=1)]
    return ClusterSnapshot(at_s=t, gpus=gpus, nodes=nodes, pods=pods,
                           models=[fraud_model(accuracy=accuracy, drift_psi={"amount": t / 1000})])


def _values(series: dict, name: str) -> list:  # type: ignore[type-arg]
    return next(m["values"] for m in series["metrics"] if m["name"] == name)


def test_ring_keeps_the_latest_in_order_and_pins_outlive_it() -> None:
    h = MetricHistory(capacity=30)
    for i in range(10):
        assert h.record(_snap(float(i * 10), 50.0 + i))
    assert not h.record(_snap(50.0, 0.0))  # not newer: ignored
    h.pin("inc-1", "node-0/gpu-0", "gpu", None)
    for i in range(10, 100):
        h.record(_snap(float(i * 10), 50.0 + i, present=i < 60))
    ring = h.series("node-0/gpu-0", "gpu")
    assert len(ring["t"]) == 30 and ring["t"][0] == 700.0 and ring["t"][-1] == 990.0
    pinned = h.series("node-0/gpu-0", "gpu", key="inc-1")
    assert pinned["t"] == [float(i * 10) for i in range(100)]  # from before the pin, to now
    temps = _values(pinned, "temp_c")
    assert temps[0] == 50.0 and temps[59] == 109.0 and temps[60] is None  # gone from NVML at 600 s


def test_series_per_resource_kind() -> None:
    h = MetricHistory()
    for i in range(5):
        h.record(_snap(float(i), 60.0 + i, accuracy=0.9 - i / 100))
    node = h.series("node-0", "node")
    assert node["kind"] == "gpus" and _values(node, "temp_max_c")[-1] == 64.0
    assert _values(node, "mem_used_mib")[-1] == 80_000.0  # both GPUs' FB memory
    pod = h.series("train-0", "pod", _snap(9.0, 1.0))
    assert pod["kind"] == "gpus" and _values(pod, "temp_max_c")[-1] == 64.0
    model = h.series("fraud-model", "model")
    assert model["kind"] == "model" and _values(model, "accuracy")[-1] == 0.86
    assert _values(model, "drift_psi")[-1] == 0.004 and [m["name"] for m in model["metrics"]] == [
        "accuracy", "latency_p95_ms", "drift_psi"]
    fleet = h.series("cluster", "cluster")
    assert fleet["kind"] == "fleet" and _values(fleet, "gpus_missing")[-1] == 0


def test_new_gpus_grow_the_ring_without_losing_history() -> None:
    h = MetricHistory(capacity=50)
    h.record(fleet_snapshot(1, 2, at_s=1.0))
    h.record(fleet_snapshot(3, 2, at_s=2.0))
    s = h.series("node-0/gpu-0", "gpu")
    assert s["t"] == [1.0, 2.0] and None not in _values(s, "temp_c")
    assert h.series("node-2/gpu-1", "gpu")["t"] == [1.0, 2.0]


def test_memory_stays_bounded_at_10000_gpus() -> None:
    h = MetricHistory(capacity=360, max_cells=8_000_000)
    snap = fleet_snapshot(1250, 8)
    t0 = time.perf_counter()
    for i in range(3):
        h.record(snap.model_copy(update={"at_s": float(i)}))
    per_record_ms = (time.perf_counter() - t0) * 1000 / 3
    stats = h.stats()
    assert stats["gpus"] == 10_000 and stats["rows"] == 200
    assert stats["bytes"] <= 8_000_000 * 4
    assert per_record_ms < 500, per_record_ms


def test_a_pinned_series_keeps_the_fault_when_it_grows_long() -> None:
    h = MetricHistory(capacity=30, pin_max=100)
    h.record(_snap(0.0, 50.0))
    h.pin("inc-1", "node-0/gpu-0", "gpu", None)
    for i in range(1, 300):
        h.record(_snap(float(i), 50.0))
    t = h.series("node-0/gpu-0", "gpu", key="inc-1")["t"]
    assert len(t) <= 100 and t[0] == 0.0 and t[-1] == 299.0


def test_demo_console_prints_its_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMEDIC_")}
    env.update(OPSMEDIC_RETRIEVAL="false", PYTHONUNBUFFERED="1")
    code = "from opsmedic.daemon.demo import run_demo_console; run_demo_console(None, '127.0.0.1', 0, 50.0)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.match(r"opsmedic console: (http://127\.0\.0\.1:\d+/console)$", first.strip())
        assert m, first
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert "xid79-fell-off-bus" in lines[0] and "sign in as U0OPSMEDIC" in lines[1]
        token = lines[1].rsplit(" ", 1)[1].strip()
        with httpx.Client(base_url=m.group(1).removesuffix("/console"), timeout=10.0) as c:
            assert c.get("/console/fleet").status_code == 200
            csrf = c.cookies.get("opsmedic_csrf")
            r = c.post("/console/api/session", json={"token": token}, headers={"X-CSRF-Token": str(csrf)})
            assert r.status_code == 200 and r.json()["user"] == "U0OPSMEDIC"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "opsmedic console: stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
