"""agents.fleet_monitor: vectorised GPU detectors over 10,000 GPUs, hysteresis in ring buffers, and agreement
with the per-object `agents.monitor.Monitor` on sandbox scenarios."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from agents.fleet_monitor import FleetMonitor, GpuFrame, bench_tick, synthetic_fleet
from agents.monitor import Monitor
from opsmedic.domain import CLOCK_REASON_HW_THERMAL, GpuSample, ResourceKind
from opsmedic.settings import MonitorSettings
from sandbox.cluster import Simulator
from sandbox.scenario import parse_scenario

N = 10_000
TICK = 10.0
HOT, SPIKY, XID, LOST, ECC, NVLINK, LEAK, THROTTLED = 1234, 2345, 3456, 4567, 5678, 6789, 7890, 8901


def frame_at(base: GpuFrame, k: int, rng: np.random.Generator) -> GpuFrame:
    """Tick k of a 10k-GPU fleet with noise everywhere and a handful of real faults."""
    f = GpuFrame(**{**base.__dict__, "xid_lists": {}})
    f.temp_c = (base.temp_c + rng.normal(0, 2.0, N)).astype(np.float32)
    f.mem_used_mib = (base.mem_used_mib + rng.normal(0, 50, N)).astype(np.float32)
    f.present = np.ones(N, bool)
    f.xid = np.zeros(N, np.int32)
    f.hw_thermal = np.zeros(N, bool)
    f.ecc_dbe = np.zeros(N, np.float32)
    f.nvlink_crc = base.nvlink_crc.copy()
    if k >= 3:
        f.temp_c[HOT] = 91.0  # hot from tick 3 on: fires after thermal_hold_s (60 s = 6 ticks)
        f.hw_thermal[THROTTLED] = True
    if 3 <= k < 6:
        f.temp_c[SPIKY] = 97.0  # a 30 s spike: shorter than the hold, never an incident
    if k == 4:
        f.xid[XID] = 13
        f.xid_lists[XID] = [13, 31]
    if k >= 5:
        f.present[LOST] = False
        f.ecc_dbe[ECC] = 2.0
    f.nvlink_crc[NVLINK] = 100.0 * k  # 600 errors/min from the start
    f.mem_used_mib[LEAK] = 20_000 + 400.0 * k  # 2.3 GiB/min, steadily
    return f


@pytest.fixture(scope="module")
def run() -> dict[int, set[tuple[str, str]]]:
    rng = np.random.default_rng(11)
    base = synthetic_fleet(N)
    base.pod = [""] * N
    base.pod[LEAK] = "svc-7"
    mon = FleetMonitor(tick_s=TICK)
    out: dict[int, set[tuple[str, str]]] = {}
    for k in range(20):
        out[k] = {(s.kind, s.resource) for s in mon.tick(frame_at(base, k, rng), k * TICK)}
    return out


def gid(i: int) -> str:
    return f"node-{i // 8}/gpu-{i % 8}"


def test_finds_the_injected_faults_among_10k_gpus_and_nothing_else(
    run: dict[int, set[tuple[str, str]]],
) -> None:
    everything = set().union(*run.values())
    assert everything == {
        ("gpu_temp_high", gid(HOT)),
        ("gpu_temp_high", gid(THROTTLED)),
        ("gpu_xid", gid(XID)),
        ("gpu_lost", gid(LOST)),
        ("ecc_dbe", gid(ECC)),
        ("nvlink_errors", gid(NVLINK)),
        ("fb_memory_growth", "svc-7"),
    }


def test_events_count_at_once_and_conditions_after_their_hold(run: dict[int, set[tuple[str, str]]]) -> None:
    first: dict[tuple[str, str], int] = {}
    for k in sorted(run):
        for key in run[k]:
            first.setdefault(key, k)
    assert first[("gpu_xid", gid(XID))] == 4 and ("gpu_xid", gid(XID)) not in run[5]
    assert first[("gpu_lost", gid(LOST))] == 5 and first[("ecc_dbe", gid(ECC))] == 5
    # hot from tick 3; MonitorSettings.thermal_hold_s = 60 s -> seen at ticks 3..9 -> fires at 9, like Monitor
    assert first[("gpu_temp_high", gid(HOT))] == 9
    # NVLink needs 3 readings for a rate, then nvlink_hold_s = 60 s of it
    assert first[("nvlink_errors", gid(NVLINK))] == 2 + 6
    # the leak: leak_window_s = 120 s of readings, 75% of it spanned
    assert first[("fb_memory_growth", "svc-7")] == 9
    assert all(("gpu_temp_high", gid(SPIKY)) not in sigs for sigs in run.values())


def test_signal_fields_match_the_per_object_monitor() -> None:
    mon = FleetMonitor(settings=MonitorSettings(thermal_hold_s=0), tick_s=TICK)
    samples = [
        GpuSample(gpu="node-0/gpu-0", node="node-0", index=0, temp_c=90.0, xids=[79, 48]),
        GpuSample(
            gpu="node-0/gpu-1",
            node="node-0",
            index=1,
            temp_c=50.0,
            ecc_dbe_volatile=3,
            clock_event_reasons=CLOCK_REASON_HW_THERMAL,
        ),
    ]
    sigs = {(s.kind, s.resource, s.value): s for s in mon.tick(GpuFrame.from_samples(samples), 5.0)}
    ref = {
        (s.kind, s.resource, s.value): s
        for s in Monitor(MonitorSettings(thermal_hold_s=0)).detect(_snap(samples))
    }
    assert sigs.keys() == ref.keys()
    for key, s in sigs.items():
        r = ref[key]
        assert (s.resource_kind, s.threshold, s.detail, s.labels) == (
            r.resource_kind,
            r.threshold,
            r.detail,
            r.labels,
        ), key
        assert s.resource_kind == ResourceKind.gpu


def _snap(samples: list[GpuSample], at: float = 5.0) -> Any:
    from opsmedic.domain import ClusterSnapshot, NodeStatus

    return ClusterSnapshot(
        at_s=at, gpus=samples, nodes=[NodeStatus(name="node-0", ready=True)], pods=[], models=[]
    )


def test_gpus_that_come_and_go_keep_their_own_history() -> None:
    mon = FleetMonitor(tick_s=TICK)
    a = [
        GpuSample(gpu=f"node-{n}/gpu-0", node=f"node-{n}", index=0, temp_c=95.0 if n == 1 else 40.0)
        for n in range(3)
    ]
    fired = []
    for k in range(12):
        # node-0 disappears (NotReady) for a while: node-1's hot GPU must still be tracked in its own column
        frame = GpuFrame.from_samples(a if k % 4 else a[1:])
        fired.append({s.resource for s in mon.tick(frame, k * TICK) if s.kind == "gpu_temp_high"})
    assert fired[6] == {"node-1/gpu-0"} and all(not f for f in fired[:6])
    new = [*a, GpuSample(gpu="node-9/gpu-0", node="node-9", index=0, temp_c=99.0)]
    assert {s.resource for s in mon.tick(GpuFrame.from_samples(new), 12 * TICK)} == {"node-1/gpu-0"}


def test_bad_readings_are_counted_not_fatal() -> None:
    mon = FleetMonitor(tick_s=TICK)
    samples = [
        GpuSample(gpu="node-0/gpu-0", node="node-0", index=0, temp_c=math.nan),
        GpuSample(gpu="node-0/gpu-1", node="node-0", index=1, temp_c=math.inf),
        GpuSample(gpu="node-0/gpu-2", node="node-0", index=2),
    ]
    assert mon.tick(GpuFrame.from_samples(samples), 0.0) == []
    assert mon.skipped_samples == 2


SCENARIOS = {
    "thermal": [
        {"at": "60s", "type": "gpu_thermal", "target": "node-1/gpu-2", "params": {"temp_c": 94}},
        {
            "at": "60s",
            "type": "transient_spike",
            "target": "node-0/gpu-5",
            "params": {"metric": "temp_c", "value": 97, "for": "30s"},
        },
    ],
    "hardware": [
        {"at": "60s", "type": "gpu_xid", "target": "node-1/gpu-3", "params": {"xid": 79}},
        {"at": "90s", "type": "gpu_ecc", "target": "node-0/gpu-2", "params": {}},
        {"at": "30s", "type": "nvlink_errors", "target": "node-0/gpu-6", "params": {"rate_per_min": 40}},
    ],
}
GPU_KINDS = {"gpu_xid", "gpu_lost", "ecc_dbe", "remap_failure", "gpu_temp_high", "nvlink_errors"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_agrees_with_the_per_object_monitor_on_sandbox_scenarios(name: str) -> None:
    sc = parse_scenario(
        {
            "name": f"fleet-{name}",
            "description": "x",
            "seed": 4,
            "cluster": {"nodes": 2, "gpus_per_node": 8},
            "workloads": [{"name": "llama-ft", "kind": "training", "replicas": 2, "gpus_per_replica": 8}],
            "faults": SCENARIOS[name],
            "duration": "10m",
            "expect": {"incident": True},
        }
    )
    sim = Simulator(sc)
    mon, fleet = Monitor(), FleetMonitor(tick_s=sc.tick)
    first_mon: dict[tuple[str, str], float] = {}
    first_fleet: dict[tuple[str, str], float] = {}
    while not sim.done:
        sim.step()
        snap = sim.snapshot()
        for s in mon._sustained(mon.detect(snap), snap.at_s, sc.tick):
            if s.kind in GPU_KINDS:
                first_mon.setdefault((s.kind, s.resource), snap.at_s)
        for s in fleet.tick(GpuFrame.from_samples(snap.gpus), snap.at_s):
            first_fleet.setdefault((s.kind, s.resource), snap.at_s)
    assert first_fleet == first_mon
    assert first_mon  # the scenario did produce signals


def test_bench_10k_gpus_well_under_100_ms() -> None:
    result = bench_tick(n_gpus=N, ticks=30)
    assert result["monitor_tick_n_gpus"] == N and result["monitor_tick_signals"] > 0
    assert result["monitor_tick_ms_p95"] < 100.0, result
