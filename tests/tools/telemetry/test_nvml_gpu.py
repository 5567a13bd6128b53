"""The real NVML collector on a real NVIDIA GPU. Marked `gpu`; skipped (with the reason) where NVML cannot
initialise. Prints init time and warm sample latency; asserts behaviour only, never timings.

Run on a GPU machine: `python -m pytest tests/tools/telemetry/test_nvml_gpu.py -m gpu -s`.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from typing import Any

import pytest

from tools.telemetry.measure import measure
from tools.telemetry.nvml import NvmlCollector, XidWatcher

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def nv() -> Any:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver/GPU here: nvmlInit failed with {type(exc).__name__} ({exc})")
    pynvml.nvmlShutdown()
    return pynvml


def _report(capsys: pytest.CaptureFixture[str], label: str, value: Any) -> None:
    with capsys.disabled():  # shown even without -s: these numbers are what the test is run for
        print(f"\n[nvml-gpu] {label}: {json.dumps(value, default=str)}")


def test_real_samples_are_in_range(nv: Any, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    collector = NvmlCollector(nv, node="gpu-host", watch_xids=False)
    open_ms = (time.perf_counter() - started) * 1000
    try:
        cold_started = time.perf_counter()
        readings = collector.read()
        cold_ms = (time.perf_counter() - cold_started) * 1000
        warm_us = []
        for _ in range(200):
            t = time.perf_counter()
            readings = collector.read()
            warm_us.append((time.perf_counter() - t) * 1e6)
        warm_us.sort()
        _report(capsys, "timings", {
            "gpus": collector.gpu_count,
            "nvmlInit_ms": round(collector.init_ms, 2),
            "open_ms": round(open_ms, 2),
            "cold_sample_ms": round(cold_ms, 2),
            "warm_sample_us_p50": round(statistics.median(warm_us), 1),
            "warm_sample_us_p95": round(warm_us[int(0.95 * len(warm_us)) - 1], 1),
        })
        _report(capsys, "absent", {r.sample.gpu: r.absent for r in readings})
        _report(capsys, "gpu-0", readings[0].sample.model_dump() | {"mem_temp_c": readings[0].mem_temp_c})

        assert len(readings) == collector.gpu_count >= 1
        for i, r in enumerate(readings):
            s = r.sample
            assert re.fullmatch(r"gpu-host/gpu-\d+", s.gpu) and s.index == i and s.present
            assert r.errors == ()
            # The basics every datacenter GPU reports.
            for name in ("util_pct", "mem_used_mib", "mem_total_mib", "temp_c", "power_w", "sm_clock_mhz"):
                assert getattr(s, name) is not None, f"{name} absent on {s.gpu}"
            assert s.util_pct is not None and 0 <= s.util_pct <= 100
            assert s.mem_util_pct is None or 0 <= s.mem_util_pct <= 100
            assert s.mem_used_mib is not None and s.mem_total_mib is not None
            assert 0 <= s.mem_used_mib <= s.mem_total_mib and s.mem_total_mib > 1024
            assert s.temp_c is not None and 0 < s.temp_c < 110
            assert s.power_w is not None and 0 < s.power_w < 2000
            if s.power_limit_w is not None:
                assert 50 <= s.power_limit_w <= 2000 and s.power_w <= s.power_limit_w * 1.2
            assert s.sm_clock_mhz is not None and 0 < s.sm_clock_mhz < 5000
            assert s.mem_clock_mhz is None or 0 < s.mem_clock_mhz < 20000
            assert s.clock_event_reasons is None or 0 <= s.clock_event_reasons < 2**32
            for name in ("ecc_sbe_volatile", "ecc_dbe_volatile", "ecc_dbe_aggregate", "pcie_replay_counter",
                         "remapped_rows_correctable", "remapped_rows_uncorrectable",
                         "nvlink_crc_errors", "nvlink_replay_errors"):
                value = getattr(s, name)
                assert value is None or value >= 0, name
            assert r.mem_temp_c is None or 0 < r.mem_temp_c < 120
            assert all(p.isdigit() for p in s.processes)
    finally:
        collector.close()
    assert collector.closed


def test_real_xid_registration_waits_with_a_timeout(nv: Any, capsys: pytest.CaptureFixture[str]) -> None:
    nv.nvmlInit()
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(0)
        event_set = nv.nvmlEventSetCreate()
        try:
            nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set)
            started = time.perf_counter()
            try:
                data = nv.nvmlEventSetWait_v2(event_set, 100)
            except nv.NVMLError_Timeout:
                outcome = "timeout"
            else:  # a real XID happened during the test: also not an error
                outcome = f"xid {data.eventData}"
            _report(capsys, "xid_wait_100ms", {"outcome": outcome,
                                               "ms": round((time.perf_counter() - started) * 1000, 1)})
        finally:
            nv.nvmlEventSetFree(event_set)

        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        watcher = XidWatcher(nv, handles, "gpu-host", timeout_ms=100).start()
        assert watcher.registered and watcher.running
        time.sleep(0.35)
        watcher.stop()
        assert not watcher.running and watcher.errors == 0, watcher.last_error
    finally:
        nv.nvmlShutdown()


def test_collector_with_xid_thread_opens_and_closes(nv: Any) -> None:
    with NvmlCollector(nv, node="gpu-host", xid_timeout_ms=100) as collector:
        assert collector.xids is not None and collector.xids.running
        for _ in range(3):
            assert all(s.present for s in collector.sample())
            time.sleep(0.05)
    assert not collector.xids.running and collector.xids.errors == 0


def test_measure_script(nv: Any, capsys: pytest.CaptureFixture[str]) -> None:
    result = measure(samples=100, node="gpu-host")
    _report(capsys, "measure", result)
    assert result["available"] and result["gpus"] >= 1
    assert result["xid"]["wait_errors"] == 0
