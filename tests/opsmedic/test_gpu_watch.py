"""`opsmedic gpu`: NVML (a scripted fake here; the real thing on a lent GPU) or the recorded H100 trace,
sampled and fed to the monitor; incidents printed; readings served as DCGM-style metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsmedic.cli import main
from opsmedic.gpu_watch import watch
from tools.telemetry import NvmlCollector, NvmlUnavailable

REPO = Path(__file__).resolve().parents[2]


def _has_gpu() -> bool:
    try:
        NvmlCollector(node="probe", watch_xids=False).close()
    except NvmlUnavailable:
        return False
    return True


def test_the_recorded_h100_under_load_is_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    """The trace's matmul phase sits at the 700 W cap with clock reason SW power cap: no incident."""
    assert main(["gpu", "--source", "replay", "--count", "60", "--interval", "0", "--node", "gpu-host"]) == 0
    out = capsys.readouterr().out
    assert "watching 8 GPU(s) on gpu-host via replay" in out
    assert "60 sample(s), 0 incident(s), 0 skipped" in out


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="no NVIDIA driver/GPU here")
def test_the_real_gpus_are_watched(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu", "--source", "nvml", "--count", "3", "--interval", "0.5", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["source"] == "nvml" and lines[0]["gpus"] >= 1
    assert lines[-1] == {"event": "done", "samples": 3, "incidents": 0, "skipped": 0}


@pytest.mark.skipif(_has_gpu(), reason="this machine has a GPU: NVML works here")
def test_nvml_only_says_why_it_cannot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu", "--source", "nvml", "--count", "1"]) == 1
    assert "NVML not available" in capsys.readouterr().err


def test_a_gpu_that_falls_off_the_bus_is_an_incident() -> None:
    from fakes.fake_nvml import FakeNvml

    fake = FakeNvml.from_snapshot(gpus=2)
    events: list[dict[str, Any]] = []
    clock = iter(float(t) for t in range(0, 1000, 10))

    with NvmlCollector(fake, node="gpu-host", watch_xids=False) as source:
        samples = 0

        def on_snapshot(snap: Any) -> None:
            nonlocal samples
            samples += 1
            if samples == 3:
                fake.lose_gpu(1)  # XID 79 from the next read on: every call on the GPU fails

        done = watch(source, interval_s=1e-6, count=8, emit=events.append, on_snapshot=on_snapshot,
                     clock=lambda: next(clock))
    incidents = [e for e in events if e["event"] == "incident"]
    assert done["incidents"] == 1 and len(incidents) == 1
    assert incidents[0]["resource"] == "gpu-host/gpu-1"
    assert {s["kind"] for s in incidents[0]["signals"]} >= {"gpu_lost"}


def test_readings_are_served_as_dcgm_metrics() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMEDIC_")}
    proc = subprocess.Popen([sys.executable, "-m", "opsmedic", "gpu", "--source", "replay", "--json", "--count", "100",
                             "--interval", "0.1", "--metrics-port", "0", "--node", "gpu-host"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        header = json.loads(proc.stdout.readline())
        assert header["source"] == "replay" and header["gpus"] == 8
        body = ""
        for _ in range(50):
            body = httpx.get(header["metrics"], timeout=5).text
            if "DCGM_FI_DEV_GPU_TEMP" in body:
                break
        assert 'DCGM_FI_DEV_GPU_TEMP{' in body and 'Hostname="gpu-host"' in body
        assert "DCGM_FI_DEV_POWER_USAGE" in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)
