"""`opsmedic sandbox serve`: a live scenario that the official Kubernetes client and a scraper can reach."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[2]


def test_sandbox_serve_answers_the_kubernetes_client_and_a_scraper(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsmedic", "sandbox", "serve", "xid79-fell-off-bus", "--kubeconfig", str(kubeconfig),
         "--speed", "60"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Ctrl-C" in x for x in lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        metrics_url = re.search(r"http://127\.0\.0\.1:\d+/metrics", text)
        assert metrics_url, text
        api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        assert sorted(n.metadata.name for n in api.list_node().items) == [f"node-{i}" for i in range(4)]
        # an action through the real client changes the simulated cluster
        api.patch_node("node-2", {"spec": {"unschedulable": True}})
        assert api.read_node("node-2").spec.unschedulable is True
        body = httpx.get(metrics_url.group(0), timeout=10).text
        assert "DCGM_FI_DEV_GPU_TEMP" in body and "kube_node_spec_unschedulable" in body
        # drift gauges are measured over the model's feature windows (every feature, drifted or not), once the
        # background worker has scored the first window
        deadline = time.monotonic() + 30
        while 'feature="velocity_1h"' not in body and time.monotonic() < deadline:
            time.sleep(0.2)
            body = httpx.get(metrics_url.group(0), timeout=10).text
        psi = re.findall(r'model_feature_psi\{[^}]*feature="(\w+)"[^}]*\} ([0-9.e-]+)', body)
        assert {f for f, _ in psi} == {"amount", "hour", "merchant_risk", "distance_km", "account_age_days",
                                       "velocity_1h"}, body
        assert all(float(v) < 0.05 for _, v in psi)  # no drift in this scenario
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
