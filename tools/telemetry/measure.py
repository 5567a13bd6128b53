"""Measure the NVML collector on this machine's GPUs and print one JSON object.

Layer: tools (adapters); a developer's script, run as `python -m tools.telemetry.measure [--samples N]`.
Imports only this package and the stdlib (pynvml through the collector).

It reports what the README's telemetry figures need: `nvmlInit` time, the first (cold) sample, warm
`sample()` latency (p50/p95 for the whole machine and per GPU; also with the slow PCIe replay counter read
on every sample instead of every `slow_interval_s`), warm latency of each NVML call the
collector makes (GPU 0), which `GpuSample` fields NVML left absent, and whether XID events could be
registered (a wait with no XID must end in NVML's Timeout, not an error). Exit status 1 and
`{"available": false, ...}` when NVML cannot be used here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tools.telemetry.nvml import NvmlCollector, NvmlUnavailable, XidWatcher, import_pynvml


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 1)


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50": _pct(values, 50), "p95": _pct(values, 95), "max": round(max(values), 1)}


def _time_us(fn: Callable[[], Any], reps: int) -> dict[str, float] | str:
    """Warm per-call latency of `fn`; the error's name when the call fails (absent on this GPU)."""
    try:
        fn()  # cold call, not counted
    except Exception as exc:  # noqa: BLE001 - reported, not raised: absent calls are expected
        return type(exc).__name__
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e6)
    return _summary(times)


def _per_call(nv: Any, handle: Any, reps: int) -> dict[str, Any]:
    calls: dict[str, Callable[[], Any]] = {
        "utilization": lambda: nv.nvmlDeviceGetUtilizationRates(handle),
        "memory_info": lambda: nv.nvmlDeviceGetMemoryInfo(handle),
        "temperature": lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU),
        "power_usage": lambda: nv.nvmlDeviceGetPowerUsage(handle),
        "enforced_power_limit": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle),
        "clock_sm": lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM),
        "clock_mem": lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_MEM),
        "clocks_event_reasons": lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(handle),
        "ecc_uncorrected_volatile": lambda: nv.nvmlDeviceGetTotalEccErrors(
            handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
        ),
        "remapped_rows": lambda: nv.nvmlDeviceGetRemappedRows(handle),
        "pcie_replay_counter": lambda: nv.nvmlDeviceGetPcieReplayCounter(handle),
        "field_memory_temp": lambda: nv.nvmlDeviceGetFieldValues(handle, [nv.NVML_FI_DEV_MEMORY_TEMP]),
        "nvlink_state_0": lambda: nv.nvmlDeviceGetNvLinkState(handle, 0),
        "compute_processes": lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle),
    }
    return {name: _time_us(fn, reps) for name, fn in calls.items()}


def measure(samples: int = 300, node: str = "measure", nvml: Any = None) -> dict[str, Any]:
    nv = nvml if nvml is not None else import_pynvml()
    out: dict[str, Any] = {"available": True}
    collector = NvmlCollector(nv, node=node, watch_xids=False)
    try:
        out["init_ms"] = round(collector.init_ms, 2)
        out["gpus"] = collector.gpu_count
        handle0 = nv.nvmlDeviceGetHandleByIndex(0)
        for key, call in (("driver_version", nv.nvmlSystemGetDriverVersion), ("name", None)):
            try:
                value = call() if call is not None else nv.nvmlDeviceGetName(handle0)
                out[key] = value.decode() if isinstance(value, bytes) else str(value)
            except Exception as exc:  # noqa: BLE001 - descriptive only
                out[key] = type(exc).__name__

        started = time.perf_counter()
        cold = collector.read()
        out["cold_sample_ms"] = round((time.perf_counter() - started) * 1000, 2)

        totals: list[float] = []
        per_gpu: list[list[float]] = [[] for _ in range(collector.gpu_count)]
        readings = cold
        for _ in range(samples):
            started = time.perf_counter()
            readings = collector.read()
            totals.append((time.perf_counter() - started) * 1e6)
            for r in readings:
                per_gpu[r.sample.index].append(r.read_us)
        out["slow_interval_s"] = collector.slow_interval_s
        out["warm_sample_us"] = _summary(totals)
        out["warm_sample_us_per_gpu"] = {f"gpu-{i}": _summary(v) for i, v in enumerate(per_gpu)}
        # The same with the slow PCIe replay counter read on every sample, to show what the interval saves.
        collector.slow_interval_s = 0.0
        every: list[float] = []
        for _ in range(samples):
            started = time.perf_counter()
            collector.read()
            every.append((time.perf_counter() - started) * 1e6)
        out["warm_sample_us_every_field_every_time"] = _summary(every)
        out["fields_absent"] = {f"gpu-{r.sample.index}": list(r.absent) for r in readings}
        out["errors"] = {f"gpu-{r.sample.index}": list(r.errors) for r in readings if r.errors}
        out["reading_gpu0"] = readings[0].sample.model_dump(exclude={"xids", "gpu", "node", "index"})
        out["reading_gpu0"]["mem_temp_c"] = readings[0].mem_temp_c
        out["per_call_us_gpu0"] = _per_call(nv, handle0, reps=max(50, samples))

        watcher = XidWatcher(nv, [nv.nvmlDeviceGetHandleByIndex(i) for i in range(collector.gpu_count)], node,
                             timeout_ms=100)
        watcher.start()
        time.sleep(0.35)  # a few Timeouts of the wait loop
        running = watcher.running
        started = time.perf_counter()
        watcher.stop()
        out["xid"] = {
            "registered": list(watcher.registered),
            "thread_ran": running,
            "stop_ms": round((time.perf_counter() - started) * 1000, 1),
            "wait_errors": watcher.errors,
            "last_error": watcher.last_error,
            "events": [e._asdict() for e in watcher.drain()],
        }
    finally:
        started = time.perf_counter()
        collector.close()
        out["shutdown_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.telemetry.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300, help="warm samples to time (default 300)")
    parser.add_argument("--node", default="measure", help="node name used in GPU ids")
    args = parser.parse_args(argv)
    try:
        result = measure(samples=args.samples, node=args.node)
    except NvmlUnavailable as exc:
        print(json.dumps({"available": False, "error": str(exc)}))
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
