"""The monitor: hysteresis (a spike shorter than the window opens nothing), grouping (one failing GPU is one
incident; many NotReady nodes are one partition), and flapping suppression."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.monitor import Monitor
from core.domain import ClusterSnapshot, GpuSample, Incident, NodeStatus, PodStatus, ResourceKind
from core.settings import MonitorSettings
from sandbox.cluster import Simulator
from sandbox.scenario import Scenario, load_scenario, parse_scenario

TICK = 10.0
GPU = "node-0/gpu-0"


def watch(s: Scenario, monitor: Monitor | None = None) -> tuple[Monitor, list[Incident]]:
    """Run a scenario with no agent acting; every incident the monitor opens (none are closed)."""
    sim = Simulator(s)
    m = monitor or Monitor()
    opened: list[Incident] = []
    while not sim.done:
        sim.step()
        opened += m.observe(sim.snapshot(), sim.tick)
    return m, opened


def snap(
    t: float,
    *,
    temp: float = 45.0,
    present: bool = True,
    xids: tuple[int, ...] = (),
    pods: list[PodStatus] | None = None,
    ready: bool = True,
) -> ClusterSnapshot:
    g = GpuSample(
        gpu=GPU,
        node="node-0",
        index=0,
        present=present,
        temp_c=temp if present else None,
        util_pct=50.0 if present else None,
        clock_event_reasons=0,
        xids=list(xids),
    )
    return ClusterSnapshot(
        at_s=t, gpus=[g], nodes=[NodeStatus(name="node-0", ready=ready, gpus=1)], pods=pods or [], models=[]
    )


def feed(m: Monitor, start: float, end: float, **kw: Any) -> list[Incident]:
    """Feed one snapshot per tick for start <= t < end."""
    out: list[Incident] = []
    t = start
    while t < end:
        out += m.observe(snap(t, **kw), TICK)
        t += TICK
    return out


def _raw(faults: list[dict[str, Any]], **extra: Any) -> Scenario:
    raw: dict[str, Any] = {
        "name": "t",
        "description": "d",
        "seed": 3,
        "cluster": {"nodes": 2, "gpus_per_node": 8},
        "workloads": [{"name": "llama-ft", "kind": "training", "replicas": 1, "gpus_per_replica": 8}],
        "faults": faults,
        "duration": "15m",
        "expect": {"incident": True},
    }
    raw.update(extra)
    return parse_scenario(raw)


# ------------------------------------------------------------------------------------------ hysteresis


@pytest.mark.parametrize(("metric", "value"), [("temp_c", 96), ("util", 100), ("power_w", 760)])
def test_a_spike_shorter_than_the_window_opens_nothing(metric: str, value: float) -> None:
    s = _raw(
        [
            {
                "at": "2m",
                "type": "transient_spike",
                "target": "node-0/gpu-4",
                "params": {"metric": metric, "value": value, "for": "50s"},
            }
        ]
    )
    assert watch(s)[1] == []


def test_a_sustained_condition_opens_exactly_one_incident() -> None:
    s = _raw([{"at": "2m", "type": "gpu_thermal", "target": "node-0/gpu-4", "params": {"temp_c": 94}}])
    _, opened = watch(s)
    assert len(opened) == 1
    inc = opened[0]
    assert (inc.resource, inc.resource_kind) == ("node-0/gpu-4", ResourceKind.gpu)
    assert {x.kind for x in inc.signals} == {"gpu_temp_high"}
    # above the 85 C threshold about 50 s after the fault, then held for the 60 s window
    assert 120 + 60 <= inc.opened_at_s <= 120 + 120


def test_window_is_the_hold_setting() -> None:
    m = Monitor(MonitorSettings(thermal_hold_s=30.0))
    assert feed(m, 10, 40, temp=95) == []  # hot at 10, 20, 30: held 20 s
    opened = feed(m, 40, 50, temp=95)
    assert [i.resource for i in opened] == [GPU] and opened[0].opened_at_s == 40


def test_one_missing_sample_is_tolerated_a_gap_restarts_the_window() -> None:
    m = Monitor()
    assert feed(m, 10, 50, temp=95) == []
    assert feed(m, 50, 60, temp=45) == []  # one cool sample (N of M)
    assert [i.opened_at_s for i in feed(m, 60, 80, temp=95)] == [70.0]
    m2 = Monitor()
    assert feed(m2, 10, 50, temp=95) == []
    assert feed(m2, 50, 80, temp=45) == []  # three cool samples: the window starts again
    assert feed(m2, 80, 140, temp=95) == []
    assert [i.opened_at_s for i in feed(m2, 140, 150, temp=95)] == [140.0]


def test_events_count_at_once() -> None:
    m = Monitor()
    opened = m.observe(snap(10, xids=(48,)), TICK)
    assert len(opened) == 1 and opened[0].opened_at_s == 10 and opened[0].signals[0].kind == "gpu_xid"


def test_non_finite_readings_are_skipped_not_fatal() -> None:
    m = Monitor()
    assert feed(m, 10, 200, temp=math.nan) == []
    assert m.skipped_samples == 19


@pytest.mark.parametrize("name", ["power-cap-decoy", "log-injection-decoy", "transient-spike-decoy"])
def test_decoys_open_nothing(scenario_path: Callable[[str], Path], name: str) -> None:
    assert watch(load_scenario(scenario_path(name)))[1] == []


# ------------------------------------------------------------------------------------------- grouping


def test_one_failing_gpu_with_a_crash_looping_pod_is_one_incident(
    scenario_path: Callable[[str], Path],
) -> None:
    _, opened = watch(load_scenario(scenario_path("xid79-fell-off-bus")))
    assert len(opened) == 1
    inc = opened[0]
    assert inc.resource == "node-1/gpu-3" and inc.resource_kind == ResourceKind.gpu and inc.opened_at_s == 120
    kinds = {(x.kind, x.resource) for x in inc.signals}
    assert {("gpu_xid", "node-1/gpu-3"), ("gpu_lost", "node-1/gpu-3")} <= kinds
    assert ("pod_not_ready", "llama-ft-1") in kinds  # the pod's failure is absorbed by the GPU's incident


def test_three_of_four_nodes_not_ready_is_one_partition_incident(
    scenario_path: Callable[[str], Path],
) -> None:
    _, opened = watch(load_scenario(scenario_path("partition")))
    assert len(opened) == 1
    inc = opened[0]
    assert inc.resource_kind == ResourceKind.cluster
    down = sorted({x.resource for x in inc.signals if x.kind == "node_not_ready"})
    assert down == ["node-1", "node-2", "node-3"]
    unreachable = sorted({x.resource for x in inc.signals if x.kind == "pod_unreachable"})
    assert unreachable == ["fraud-model-1", "fraud-model-2", "fraud-model-3"]


def test_one_not_ready_node_is_a_node_incident(scenario_path: Callable[[str], Path]) -> None:
    _, opened = watch(load_scenario(scenario_path("node-not-ready")))
    assert len(opened) == 1
    inc = opened[0]
    assert (inc.resource, inc.resource_kind) == ("node-2", ResourceKind.node)
    assert {x.kind for x in inc.signals} == {"node_not_ready", "pod_unreachable"}
    # NotReady after the 40 s grace period, then held for 30 s
    assert inc.opened_at_s == 120 + 40 + 30


def test_two_faults_on_two_gpus_are_two_incidents(scenario_path: Callable[[str], Path]) -> None:
    _, opened = watch(load_scenario(scenario_path("two-faults")))
    assert [(i.resource, i.opened_at_s) for i in opened] == [("node-1/gpu-5", 120.0), ("node-2/gpu-1", 300.0)]


@pytest.mark.parametrize(
    ("name", "resource", "kind", "signal"),
    [
        ("memory-leak", "chat-llm-1", ResourceKind.pod, "fb_memory_growth"),
        ("training-stall", "llama-ft-1", ResourceKind.pod, "training_stalled"),
        ("data-drift-retrain", "fraud-model", ResourceKind.model, "drift_psi"),
        ("bad-deploy-rollback", "fraud-model", ResourceKind.model, "slo_accuracy"),
        ("nvlink-errors", "node-0/gpu-3", ResourceKind.gpu, "nvlink_errors"),
        ("ecc-dbe-counters", "node-0/gpu-1", ResourceKind.gpu, "ecc_dbe"),
        ("pod-crashloop", "fraud-model-1", ResourceKind.pod, "pod_not_ready"),
    ],
)
def test_each_fault_opens_one_incident_on_its_resource(
    scenario_path: Callable[[str], Path], name: str, resource: str, kind: ResourceKind, signal: str
) -> None:
    s = load_scenario(scenario_path(name))
    _, opened = watch(s)
    assert opened, f"{name}: no incident"
    first = opened[0]
    assert (first.resource, first.resource_kind) == (resource, kind)
    assert signal in {x.kind for x in first.signals}
    assert all(i.resource == resource for i in opened)  # nothing else is blamed
    within = s.expectations[0].detect_within
    assert within is not None and first.opened_at_s - s.faults[0].at <= within


def test_leak_is_seen_before_the_first_oom(scenario_path: Callable[[str], Path]) -> None:
    s = load_scenario(scenario_path("memory-leak"))
    _, opened = watch(s)
    assert [x.kind for x in opened[0].signals][0] == "fb_memory_growth"


def test_an_open_incident_absorbs_new_signals() -> None:
    m = Monitor()
    [inc] = m.observe(snap(10, xids=(79,), present=False), TICK)
    assert {x.kind for x in inc.signals} == {"gpu_xid", "gpu_lost"}
    pod = PodStatus(
        name="p-0",
        workload="p",
        kind="training",
        node="node-0",
        gpus=[GPU],
        phase="Running",
        ready=False,
        reason="CrashLoopBackOff",
    )
    for t in range(20, 200, 10):
        assert m.observe(snap(t, present=False, pods=[pod]), TICK) == []
    assert ("pod_not_ready", "p-0") in {(x.kind, x.resource) for x in inc.signals}
    assert list(m.incidents) == [inc.id]


def test_incident_ids_carry_the_prefix() -> None:
    m = Monitor(id_prefix="inc-abc")
    [inc] = m.observe(snap(10, xids=(48,)), TICK)
    assert inc.id == "inc-abc-1"


# ------------------------------------------------------------------------------------------- flapping


def test_no_new_incident_while_the_closed_condition_persists() -> None:
    m = Monitor()
    [inc] = feed(m, 10, 20, present=False)
    m.close(inc.id)
    assert feed(m, 20, 1000, present=False) == []  # the GPU is still lost: no new incident, ever


def test_a_new_incident_after_the_condition_clears_and_returns() -> None:
    m = Monitor()
    [first] = feed(m, 10, 20, present=False)
    m.close(first.id)
    assert feed(m, 20, 100, present=False) == []
    assert feed(m, 100, 200, present=True) == []  # cleared for longer than reopen_quiet_s (60 s)
    again = feed(m, 200, 210, present=False)
    assert len(again) == 1 and again[0].id != first.id and again[0].resource == GPU


def test_a_quick_return_after_closing_is_still_the_same_flap() -> None:
    m = Monitor()
    [first] = feed(m, 10, 20, xids=(48,))
    m.close(first.id)
    assert feed(m, 20, 40) == []
    assert feed(m, 40, 50, xids=(48,)) == []  # back within 60 s of clearing: suppressed
    assert feed(m, 50, 200) == []
    assert len(feed(m, 200, 210, xids=(48,))) == 1  # quiet for long enough: a new incident


def _leaking(t: float, mem_mib: float, *, restarts: int = 0, phase: str = "Running") -> ClusterSnapshot:
    """One inference pod on GPU whose framebuffer holds `mem_mib` of 23,034 MiB (an L4)."""
    pod = PodStatus(name="svc-0", workload="svc", kind="inference", node="node-0", gpus=[GPU], phase=phase,  # type: ignore[arg-type]
                    ready=phase == "Running", reason=None if phase == "Running" else "OOMKilled", restarts=restarts)
    g = GpuSample(gpu=GPU, node="node-0", index=0, present=True, temp_c=50.0, util_pct=60.0,
                  mem_used_mib=mem_mib, mem_total_mib=23_034.0, clock_event_reasons=0)
    return ClusterSnapshot(at_s=t, gpus=[g], nodes=[NodeStatus(name="node-0", ready=True, gpus=1)], pods=[pod],
                           models=[])


def test_a_leak_that_fills_the_gpu_within_a_window_is_caught_on_three_samples() -> None:
    """8 GiB/min on a 24 GiB GPU sampled every 30 s: out of memory before a whole leak window (120 s) has
    been seen. Three strictly rising samples and minutes to OOM are enough; slow growth needs the window."""
    m = Monitor()
    assert m.observe(_leaking(0, 7_000), 30) == [] and m.observe(_leaking(30, 11_000), 30) == []
    [inc] = m.observe(_leaking(60, 15_000), 30)
    assert inc.resource == "svc-0" and inc.signals[0].kind == "fb_memory_growth"
    slow = Monitor()
    for i in range(3):  # 1 GiB/min, 20 min from OOM: not urgent, and 60 s of samples are not a window
        assert slow.observe(_leaking(30 * i, 2_000 + 512 * i), 30) == []


@pytest.mark.parametrize("tick", [30.0, 60.0])
def test_a_slow_leak_is_seen_with_long_ticks(tick: float) -> None:
    """1 GiB/min on an 80 GiB GPU (an hour from OOM) sampled every 30 or 60 s: a 120 s window holds five or
    three samples, and the leak is an incident once one window of them has risen."""
    m = Monitor()
    opened: list[Incident] = []
    t = 0.0
    while not opened and t < 600:
        g = GpuSample(gpu=GPU, node="node-0", index=0, present=True, temp_c=50.0, util_pct=60.0,
                      mem_used_mib=20_000 + 1024 * t / 60, mem_total_mib=81_559.0, clock_event_reasons=0)
        pod = PodStatus(name="svc-0", workload="svc", kind="inference", node="node-0", gpus=[GPU],
                        phase="Running", ready=True)
        opened = m.observe(ClusterSnapshot(at_s=t, gpus=[g], nodes=[NodeStatus(name="node-0", ready=True, gpus=1)],
                                           pods=[pod], models=[]), tick)
        t += tick
    assert [i.resource for i in opened] == ["svc-0"] and t - tick <= 120


def test_a_pod_incident_resolved_by_a_restart_opens_again_when_the_fault_returns() -> None:
    """The restart verified, then the leak came back (OOM kills every two minutes, never quiet for a
    minute): a new incident, once a quiet period has passed since the close. Escalated instead: nothing."""
    for resolved, expect_new in ((True, True), (False, False)):
        m = Monitor()
        opened = [i for t, mem in ((0, 7_000), (30, 11_000), (60, 15_000)) for i in m.observe(_leaking(t, mem), 30)]
        m.close(opened[0].id, resolved=resolved)
        again: list[Incident] = []
        for cycle in range(5):  # 4 GiB every 30 s from 7 GiB: killed at the fifth sample, re-created
            base = 90 + cycle * 150
            for k in range(4):
                again += m.observe(_leaking(base + 30 * k, 7_000 + 4_096 * k, restarts=cycle), 30)
            again += m.observe(_leaking(base + 120, 7_000, restarts=cycle + 1, phase="Pending"), 30)
        assert (len(again) == 1) is expect_new, (resolved, again)
        if expect_new:
            assert again[0].resource == "svc-0" and again[0].id != opened[0].id


def test_an_open_incident_is_never_duplicated() -> None:
    m = Monitor()
    [first] = feed(m, 10, 20, present=False)
    assert feed(m, 20, 100, present=False) == []
    assert feed(m, 100, 300, present=True) == []
    assert feed(m, 300, 400, present=False) == []  # still open (never closed): absorbed, not re-opened
    assert list(m.incidents) == [first.id]
